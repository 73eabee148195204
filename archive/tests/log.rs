//! The transparency log: roots against an independent RFC 6962 implementation, inclusion and
//! consistency proofs (and their rejection when mangled), tiles, checkpoints and the audit.

mod common;

use common::*;
use lockstep_archive::proof::{
    leaf_hash, verify_checkpoint, verify_consistency, verify_inclusion, ProofError,
};
use lockstep_archive::ArchiveError;

const SIZES: &[u64] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 255, 256, 257,
];

/// Every way of spoiling a proof: each single bit flipped, truncated at either end, extended
/// at either end.
fn mangled(proof: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let mut out = Vec::new();
    for i in 0..proof.len() {
        for bit in 0..256 {
            let mut p = proof.to_vec();
            p[i][bit / 8] ^= 1 << (bit % 8);
            out.push(p);
        }
    }
    if !proof.is_empty() {
        out.push(proof[1..].to_vec());
        out.push(proof[..proof.len() - 1].to_vec());
    }
    let mut longer = proof.to_vec();
    longer.push([0u8; 32]);
    out.push(longer);
    let mut longer = proof.to_vec();
    longer.insert(0, proof.first().copied().unwrap_or([7u8; 32]));
    out.push(longer);
    out
}

fn flip(mut h: [u8; 32]) -> [u8; 32] {
    h[31] ^= 1;
    h
}

#[test]
fn roots_match_an_independent_rfc6962_computation_at_every_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 257);
    let hashes: Vec<[u8; 32]> = leaves(&a).iter().map(|d| rfc_leaf_hash(d)).collect();
    for size in 0..=257u64 {
        assert_eq!(
            a.root_hash(size).expect("root"),
            mth(&hashes[..size as usize]),
            "root at size {size}"
        );
    }
    assert!(matches!(a.root_hash(258), Err(ArchiveError::BadRequest(_))));
    assert_eq!(leaf_hash(b"x"), rfc_leaf_hash(b"x"));
}

#[test]
fn every_inclusion_proof_verifies_and_every_spoiled_one_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 257);
    let hashes: Vec<[u8; 32]> = leaves(&a).iter().map(|d| rfc_leaf_hash(d)).collect();
    let roots: Vec<[u8; 32]> = (0..=hashes.len()).map(|n| mth(&hashes[..n])).collect();
    for &size in SIZES {
        let root = roots[size as usize];
        for index in 0..size {
            let leaf = hashes[index as usize];
            let proof = a.inclusion_proof(index, size).expect("proof");
            assert_eq!(
                verify_inclusion(leaf, index, size, &proof, root),
                Ok(()),
                "leaf {index} in size {size}"
            );
            // Mangling every bit of every proof for every leaf of the big trees is slow in a
            // debug build; do it exhaustively for small trees and on a spread of leaves above.
            let exhaustive = size <= 33 || index % 37 == 0 || index + 1 == size;
            if exhaustive {
                for bad in mangled(&proof) {
                    assert!(
                        verify_inclusion(leaf, index, size, &bad, root).is_err(),
                        "mangled proof accepted: leaf {index} size {size}"
                    );
                }
            }
            assert!(verify_inclusion(flip(leaf), index, size, &proof, root).is_err());
            assert!(verify_inclusion(leaf, index, size, &proof, flip(root)).is_err());
            // The proof must not prove the leaf at another position or in another tree, even
            // against that tree's honest root. (A proof that is literally the honest proof for
            // the other position proves nothing false, so those are skipped: RFC 6962 proofs do
            // not commit to the size by themselves — the signed checkpoint does.)
            for (i, s) in [
                (index + 1, size),
                (index.wrapping_sub(1), size),
                (index, size + 1),
                (index, size.saturating_sub(1)),
                (index, size * 2),
            ] {
                if (i, s) == (index, size) || s > 257 || i >= s {
                    continue;
                }
                if a.inclusion_proof(i, s).ok().as_deref() == Some(&proof[..])
                    && hashes[i as usize] == leaf
                {
                    continue;
                }
                assert!(
                    verify_inclusion(leaf, i, s, &proof, roots[s as usize]).is_err(),
                    "proof for {index}/{size} accepted as {i}/{s}"
                );
            }
            // An index outside the claimed tree is refused outright.
            assert!(matches!(
                verify_inclusion(leaf, size, size, &proof, root),
                Err(ProofError::BadInput(_))
            ));
        }
        assert!(matches!(
            a.inclusion_proof(size, size),
            Err(ArchiveError::BadRequest(_))
        ));
    }
    assert!(matches!(
        verify_inclusion([0; 32], 0, 0, &[], [0; 32]),
        Err(ProofError::BadInput(_))
    ));
}

#[test]
fn every_consistency_proof_verifies_and_every_spoiled_one_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 257);
    let hashes: Vec<[u8; 32]> = leaves(&a).iter().map(|d| rfc_leaf_hash(d)).collect();
    let roots: Vec<[u8; 32]> = (0..=hashes.len()).map(|n| mth(&hashes[..n])).collect();
    let root = |n: u64| roots[n as usize];
    for &new in SIZES {
        for &old in SIZES.iter().filter(|&&o| o <= new) {
            let proof = a.consistency_proof(old, new).expect("proof");
            assert_eq!(
                verify_consistency(old, root(old), new, root(new), &proof),
                Ok(()),
                "{old} -> {new}"
            );
            if old == 0 {
                assert!(proof.is_empty());
                assert!(verify_consistency(0, flip(root(0)), new, root(new), &proof).is_err());
                continue;
            }
            for bad in mangled(&proof) {
                assert!(
                    verify_consistency(old, root(old), new, root(new), &bad).is_err(),
                    "mangled proof accepted: {old} -> {new}"
                );
            }
            assert!(verify_consistency(old, flip(root(old)), new, root(new), &proof).is_err());
            assert!(verify_consistency(old, root(old), new, flip(root(new)), &proof).is_err());
            if old != new {
                assert!(
                    verify_consistency(new, root(new), old, root(old), &proof).is_err(),
                    "swapped sizes accepted: {old} -> {new}"
                );
            }
            for (o, n) in [
                (old + 1, new),
                (old - 1, new),
                (old, new + 1),
                (old, new - 1),
            ] {
                if (o, n) != (old, new) && o <= n && o >= 1 && n <= 257 {
                    let (ro, rn) = (root(o), root(n));
                    // Even with the honest roots of the other sizes, this proof must not fit.
                    if a.consistency_proof(o, n).ok().as_deref() != Some(&proof[..]) {
                        assert!(
                            verify_consistency(o, ro, n, rn, &proof).is_err(),
                            "proof for {old}->{new} accepted as {o}->{n}"
                        );
                    }
                }
            }
        }
    }
    assert!(matches!(
        a.consistency_proof(5, 4),
        Err(ArchiveError::BadRequest(_))
    ));
    assert!(matches!(
        a.consistency_proof(1, 258),
        Err(ArchiveError::BadRequest(_))
    ));
}

#[test]
fn hash_tiles_and_entry_bundles_match_an_independent_computation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 300);
    let data = leaves(&a);
    let hashes: Vec<[u8; 32]> = data.iter().map(|d| rfc_leaf_hash(d)).collect();

    let full = a
        .tile("tile/0/000")
        .expect("tile")
        .expect("full tile exists");
    assert_eq!(full, hashes[..256].concat());
    let partial = a
        .tile("tile/0/001.p/44")
        .expect("tile")
        .expect("partial tile exists");
    assert_eq!(partial, hashes[256..300].concat());
    let shorter = a.tile("tile/0/001.p/10").expect("tile").expect("prefix");
    assert_eq!(shorter, hashes[256..266].concat());
    let level1 = a.tile("tile/1/000.p/1").expect("tile").expect("level 1");
    assert_eq!(level1, mth(&hashes[..256]).to_vec());

    assert_eq!(a.tile("tile/0/001").expect("tile"), None, "not full yet");
    assert_eq!(a.tile("tile/0/001.p/45").expect("tile"), None);
    assert_eq!(a.tile("tile/1/000").expect("tile"), None);
    assert_eq!(a.tile("tile/2/000.p/1").expect("tile"), None);
    assert_eq!(a.tile("tile/0/x001/000").expect("tile"), None);

    let parse = |bundle: &[u8]| {
        let mut out = Vec::new();
        let mut rest = bundle;
        while !rest.is_empty() {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            out.push(rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
        }
        out
    };
    let bundle = a.tile("tile/entries/000").expect("tile").expect("bundle");
    assert_eq!(parse(&bundle), data[..256].to_vec());
    let bundle = a
        .tile("tile/entries/001.p/44")
        .expect("tile")
        .expect("bundle");
    assert_eq!(parse(&bundle), data[256..].to_vec());
    assert_eq!(a.tile("tile/entries/001").expect("tile"), None);

    for bad in [
        "tile/0/1",
        "tile/8/0/000",
        "tile/0/000.p/0",
        "../etc/passwd",
        "",
    ] {
        assert!(
            matches!(a.tile(bad), Err(ArchiveError::BadRequest(_))),
            "{bad:?} must be a bad request"
        );
    }
}

#[test]
fn checkpoints_verify_reject_tampering_and_stay_consistent_as_the_log_grows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 5);
    let vkey = a.verifier_key();
    assert!(vkey.starts_with(&format!("{ORIGIN}+")));

    let note = a.checkpoint().expect("checkpoint");
    let cp = verify_checkpoint(&note, &vkey).expect("verifies");
    assert_eq!(cp.origin, ORIGIN);
    assert_eq!(cp.size, 5);
    assert_eq!(cp.root, a.root_hash(5).expect("root"));
    let body = note.split("\n\n").next().expect("note has a body");
    assert_eq!(
        body.lines().collect::<Vec<_>>(),
        vec![ORIGIN.to_string(), "5".to_string(), base64_std(&cp.root)]
    );
    assert_eq!(
        a.checkpoint().expect("again"),
        note,
        "no new leaves, same note"
    );
    assert_eq!(a.latest_checkpoint().expect("query"), Some(note.clone()));

    // Every single-character change to the note is rejected.
    let bytes = note.as_bytes();
    let mut rejected = 0;
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        if let Ok(s) = String::from_utf8(b) {
            if s != note {
                assert!(
                    verify_checkpoint(&s, &vkey).is_err(),
                    "modified note accepted (byte {i}): {s:?}"
                );
                rejected += 1;
            }
        }
    }
    assert!(rejected > 50);
    let forged = note.replacen("\n5\n", "\n6\n", 1);
    assert!(matches!(
        verify_checkpoint(&forged, &vkey),
        Err(ProofError::BadSignature(_))
    ));
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = open(other_dir.path());
    assert_ne!(other.verifier_key(), vkey, "each archive makes its own key");
    assert!(verify_checkpoint(&note, &other.verifier_key()).is_err());
    assert!(verify_checkpoint(&note, "not a key").is_err());

    // Grow the log; the new checkpoint is consistent with the old one.
    for i in 5..40 {
        a.append_record(record(i)).expect("append");
    }
    let note2 = a.checkpoint().expect("checkpoint");
    let cp2 = verify_checkpoint(&note2, &vkey).expect("verifies");
    assert_eq!(cp2.size, 40);
    let proof = a.consistency_proof(cp.size, cp2.size).expect("proof");
    verify_consistency(cp.size, cp.root, cp2.size, cp2.root, &proof).expect("consistent");
    assert!(verify_consistency(cp.size, flip(cp.root), cp2.size, cp2.root, &proof).is_err());
    let inclusion = a.inclusion_proof(3, cp2.size).expect("proof");
    let leaf = rfc_leaf_hash(&leaves(&a)[3]);
    verify_inclusion(leaf, 3, cp2.size, &inclusion, cp2.root).expect("included");

    let empty_dir = tempfile::tempdir().expect("temp dir");
    let empty = open(empty_dir.path());
    let cp0 = verify_checkpoint(
        &empty.checkpoint().expect("checkpoint"),
        &empty.verifier_key(),
    )
    .expect("an empty log's checkpoint verifies");
    assert_eq!((cp0.size, cp0.root), (0, sha256(&[])));
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::prelude::*;
    BASE64_STANDARD.encode(bytes)
}

#[test]
fn a_clean_archive_verifies_with_no_problems() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 300);
    a.checkpoint().expect("checkpoint");
    a.put_blob(None, &b"artifact"[..], 1 << 20).expect("put");
    let report = a.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.leaves_checked, 300);
    assert_eq!(report.blobs_checked, 1);
}

#[test]
fn a_rewritten_log_leaf_is_found_by_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 20);
    a.checkpoint().expect("checkpoint");

    // An attacker with database access drops the guard and rewrites leaf 7.
    let db = raw_db(dir.path());
    db.execute_batch("DROP TRIGGER log_leaves_no_update")
        .expect("drop trigger");
    db.execute(
        "UPDATE log_leaves SET data = CAST('forged' AS BLOB) WHERE leaf_index = 7",
        [],
    )
    .expect("tamper");
    drop(db);

    let report = a.verify().expect("verify runs");
    let problems = report.problems.join("\n");
    assert!(
        problems.contains("log_leaves_no_update is missing"),
        "{problems}"
    );
    assert!(
        problems.contains("record 8 does not match log leaf 7"),
        "{problems}"
    );
    assert!(problems.contains("stored log hash"), "{problems}");
    assert!(problems.contains("the log was rewritten"), "{problems}");
    assert_eq!(
        report.leaves_checked, 20,
        "the audit carried on past the problem"
    );
}

#[test]
fn a_rewritten_record_is_found_by_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 10);
    let db = raw_db(dir.path());
    db.execute_batch("DROP TRIGGER records_no_update")
        .expect("drop trigger");
    db.execute(
        "UPDATE records SET body = CAST('a forged statement' AS BLOB) WHERE id = 4",
        [],
    )
    .expect("tamper body");
    db.execute("UPDATE records SET signer = 'MALLORY' WHERE id = 6", [])
        .expect("tamper signer");
    drop(db);

    let problems = a.verify().expect("verify runs").problems.join("\n");
    assert!(
        problems.contains("record 4: body does not hash"),
        "{problems}"
    );
    assert!(
        problems.contains("record 6 does not match log leaf 5"),
        "{problems}"
    );
}

#[test]
fn stored_hashes_rewritten_to_hide_a_change_still_fail_the_checkpoint_and_raise_an_alarm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 8);
    a.checkpoint().expect("checkpoint");

    // Replace the stored root of the complete 8-leaf subtree (stored index 14 = level 3, n 0):
    // the tree at size 8 now hashes differently from what was signed.
    let db = raw_db(dir.path());
    db.execute_batch("DROP TRIGGER log_hashes_no_update")
        .expect("drop trigger");
    db.execute(
        "UPDATE log_hashes SET hash = zeroblob(32) WHERE idx = 14",
        [],
    )
    .expect("tamper");
    drop(db);
    // An append commits only under a signed checkpoint, so it is refused too (fail closed):
    // nothing is stored, and the alarm survives the rollback.
    let err = a
        .append_record(record(8))
        .expect_err("an append cannot be checkpointed, so it is refused");
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    assert_eq!(a.log_size().expect("size"), 8, "nothing was appended");
    let err = a.checkpoint().expect_err("must refuse to sign");
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    assert!(a
        .alarms()
        .expect("alarms")
        .iter()
        .any(|al| al.kind == "log-inconsistent"));
    let problems = a.verify().expect("verify").problems.join("\n");
    assert!(problems.contains("stored log hash 14"), "{problems}");
}

#[test]
fn dropped_leaves_are_found_by_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 10);
    a.checkpoint().expect("checkpoint");
    let db = raw_db(dir.path());
    db.execute_batch("DROP TRIGGER log_leaves_no_delete")
        .expect("drop trigger");
    db.execute("DELETE FROM log_leaves WHERE leaf_index = 9", [])
        .expect("drop last leaf");
    drop(db);
    let problems = a.verify().expect("verify").problems.join("\n");
    assert!(
        problems.contains("record 10 is not in the transparency log"),
        "{problems}"
    );
    assert!(
        problems.contains("checkpoint 1 is for size 10 but the log has only 9 leaves"),
        "{problems}"
    );
}

// ---- leaf hashes are recomputed from the leaves, not stored ----

/// Stored index of leaf `n`'s hash (level 0).
fn leaf_idx(n: u64) -> u64 {
    tlog_tiles::stored_hash_index(0, n)
}

/// (level-0 rows, rows of levels >= 1) in `log_hashes`.
fn hash_rows(dir: &std::path::Path) -> (u64, u64) {
    let db = raw_db(dir);
    let mut stmt = db.prepare("SELECT idx FROM log_hashes").expect("prepare");
    let idxs: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    let level0 = idxs
        .iter()
        .filter(|&&i| tlog_tiles::split_stored_hash_index(i as u64).0 == 0)
        .count() as u64;
    (level0, idxs.len() as u64 - level0)
}

/// Makes the archive look as if its first `k` leaves had been appended by the earlier layout,
/// which also stored every leaf hash as a `log_hashes` row. Plain inserts of new keys are what
/// that code did; the write-once triggers allow them.
fn add_old_layout_leaf_hashes(dir: &std::path::Path, leaves: &[Vec<u8>]) {
    let db = raw_db(dir);
    for (n, data) in leaves.iter().enumerate() {
        db.execute(
            "INSERT INTO log_hashes (idx, hash) VALUES (?1, ?2)",
            rusqlite::params![leaf_idx(n as u64) as i64, &rfc_leaf_hash(data)[..]],
        )
        .expect("insert an old-layout leaf hash");
    }
}

/// Checks every root, a spread of inclusion and consistency proofs (with `tlog_tiles`' own
/// checkers and with this crate's) and the hash tiles against an independent computation.
fn check_log_against_leaves(a: &lockstep_archive::Archive) {
    use tlog_tiles::Hash;
    let data = leaves(a);
    let size = data.len() as u64;
    let hashes: Vec<[u8; 32]> = data.iter().map(|d| rfc_leaf_hash(d)).collect();
    let roots: Vec<[u8; 32]> = (0..=hashes.len()).map(|n| mth(&hashes[..n])).collect();
    let to_hashes = |p: &[[u8; 32]]| p.iter().map(|h| Hash(*h)).collect::<Vec<_>>();
    for t in 0..=size {
        assert_eq!(a.root_hash(t).expect("root"), roots[t as usize], "root {t}");
    }
    for t in (1..=size).filter(|t| *t <= 40 || t % 13 == 0 || *t == size) {
        for n in (0..t).filter(|n| *n < 20 || n % 7 == 0 || *n + 1 == t) {
            let proof = a.inclusion_proof(n, t).expect("inclusion proof");
            tlog_tiles::check_record(
                &to_hashes(&proof),
                t,
                Hash(roots[t as usize]),
                n,
                tlog_tiles::record_hash(&data[n as usize]),
            )
            .unwrap_or_else(|e| panic!("leaf {n} in {t}: {e}"));
            verify_inclusion(hashes[n as usize], n, t, &proof, roots[t as usize])
                .expect("inclusion");
        }
        for old in (1..=t).filter(|o| *o < 20 || o % 11 == 0 || *o == t) {
            let proof = a.consistency_proof(old, t).expect("consistency proof");
            tlog_tiles::check_tree(
                &to_hashes(&proof),
                t,
                Hash(roots[t as usize]),
                old,
                Hash(roots[old as usize]),
            )
            .unwrap_or_else(|e| panic!("{old} -> {t}: {e}"));
        }
    }
    for k in 0..size / 256 {
        let k = k as usize;
        let tile = a
            .tile(&format!("tile/0/{k:03}"))
            .expect("tile")
            .expect("full tile");
        assert_eq!(tile, hashes[k * 256..(k + 1) * 256].concat());
    }
    if size % 256 != 0 {
        let k = (size / 256) as usize;
        let tile = a
            .tile(&format!("tile/0/{k:03}.p/{}", size % 256))
            .expect("tile")
            .expect("partial tile");
        assert_eq!(tile, hashes[k * 256..].concat());
    }
    if size >= 256 {
        let level1 = a
            .tile(&format!("tile/1/000.p/{}", size / 256))
            .expect("tile")
            .expect("level-1 tile");
        let want: Vec<u8> = (0..(size / 256) as usize)
            .flat_map(|k| mth(&hashes[k * 256..(k + 1) * 256]))
            .collect();
        assert_eq!(level1, want);
    }
}

#[test]
fn a_new_archive_stores_no_leaf_hashes_and_its_proofs_tiles_and_roots_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 300);
    a.checkpoint().expect("checkpoint");
    let (level0, higher) = hash_rows(dir.path());
    assert_eq!(level0, 0, "no leaf hash is stored");
    // Every stored hash of level >= 1 is there: 2n - popcount(n) in all, minus the n leaves.
    assert_eq!(higher, tlog_tiles::stored_hash_count(300) - 300);
    check_log_against_leaves(&a);
    // Appends one at a time (each reads the previous leaf back to complete its subtrees).
    for i in 300..310 {
        a.append_record(record(i)).expect("append");
    }
    assert_eq!(hash_rows(dir.path()).0, 0);
    check_log_against_leaves(&a);
    let report = a.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.leaves_checked, 310);
}

/// Every root up to `n`, with an inclusion and a consistency proof at each size.
type RootsAndProofs = Vec<([u8; 32], Option<Vec<[u8; 32]>>, Option<Vec<[u8; 32]>>)>;

fn roots_and_proofs(a: &lockstep_archive::Archive, n: u64) -> RootsAndProofs {
    (0..=n)
        .map(|t| {
            (
                a.root_hash(t).expect("root"),
                (t > 0).then(|| a.inclusion_proof(t / 3, t).expect("inclusion")),
                (t > 0).then(|| a.consistency_proof(t / 2 + 1, t).expect("consistency")),
            )
        })
        .collect()
}

#[test]
fn an_old_layout_archive_with_stored_leaf_hashes_reads_verifies_and_grows_the_same() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 260);
    a.checkpoint().expect("checkpoint");
    let data = leaves(&a);
    let before = roots_and_proofs(&a, 260);
    let tiles = |a: &lockstep_archive::Archive| {
        ["tile/0/000", "tile/0/001.p/4", "tile/1/000.p/1"]
            .map(|p| a.tile(p).expect("tile").expect("exists"))
    };
    let tiles_before = tiles(&a);

    add_old_layout_leaf_hashes(dir.path(), &data);
    assert_eq!(hash_rows(dir.path()).0, 260);
    let after = roots_and_proofs(&a, 260);
    assert!(
        before == after,
        "old-layout rows change nothing that is read"
    );
    assert_eq!(tiles(&a), tiles_before);
    let report = a.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Reopened by this version, it grows without leaf hashes: old rows for a prefix only.
    drop(a);
    let a = open(dir.path());
    for chunk in (260..330).map(record).collect::<Vec<_>>().chunks(25) {
        a.append_records(chunk).expect("append");
    }
    a.append_record(record(330)).expect("append one");
    let note = a
        .checkpoint()
        .expect("checkpoint signs: the stored tree extends the old one");
    let cp = verify_checkpoint(&note, &a.verifier_key()).expect("verifies");
    assert_eq!(cp.size, 331);
    let (level0, higher) = hash_rows(dir.path());
    assert_eq!(level0, 260, "the old rows stay, no new ones");
    assert_eq!(higher, tlog_tiles::stored_hash_count(331) - 331);
    check_log_against_leaves(&a);
    let report = a.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.leaves_checked, 331);
}

#[test]
fn a_tampered_or_misplaced_old_layout_leaf_hash_is_found_by_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 30);
    a.checkpoint().expect("checkpoint");
    let data = leaves(&a);
    add_old_layout_leaf_hashes(dir.path(), &data[..20]);
    assert!(a.verify().expect("verify").problems.is_empty());
    let root = a.root_hash(30).expect("root");

    let db = raw_db(dir.path());
    db.execute_batch("DROP TRIGGER log_hashes_no_update")
        .expect("drop trigger");
    db.execute(
        "UPDATE log_hashes SET hash = zeroblob(32) WHERE idx = ?1",
        [leaf_idx(5) as i64],
    )
    .expect("tamper a leaf hash");
    // A leaf hash after the prefix: right, but no archive ever wrote it.
    db.execute(
        "INSERT INTO log_hashes (idx, hash) VALUES (?1, ?2)",
        rusqlite::params![leaf_idx(25) as i64, &rfc_leaf_hash(&data[25])[..]],
    )
    .expect("insert");
    drop(db);

    // Reads never use leaf-hash rows: the tree and its proofs are unchanged.
    assert_eq!(a.root_hash(30).expect("root"), root);
    check_log_against_leaves(&a);
    let problems = a.verify().expect("verify").problems.join("\n");
    assert!(
        problems.contains(&format!(
            "stored log hash {} (the leaf hash of leaf 5, record 6) differs from the hash of the \
             leaf data",
            leaf_idx(5)
        )),
        "{problems}"
    );
    assert!(
        problems.contains(&format!(
            "stored log hash {} (the leaf hash of leaf 25, record 26) exists although leaf 20 has \
             none",
            leaf_idx(25)
        )),
        "{problems}"
    );
    assert!(
        problems.contains("log_hashes_no_update is missing"),
        "{problems}"
    );
}

#[test]
fn a_rewritten_leaf_is_found_by_verify_and_fails_closed_in_every_layout() {
    // A new archive; the last leaf of an odd-sized tree is in no stored hash at all.
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 21);
    a.checkpoint().expect("checkpoint");
    let root = a.root_hash(21).expect("root");
    let proof_19 = a.inclusion_proof(19, 21).expect("proof");
    let db = raw_db(dir.path());
    db.execute_batch("DROP TRIGGER log_leaves_no_update")
        .expect("drop trigger");
    db.execute(
        "UPDATE log_leaves SET data = CAST('forged' AS BLOB) WHERE leaf_index = 20",
        [],
    )
    .expect("tamper");
    drop(db);
    let problems = a.verify().expect("verify").problems.join("\n");
    assert!(
        problems.contains("record 21 does not match log leaf 20"),
        "{problems}"
    );
    assert!(problems.contains("the log was rewritten"), "{problems}");
    // The leaf hash is recomputed from the forged data, so the served tree no longer matches
    // what was signed: proofs through it fail and no new checkpoint is signed.
    assert_ne!(a.root_hash(21).expect("root"), root);
    assert_ne!(a.inclusion_proof(19, 21).expect("proof"), proof_19);
    let err = a.checkpoint().expect_err("must refuse to sign");
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    assert!(a
        .alarms()
        .expect("alarms")
        .iter()
        .any(|al| al.kind == "log-inconsistent"));

    // An old-layout archive: the stored leaf hash no longer matches the leaf either.
    let dir = tempfile::tempdir().expect("temp dir");
    let a = archive_with(dir.path(), 12);
    a.checkpoint().expect("checkpoint");
    add_old_layout_leaf_hashes(dir.path(), &leaves(&a));
    let db = raw_db(dir.path());
    db.execute_batch("DROP TRIGGER log_leaves_no_update")
        .expect("drop trigger");
    db.execute(
        "UPDATE log_leaves SET data = CAST('forged' AS BLOB) WHERE leaf_index = 4",
        [],
    )
    .expect("tamper");
    drop(db);
    let problems = a.verify().expect("verify").problems.join("\n");
    assert!(
        problems.contains("record 5 does not match log leaf 4"),
        "{problems}"
    );
    assert!(
        problems.contains(&format!(
            "stored log hash {} (the leaf hash of leaf 4, record 5) differs",
            leaf_idx(4)
        )),
        "{problems}"
    );
    assert!(problems.contains("the log was rewritten"), "{problems}");
}
