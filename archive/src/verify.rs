//! The audit: re-check everything the archive has acknowledged, from first principles.
//!
//! - Blobs: every registered blob exists, has its recorded size, hashes to its name and is not
//!   writable; every file in the store hashes to its name.
//! - Records: every record's leaf, recomputed from its stored columns and blob links, equals the
//!   stored leaf data; body hashes match; every record is in the log and vice versa.
//! - Log: leaves are contiguous from 0; the tree recomputed from the leaf data (with a plain
//!   RFC 6962 frontier written here, independent of `tlog_tiles`) reproduces every stored hash of
//!   level 1 and up, each of which must exist — tiles are served from those stored hashes and
//!   from the leaves, so this covers them too — and no extra hashes exist; every checkpoint's
//!   signature verifies and its root equals the recomputed root at its size.
//! - Leaf hashes (level 0) are recomputed from the leaves, not stored. Archives written before
//!   that hold them for a prefix of the leaves: each such row must equal the hash of its leaf,
//!   and none may follow a leaf that has none.
//! - Schema: every immutability trigger is present.
//!
//! The log part runs on a separate read-only connection inside one read transaction, so it sees
//! a consistent snapshot without blocking appends. Every problem is collected; none stops the run.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::prelude::*;
use lockstep_proto::digest::hash_file;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::blobs::BlobStore;
use crate::db;
use crate::error::ArchiveError;
use crate::proof::{self, EMPTY_ROOT};
use crate::records;

/// Stored-hash mismatches reported individually before the rest are only counted.
const MAX_HASH_PROBLEMS: usize = 20;

/// What `verify` checked and what it found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub leaves_checked: u64,
    /// Empty when everything is consistent. Each entry names the blob, record, leaf or
    /// checkpoint concerned.
    pub problems: Vec<String>,
}

/// The right edge of an RFC 6962 tree being built leaf by leaf: `levels[l]` is the root of the
/// complete subtree of 2^l leaves pending at level l, if any.
#[derive(Default)]
struct Frontier {
    levels: Vec<Option<[u8; 32]>>,
}

impl Frontier {
    /// Adds leaf `n` (the current size) and returns every (stored index, hash) it completes.
    fn push(&mut self, n: u64, leaf_hash: [u8; 32]) -> Vec<(u64, [u8; 32])> {
        let mut h = leaf_hash;
        let mut out = vec![(tlog_tiles::stored_hash_index(0, n), h)];
        let mut level = 0usize;
        while (n >> level) & 1 == 1 {
            let left = self.levels[level]
                .take()
                .expect("a set bit in n means a pending subtree at that level");
            h = proof::node_hash(left, h);
            level += 1;
            let level_u8 = u8::try_from(level).expect("a u64 size has at most 64 levels");
            out.push((tlog_tiles::stored_hash_index(level_u8, n >> level), h));
        }
        if self.levels.len() <= level {
            self.levels.resize(level + 1, None);
        }
        self.levels[level] = Some(h);
        out
    }

    /// Root of the tree built so far (the pending subtrees folded right to left).
    fn root(&self) -> [u8; 32] {
        let mut acc: Option<[u8; 32]> = None;
        for h in self.levels.iter().flatten() {
            acc = Some(match acc {
                None => *h,
                Some(right) => proof::node_hash(*h, right),
            });
        }
        acc.unwrap_or(EMPTY_ROOT)
    }
}

pub(crate) fn run(
    db_path: &Path,
    blobs: &BlobStore,
    verifier_key: &str,
) -> Result<VerifyReport, ArchiveError> {
    let mut report = VerifyReport::default();
    let conn = db::open_read_only(db_path)?;
    check_triggers(&conn, &mut report)?;
    check_blobs(&conn, blobs, &mut report)?;
    let tx = conn.unchecked_transaction()?;
    check_log(&tx, verifier_key, &mut report)?;
    tx.finish()?;
    Ok(report)
}

fn check_triggers(conn: &Connection, report: &mut VerifyReport) -> Result<(), ArchiveError> {
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")?;
    let present = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (table, _) in db::IMMUTABLE_TABLES {
        for (op, _) in db::TRIGGER_OPS {
            let name = db::trigger_name(table, op);
            if !present.contains(&name) {
                report.problems.push(format!(
                    "immutability trigger {name} is missing: table {table} can be altered"
                ));
            }
        }
    }
    Ok(())
}

fn check_blobs(
    conn: &Connection,
    blobs: &BlobStore,
    report: &mut VerifyReport,
) -> Result<(), ArchiveError> {
    let registered: BTreeMap<_, _> = records::registered_blobs(conn)?.into_iter().collect();
    for (digest, size) in &registered {
        let path = blobs.final_path(digest);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(format!(
                    "blob {digest} is missing: {} cannot be read ({e})",
                    path.display()
                ));
                continue;
            }
        };
        if meta.permissions().mode() & 0o222 != 0 {
            report.problems.push(format!(
                "blob {digest} at {} is writable (mode {:o}); stored blobs must be 0444",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        report.blobs_checked += 1;
        match hash_file(&path) {
            Ok((actual, actual_size)) => {
                if actual != *digest {
                    report.problems.push(format!(
                        "blob {digest} at {} is corrupt or tampered: its content hashes to {actual}",
                        path.display()
                    ));
                } else if actual_size != *size {
                    report.problems.push(format!(
                        "blob {digest} is {actual_size} bytes but was stored as {size} bytes"
                    ));
                }
            }
            Err(e) => report.problems.push(format!(
                "blob {digest} at {} cannot be read: {e}",
                path.display()
            )),
        }
    }
    for (path, claimed) in blobs.list()? {
        match claimed {
            None => report.problems.push(format!(
                "unexpected file {} in the blob store (not named by its SHA-256)",
                path.display()
            )),
            Some(d) if registered.contains_key(&d) => {} // checked above
            Some(d) => {
                // Linked but not yet registered: a crash between the two steps. Harmless if intact.
                report.blobs_checked += 1;
                match hash_file(&path) {
                    Ok((actual, _)) if actual == d => {}
                    Ok((actual, _)) => report.problems.push(format!(
                        "blob {d} at {} is corrupt or tampered: its content hashes to {actual}",
                        path.display()
                    )),
                    Err(e) => report.problems.push(format!(
                        "blob {d} at {} cannot be read: {e}",
                        path.display()
                    )),
                }
            }
        }
    }
    Ok(())
}

fn check_log(
    conn: &Connection,
    verifier_key: &str,
    report: &mut VerifyReport,
) -> Result<(), ArchiveError> {
    // Checkpoints first, so their roots can be compared while the tree is rebuilt.
    let mut cps: BTreeMap<u64, Vec<(i64, [u8; 32])>> = BTreeMap::new();
    {
        let mut stmt = conn.prepare("SELECT id, size, root, note FROM checkpoints ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (id, size, root, note) in rows {
            let Ok(size) = u64::try_from(size) else {
                report
                    .problems
                    .push(format!("checkpoint {id} has negative size {size}"));
                continue;
            };
            let Ok(root) = <[u8; 32]>::try_from(root.as_slice()) else {
                report
                    .problems
                    .push(format!("checkpoint {id} has a malformed root"));
                continue;
            };
            match proof::verify_checkpoint(&note, verifier_key) {
                Ok(info) if info.size == size && info.root == root => {}
                Ok(info) => report.problems.push(format!(
                    "checkpoint {id}: signed note says size {} root {} but the row says size \
                     {size} root {}",
                    info.size,
                    BASE64_STANDARD.encode(info.root),
                    BASE64_STANDARD.encode(root)
                )),
                Err(e) => report.problems.push(format!(
                    "checkpoint {id} (size {size}) does not verify with the log key: {e}"
                )),
            }
            cps.entry(size).or_default().push((id, root));
        }
    }
    let mut check_roots = |size: u64, root: [u8; 32], problems: &mut Vec<String>| {
        if let Some(list) = cps.remove(&size) {
            for (id, want) in list {
                if want != root {
                    problems.push(format!(
                        "checkpoint {id} (size {size}) has root {} but the leaves recompute to {}: \
                         the log was rewritten",
                        BASE64_STANDARD.encode(want),
                        BASE64_STANDARD.encode(root)
                    ));
                }
            }
        }
    };

    let mut frontier = Frontier::default();
    check_roots(0, frontier.root(), &mut report.problems);
    let mut hash_problems = 0usize;
    // The first leaf without a stored leaf hash: none may follow it.
    let mut first_without_leaf_hash: Option<u64> = None;
    let mut hash_stmt = conn.prepare("SELECT hash FROM log_hashes WHERE idx = ?1")?;
    let mut leaf_stmt =
        conn.prepare("SELECT leaf_index, record_id, data FROM log_leaves ORDER BY leaf_index")?;
    let mut rows = leaf_stmt.query([])?;
    let mut n: u64 = 0;
    while let Some(row) = rows.next()? {
        let stored_index: i64 = row.get(0)?;
        let record_id: i64 = row.get(1)?;
        let data: Vec<u8> = row.get(2)?;
        if stored_index != n as i64 {
            report.problems.push(format!(
                "log leaf {n} is missing or out of order (found leaf index {stored_index} \
                 for record {record_id} in its place)"
            ));
        }
        match records::stored_leaf(conn, record_id)? {
            None => report.problems.push(format!(
                "log leaf {n} refers to record {record_id}, which does not exist"
            )),
            Some(rec) => {
                if rec.leaf != data {
                    report.problems.push(format!(
                        "record {record_id} does not match log leaf {n}: the record or the leaf \
                         data was altered"
                    ));
                }
                if !rec.body_hash_ok {
                    report.problems.push(format!(
                        "record {record_id}: body does not hash to its stored body_sha256"
                    ));
                }
                if rec.leaf_index != stored_index {
                    report.problems.push(format!(
                        "record {record_id} claims leaf {} but is stored at leaf {stored_index}",
                        rec.leaf_index
                    ));
                }
            }
        }
        let mut completed = frontier.push(n, proof::leaf_hash(&data)).into_iter();
        let (leaf_idx, leaf_want) = completed
            .next()
            .expect("Frontier::push lists the leaf's own hash first");
        let stored_leaf: Option<Vec<u8>> = {
            use rusqlite::OptionalExtension;
            hash_stmt
                .query_row([leaf_idx as i64], |r| r.get(0))
                .optional()?
        };
        match stored_leaf {
            None => {
                first_without_leaf_hash.get_or_insert(n);
            }
            Some(stored) => {
                let mut problem = |what: String| {
                    hash_problems += 1;
                    if hash_problems <= MAX_HASH_PROBLEMS {
                        report.problems.push(format!(
                            "stored log hash {leaf_idx} (the leaf hash of leaf {n}, record \
                             {record_id}) {what}"
                        ));
                    }
                };
                if stored != leaf_want {
                    problem("differs from the hash of the leaf data".to_string());
                }
                if let Some(m) = first_without_leaf_hash {
                    problem(format!(
                        "exists although leaf {m} has none: leaf hashes were stored only by \
                         archives of the earlier layout, for a prefix of the leaves"
                    ));
                }
            }
        }
        for (idx, want) in completed {
            let stored: Option<Vec<u8>> = {
                use rusqlite::OptionalExtension;
                hash_stmt.query_row([idx as i64], |r| r.get(0)).optional()?
            };
            if stored.as_deref() != Some(&want[..]) {
                hash_problems += 1;
                if hash_problems <= MAX_HASH_PROBLEMS {
                    report.problems.push(format!(
                        "stored log hash {idx} (added with leaf {n}, record {record_id}) {} the \
                         hash recomputed from the leaves",
                        if stored.is_some() {
                            "differs from"
                        } else {
                            "is missing; expected"
                        }
                    ));
                }
            }
        }
        n += 1;
        report.leaves_checked += 1;
        check_roots(n, frontier.root(), &mut report.problems);
    }
    if hash_problems > MAX_HASH_PROBLEMS {
        report.problems.push(format!(
            "… and {} more stored log hash mismatches",
            hash_problems - MAX_HASH_PROBLEMS
        ));
    }
    // Every stored index below stored_hash_count(n) was looked up above (levels >= 1 must exist,
    // leaf hashes may), so any other row is one the tree does not have.
    let expected_hashes = tlog_tiles::stored_hash_count(n);
    let extra: i64 = conn.query_row(
        "SELECT COUNT(*) FROM log_hashes WHERE idx < 0 OR idx >= ?1",
        [expected_hashes as i64],
        |r| r.get(0),
    )?;
    if extra > 0 {
        report.problems.push(format!(
            "{extra} stored log hashes lie outside a tree of {n} leaves: leaves were dropped \
             or hashes added"
        ));
    }
    for (size, list) in cps {
        for (id, _) in list {
            report.problems.push(format!(
                "checkpoint {id} is for size {size} but the log has only {n} leaves: leaves \
                 were dropped"
            ));
        }
    }
    let mut orphan_stmt = conn.prepare(
        "SELECT id FROM records r WHERE NOT EXISTS \
         (SELECT 1 FROM log_leaves l WHERE l.record_id = r.id) ORDER BY id",
    )?;
    let orphans = orphan_stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for id in orphans {
        report
            .problems
            .push(format!("record {id} is not in the transparency log"));
    }
    Ok(())
}

/// Audits an archive directory without opening it for writing: nothing is created, migrated or
/// cleared, so it is safe while a coordinator runs on the same directory. `dir` is the archive
/// directory (with `archive.sqlite` and `blobs/`) or a coordinator data directory containing
/// `archive/`. `verifier_key`: the log's checkpoint verifier key; `None` derives it from the
/// directory's `log-key` seed and the origin of the stored checkpoints (which only proves the
/// checkpoints were signed by the key stored next to them — pass the key you pinned to check more).
pub fn verify_dir(dir: &Path, verifier_key: Option<&str>) -> Result<VerifyReport, ArchiveError> {
    let dir = if dir.join(crate::archive::DB_FILE).is_file() {
        dir.to_path_buf()
    } else if dir.join("archive").join(crate::archive::DB_FILE).is_file() {
        dir.join("archive")
    } else {
        return Err(ArchiveError::NotFound(format!(
            "no {} in {} or {}/archive; give the archive directory or the coordinator's data \
             directory",
            crate::archive::DB_FILE,
            dir.display(),
            dir.display()
        )));
    };
    let db_path = dir.join(crate::archive::DB_FILE);
    let blobs = BlobStore::open_existing(&dir.join(crate::archive::BLOB_DIR))?;
    let key = match verifier_key {
        Some(k) => k.to_owned(),
        None => {
            let conn = db::open_read_only(&db_path)?;
            let origin: Option<String> = {
                use rusqlite::OptionalExtension;
                conn.query_row(
                    "SELECT note FROM checkpoints ORDER BY id DESC LIMIT 1",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
                .and_then(|n| n.lines().next().map(str::to_owned))
            };
            match origin {
                // No checkpoint yet: there is no signature to check, any valid key name does.
                None => crate::log::verifier_key_from_seed(
                    &dir.join(crate::archive::KEY_FILE),
                    "lockstep.local/log",
                )?,
                Some(origin) => crate::log::verifier_key_from_seed(
                    &dir.join(crate::archive::KEY_FILE),
                    &origin,
                )?,
            }
        }
    };
    run(&db_path, &blobs, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain recursive RFC 6962 MTH, for cross-checking the frontier.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                proof::node_hash(mth(&leaves[..k]), mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn frontier_root_equals_recursive_mth_for_every_size_up_to_70() {
        let mut f = Frontier::default();
        let mut leaves = Vec::new();
        assert_eq!(f.root(), mth(&leaves));
        for n in 0..70u64 {
            let h = proof::leaf_hash(&n.to_be_bytes());
            f.push(n, h);
            leaves.push(h);
            assert_eq!(f.root(), mth(&leaves), "size {}", n + 1);
        }
    }
}
