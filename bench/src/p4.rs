//! P4: the transparency log at 10^6 (and 10^7) leaves: inclusion and consistency proof time and
//! size through `Archive::inclusion_proof` / `consistency_proof` (SQLite stored hashes), beside
//! the same proofs computed by `tlog_tiles` from the stored hashes held in memory; and the log's
//! storage per entry (SQLite pages of `log_hashes` per leaf) beside the raw hash bytes. The
//! archive stores the hashes of levels 1 and up only; leaf hashes are recomputed from the leaf
//! data in `log_leaves` (the entries themselves, not counted as overhead).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lockstep_archive::{Archive, NewRecord};
use rand::Rng;
use tlog_tiles::{Hash, HashReader};

use crate::row::{Better, Row};
use crate::util::{progress, scratch};

/// Records per `append_records` transaction during setup. Not more: a caller's records share
/// one savepoint, and past a few hundred thousand leaves SQLite's in-memory sub-journal made
/// every further insert of a 10,000-record batch slower than the last (the setup of 10^6 leaves
/// took over 15 minutes).
const BATCH: usize = 1_000;
/// Proofs timed per figure.
const PROOFS: usize = 2_000;

const BASELINE_TIME: &str = "the same proof computed by tlog_tiles from every stored hash held in \
     memory (leaf hashes computed beforehand, no database), mean per proof";
const BASELINE_SIZE: &str = "RFC 6962 minimum: ceil(log2 n) hashes of 32 bytes";
const BASELINE_STORE: &str = "raw stored-hash bytes per leaf (tlog stores 2n - popcount(n) \
     hashes of 32 bytes); Lockstep stores levels >= 1 only and recomputes each leaf hash from \
     the stored leaf";

/// The stored hashes in memory, indexed by stored-hash index.
struct MemHashes(Vec<Hash>);

impl HashReader for MemHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                self.0
                    .get(i as usize)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Bytes of SQLite pages holding `table` (the `dbstat` virtual table).
fn table_bytes(db: &Path, table: &str) -> anyhow::Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let n: i64 = conn
        .query_row(
            "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .context("dbstat (SQLITE_ENABLE_DBSTAT_VTAB)")?;
    Ok(n as u64)
}

fn record(i: u64) -> NewRecord {
    NewRecord {
        kind: "bench".into(),
        source: format!("bench-{}", i % 100_000),
        version: "1".into(),
        arch: "amd64".into(),
        job_id: None,
        signer: None,
        dedup_key: None,
        body: format!("{{\"bench\":{i}}}").into_bytes(),
        signature: None,
        blobs: Vec::new(),
    }
}

pub fn run(root: &Path, quick: bool, huge: bool) -> anyhow::Result<()> {
    let mut sizes = vec![if quick { 100_000u64 } else { 1_000_000 }];
    if huge && !quick {
        sizes.push(10_000_000);
    }
    let dir = scratch(root, "p4-")?;
    let archive = Archive::open(dir.path(), "bench.invalid/log").context("archive")?;
    let db = dir.path().join(lockstep_archive::archive::DB_FILE);
    let mut have = 0u64;
    let mut rng = rand::thread_rng();
    for size in sizes {
        progress!("P4: appending up to {size} leaves in batches of {BATCH}");
        let t = Instant::now();
        while have < size {
            let n = (size - have).min(BATCH as u64);
            let recs: Vec<NewRecord> = (have..have + n).map(record).collect();
            archive.append_records(&recs)?;
            have += n;
        }
        let append_s = t.elapsed().as_secs_f64();
        archive.checkpoint()?;
        progress!("P4: {size} leaves appended in {append_s:.1}s");

        // Storage per entry.
        let hashes_bytes = table_bytes(&db, "log_hashes")?;
        let stored = tlog_tiles::stored_hash_count(size);
        Row::abs_goal(
            "P4",
            format!("log_hashes storage per leaf at {size} leaves (leaf hashes recomputed)"),
            "B",
            hashes_bytes as f64 / size as f64,
            (stored * 32) as f64 / size as f64,
            64.0,
            Better::Lower,
            BASELINE_STORE,
        )
        .emit();

        // Every stored hash in memory for the baseline: levels >= 1 from `log_hashes`, leaf
        // hashes computed from `log_leaves` (old-layout level-0 rows, if any, are overwritten).
        let mem = {
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let mut v = vec![Hash([0; 32]); stored as usize];
            let mut stmt = conn.prepare("SELECT idx, hash FROM log_hashes")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let idx: i64 = r.get(0)?;
                let h: Vec<u8> = r.get(1)?;
                if let (Some(slot), Ok(h)) = (v.get_mut(idx as usize), <[u8; 32]>::try_from(h)) {
                    *slot = Hash(h);
                }
            }
            let mut stmt = conn.prepare("SELECT leaf_index, data FROM log_leaves")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let n: i64 = r.get(0)?;
                let data = r.get_ref(1)?.as_blob()?;
                let idx = tlog_tiles::stored_hash_index(0, n as u64);
                if let Some(slot) = v.get_mut(idx as usize) {
                    *slot = tlog_tiles::record_hash(data);
                }
            }
            MemHashes(v)
        };
        anyhow::ensure!(
            tlog_tiles::tree_hash(size, &mem)
                .context("baseline root")?
                .0
                == archive.root_hash(size)?,
            "P4: the hashes held in memory do not form the archive's tree"
        );

        // Inclusion.
        let idxs: Vec<u64> = (0..PROOFS).map(|_| rng.gen_range(0..size)).collect();
        let t = Instant::now();
        let mut bytes = 0usize;
        for &i in &idxs {
            bytes = bytes.max(archive.inclusion_proof(i, size)?.len() * 32);
        }
        let ours = t.elapsed().as_secs_f64() / PROOFS as f64;
        let t = Instant::now();
        for &i in &idxs {
            tlog_tiles::prove_record(size, i, &mem).context("baseline inclusion proof")?;
        }
        let base = t.elapsed().as_secs_f64() / PROOFS as f64;
        let min_bytes = 32.0 * (size as f64).log2().ceil();
        Row::abs_goal(
            "P4",
            format!("inclusion proof time at {size} leaves"),
            "ms",
            ours * 1e3,
            base * 1e3,
            1.0,
            Better::Lower,
            BASELINE_TIME,
        )
        .emit();
        Row::abs_goal(
            "P4",
            format!("inclusion proof size at {size} leaves (largest)"),
            "B",
            bytes as f64,
            min_bytes,
            1024.0,
            Better::Lower,
            BASELINE_SIZE,
        )
        .emit();

        // Consistency from a random older size.
        let olds: Vec<u64> = (0..PROOFS).map(|_| rng.gen_range(1..size)).collect();
        let t = Instant::now();
        let mut bytes = 0usize;
        for &o in &olds {
            bytes = bytes.max(archive.consistency_proof(o, size)?.len() * 32);
        }
        let ours = t.elapsed().as_secs_f64() / PROOFS as f64;
        let t = Instant::now();
        for &o in &olds {
            tlog_tiles::prove_tree(size, o, &mem).context("baseline consistency proof")?;
        }
        let base = t.elapsed().as_secs_f64() / PROOFS as f64;
        Row::abs_goal(
            "P4",
            format!("consistency proof time at {size} leaves"),
            "ms",
            ours * 1e3,
            base * 1e3,
            1.0,
            Better::Lower,
            BASELINE_TIME,
        )
        .emit();
        Row::abs_goal(
            "P4",
            format!("consistency proof size at {size} leaves (largest)"),
            "B",
            bytes as f64,
            // Consistency proofs can need up to about 2 log2 n hashes.
            2.0 * min_bytes,
            1024.0,
            Better::Lower,
            BASELINE_SIZE,
        )
        .emit();
    }
    Ok(())
}
