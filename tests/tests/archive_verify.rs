//! Issue 3: the write-once archive seen from outside — T14 (no overwrite, no delete, collisions
//! alarm), T15 (a rewritten log or blob is named by `lockstep verify --data-dir`), and the
//! auditor's `lockstep verify` / `lockstep proof` commands with their exit codes.

mod archive_support;
#[path = "decisions_support/mod.rs"]
mod decisions_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use archive_support::{cli, copy_dir, tamper_sql, text};
use decisions_support::Fixture;
use lockstep_archive::{BlobLink, NewRecord};
use lockstep_proto::digest::Sha256Digest;

/// Appends `n` records (as the service does for its own evidence) and signs a checkpoint.
fn add_records(f: &Fixture, n: usize, tag: &str, blob: Option<(Sha256Digest, u64)>) {
    for i in 0..n {
        f.service
            .archive
            .append_record(NewRecord {
                kind: "attestation".into(),
                source: "pkg".into(),
                version: "1.0-1".into(),
                arch: "amd64".into(),
                job_id: Some(format!("job-{tag}-{i}")),
                signer: Some("F".repeat(40)),
                dedup_key: None,
                body: format!("body {tag} {i}").into_bytes(),
                signature: None,
                blobs: blob
                    .map(|(d, size)| BlobLink {
                        role: "deb".into(),
                        name: "pkg_1.0-1_amd64.deb".into(),
                        sha256: d,
                        size,
                    })
                    .into_iter()
                    .collect(),
            })
            .expect("append");
    }
    f.service.archive.checkpoint().expect("checkpoint");
}

async fn status_of(f: &Fixture, method: reqwest::Method, path: &str) -> u16 {
    f.http
        .request(method, format!("{}{path}", f.url))
        .body("x")
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t14_overwrites_and_deletes_are_refused_and_a_collision_raises_an_alarm() {
    let f = Fixture::start("t14", &[], 1).await;
    let bytes = b"the one true package".to_vec();
    let d = Sha256Digest::of(&bytes);

    let put = |body: Vec<u8>, sha: String| {
        let http = f.http.clone();
        let url = f.url.clone();
        async move {
            let r = http
                .put(format!("{url}/api/v1/blobs/{sha}"))
                .body(body)
                .send()
                .await
                .expect("PUT");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(
        put(bytes.clone(), d.to_hex()).await.0,
        201,
        "first upload stores"
    );
    let (s, body) = put(bytes.clone(), d.to_hex()).await;
    assert_eq!(
        s, 200,
        "identical bytes are deduplicated, not rewritten: {body}"
    );
    assert!(body.contains("\"created\":false"), "{body}");
    // Other bytes under the same name: refused, nothing replaced.
    let (s, body) = put(b"evil replacement".to_vec(), d.to_hex()).await;
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("nothing was stored"), "{body}");

    // There is no delete or overwrite route for blobs, records, the log or uploads.
    use reqwest::Method;
    let rec_path = "/api/v1/records/1";
    for (m, p) in [
        (Method::DELETE, format!("/api/v1/blobs/{d}")),
        (Method::POST, format!("/api/v1/blobs/{d}")),
        (Method::PATCH, format!("/api/v1/blobs/{d}")),
        (Method::DELETE, rec_path.to_string()),
        (Method::PUT, rec_path.to_string()),
        (Method::POST, rec_path.to_string()),
        (Method::DELETE, "/log/checkpoint".to_string()),
        (Method::PUT, "/log/checkpoint".to_string()),
        (Method::DELETE, "/log/tile/entries/000".to_string()),
        (Method::DELETE, "/api/v1/uploads".to_string()),
        (Method::DELETE, "/api/v1/log/cosignatures".to_string()),
    ] {
        let s = status_of(&f, m.clone(), &p).await;
        assert!(s == 405 || s == 404, "{m} {p} must not exist, got {s}");
    }
    let r = f
        .http
        .get(format!("{}/api/v1/blobs/{d}", f.url))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        bytes,
        "blob unchanged"
    );

    // Someone with disk access swaps the stored file; the next upload of the real bytes finds a
    // different file under the name: 409, the file is left alone, and an alarm is recorded.
    let path = f.service.archive.blob_path(&d).expect("stored");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&path, b"tampered on disk").expect("overwrite behind the back");
    let (s, body) = put(bytes.clone(), d.to_hex()).await;
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("does not match its name"), "{body}");
    assert_eq!(std::fs::read(&path).expect("read"), b"tampered on disk");
    let (s, audit) = f.post_json("/api/v1/audit", &serde_json::json!({})).await;
    assert_eq!(s, 200);
    let alarms = audit["alarms"].as_array().expect("alarms");
    assert!(
        alarms
            .iter()
            .any(|a| a["kind"] == "blob-collision" && a["subject"] == d.to_hex().as_str()),
        "collision alarm recorded: {audit}"
    );
    assert!(
        audit["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .any(|p| p.as_str().unwrap_or("").contains(&d.to_hex())),
        "the audit names the tampered blob: {audit}"
    );
    // And the CLI's verify fails with exit code 4, naming it.
    let o = cli(&f.url, &["verify"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains(&d.to_hex()), "{}", text(&o));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_proofs_pass_on_an_honest_log_and_detect_a_forked_saved_checkpoint() {
    let f = Fixture::start("verify-ok", &[], 1).await;
    let deb = b"deb bytes".to_vec();
    let d = f.put_blob(&deb).await;
    add_records(&f, 3, "a", Some((d, deb.len() as u64)));
    let work = tempfile::tempdir().expect("tempdir");
    let saved = work.path().join("cp-3.note");
    let saved_s = saved.to_str().expect("utf-8 path");
    let key = f.service.archive.verifier_key();

    let o = cli(&f.url, &["verify", "--log-key", &key, "--save", saved_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("matches the checkpoint root"),
        "{}",
        text(&o)
    );
    let saved_note = std::fs::read_to_string(&saved).expect("saved");
    assert!(saved_note.contains("\n3\n"), "{saved_note}");

    // 300 more leaves: two entry tiles, one partial.
    add_records(&f, 300, "b", None);
    let o = cli(
        &f.url,
        &["verify", "--log-key", &key, "--since", saved_s, "--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["audit"]["blobs_checked"], 1);

    // Inclusion of record 2 (leaf 1) and of a leaf in the second tile; consistency 3 → 303.
    for args in [
        vec!["proof", "inclusion", "2", "--log-key", &key],
        vec!["proof", "inclusion", "--leaf", "257", "--log-key", &key],
        vec![
            "proof",
            "inclusion",
            "--leaf",
            "0",
            "--size",
            "1",
            "--log-key",
            &key,
        ],
        vec!["proof", "consistency", saved_s, "303", "--log-key", &key],
        vec!["proof", "consistency", "1", "256", "--log-key", &key],
    ] {
        let o = cli(&f.url, &args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("verified"), "{}", text(&o));
    }
    let o = cli(
        &f.url,
        &["proof", "inclusion", "2", "--json", "--log-key", &key],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["leaf_index"], 1);
    assert_eq!(v["tree_size"], 303);
    // The proof printed is the one the archive's own verifier accepts.
    let proof: Vec<[u8; 32]> = v["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(|h| {
            hex::decode(h.as_str().expect("hex"))
                .expect("hex")
                .try_into()
                .expect("32 bytes")
        })
        .collect();
    let root: [u8; 32] = hex::decode(v["root"].as_str().expect("root"))
        .expect("hex")
        .try_into()
        .expect("32");
    let leaf: [u8; 32] = hex::decode(v["leaf_hash"].as_str().expect("leaf"))
        .expect("hex")
        .try_into()
        .expect("32");
    lockstep_archive::proof::verify_inclusion(leaf, 1, 303, &proof, root).expect("valid");
    let mut bad = proof.clone();
    bad[0][0] ^= 1;
    assert!(lockstep_archive::proof::verify_inclusion(leaf, 1, 303, &bad, root).is_err());

    // A saved checkpoint for size 3 with another root (a fork the auditor saw): split view.
    let forked_dir = tempfile::tempdir().expect("tempdir");
    let forked = lockstep_archive::Archive::open(forked_dir.path(), f.service.archive.origin())
        .expect("open");
    drop(forked);
    std::fs::copy(
        f.dir.path().join("data/archive/log-key"),
        forked_dir.path().join("log-key"),
    )
    .expect("same log key");
    let forked = lockstep_archive::Archive::open(forked_dir.path(), f.service.archive.origin())
        .expect("open");
    for i in 0..3 {
        forked
            .append_record(NewRecord {
                kind: "attestation".into(),
                source: "other".into(),
                version: "1".into(),
                arch: "amd64".into(),
                job_id: None,
                signer: None,
                dedup_key: None,
                body: format!("fork {i}").into_bytes(),
                signature: None,
                blobs: vec![],
            })
            .expect("append");
    }
    let fork_note = forked.checkpoint().expect("checkpoint");
    let fork_path = work.path().join("fork.note");
    std::fs::write(&fork_path, &fork_note).expect("write");
    let o = cli(
        &f.url,
        &[
            "verify",
            "--log-key",
            &key,
            "--since",
            fork_path.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("not consistent"), "{}", text(&o));
    // A wrong pinned key: exit 4 too.
    let o = cli(
        &f.url,
        &["verify", "--log-key", &forked_dir_key(forked_dir.path())],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "same seed, same key: {}",
        text(&o)
    );
    let other = tempfile::tempdir().expect("tempdir");
    let other_key = lockstep_archive::Archive::open(other.path(), f.service.archive.origin())
        .expect("open")
        .verifier_key();
    let o = cli(&f.url, &["verify", "--log-key", &other_key]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("does not verify"), "{}", text(&o));
    f.stop().await;
}

fn forked_dir_key(dir: &Path) -> String {
    lockstep_archive::Archive::open(dir, "lockstep.local/log")
        .expect("open")
        .verifier_key()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_altered_dropped_or_reordered_leaves_and_blobs_are_named_by_verify_data_dir() {
    let f = Fixture::start("t15", &[], 1).await;
    let deb = b"t15 deb".to_vec();
    let d = f.put_blob(&deb).await;
    add_records(&f, 5, "t15", Some((d, deb.len() as u64)));
    let mut f = f;
    let kept = std::mem::replace(&mut f.dir, tempfile::tempdir().expect("tempdir"));
    let data = kept.path().join("data");
    let o = cli(
        &f.url,
        &["verify", "--data-dir", data.to_str().expect("utf-8")],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "pristine archive verifies: {}",
        text(&o)
    );
    f.stop().await;

    let work = tempfile::tempdir().expect("tempdir");
    let blob_rel = {
        let h = d.to_hex();
        format!("blobs/{}/{}/{h}", &h[0..2], &h[2..4])
    };
    // (name, tampering, what the report must mention)
    type Tamper = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Tamper, Vec<String>)> = vec![
        (
            "altered leaf",
            Box::new(|a: &Path| {
                tamper_sql(
                    a,
                    "UPDATE log_leaves SET data = CAST(replace(CAST(data AS TEXT), 'job-t15-2', \
                     'job-t15-X') AS BLOB) WHERE leaf_index = 2",
                )
            }),
            vec!["log leaf 2".into(), "record 3".into()],
        ),
        (
            "altered record",
            Box::new(|a: &Path| tamper_sql(a, "UPDATE records SET source = 'evil' WHERE id = 4")),
            vec!["record 4".into()],
        ),
        (
            "dropped leaf",
            Box::new(|a: &Path| {
                tamper_sql(
                    a,
                    "DELETE FROM log_leaves WHERE leaf_index = 4; DELETE FROM record_blobs WHERE \
                     record_id = 5; DELETE FROM records WHERE id = 5",
                )
            }),
            vec!["leaves were dropped".into()],
        ),
        (
            "reordered leaves",
            Box::new(|a: &Path| {
                tamper_sql(
                    a,
                    "UPDATE log_leaves SET leaf_index = 100 WHERE leaf_index = 1; \
                     UPDATE log_leaves SET leaf_index = 1 WHERE leaf_index = 3; \
                     UPDATE log_leaves SET leaf_index = 3 WHERE leaf_index = 100;",
                )
            }),
            vec!["record 4 claims leaf 3 but is stored at leaf 1".into()],
        ),
        (
            "altered blob",
            Box::new(move |a: &Path| {
                let p = a.join(&blob_rel);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
                std::fs::write(&p, b"t15 DEB").expect("rewrite blob");
            }),
            vec![d.to_hex(), "corrupt or tampered".into()],
        ),
    ];
    for (i, (name, tamper, expect)) in cases.iter().enumerate() {
        let copy = work.path().join(format!("case{i}"));
        copy_dir(&data, &copy);
        tamper(&copy.join("archive"));
        let o = cli(
            "http://127.0.0.1:1",
            &["verify", "--data-dir", copy.to_str().expect("utf-8")],
        );
        let out = text(&o);
        assert_eq!(o.status.code(), Some(4), "{name}: verify must fail: {out}");
        for e in expect {
            assert!(
                out.contains(e.as_str()),
                "{name}: report must mention {e:?}: {out}"
            );
        }
        // Triggers were dropped by the attacker: the audit says so too (except the blob case).
        if !name.contains("blob") {
            assert!(out.contains("immutability trigger"), "{name}: {out}");
        }
    }

    // The remote auditor sees a rewritten leaf too: restart a coordinator on a tampered copy.
    let copy = work.path().join("remote");
    copy_dir(&data, &copy);
    tamper_sql(
        &copy.join("archive"),
        "UPDATE log_leaves SET data = CAST(replace(CAST(data AS TEXT), 'job-t15-1', 'job-t15-Y') \
         AS BLOB) WHERE leaf_index = 1",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::rename(&copy, dir.path().join("data")).expect("move");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "default_threshold = 1\n").expect("policy");
    let g = Fixture::start_with_policy("t15-remote", dir, policy).await;
    let o = cli(&g.url, &["verify", "--no-audit"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("the log was rewritten"), "{}", text(&o));
    g.stop().await;
}
