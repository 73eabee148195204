//! Helpers shared by the archive's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use lockstep_archive::{Archive, BlobLink, NewRecord};
use lockstep_proto::digest::Sha256Digest;
use sha2::{Digest, Sha256};

pub const ORIGIN: &str = "lockstep.test/log";

pub fn open(dir: &Path) -> Archive {
    Archive::open(dir, ORIGIN).expect("archive opens in a fresh temp dir")
}

/// A plausible attestation-like record number `i`.
pub fn record(i: u64) -> NewRecord {
    NewRecord {
        kind: if i % 3 == 0 { "failure" } else { "attestation" }.to_string(),
        source: format!("pkg{}", i % 5),
        version: "1.0-1".to_string(),
        arch: "amd64".to_string(),
        job_id: Some(format!("job-{i}")),
        signer: Some(format!("FPR{:040}", i % 4)),
        dedup_key: None,
        body: format!("body of record {i}\n").into_bytes(),
        signature: Some(vec![i as u8; 64]),
        blobs: vec![BlobLink {
            role: "deb".into(),
            name: format!("pkg{}_1.0-1_amd64.deb", i % 5),
            sha256: Sha256Digest::of(format!("deb {i}").as_bytes()),
            size: 1000 + i,
        }],
    }
}

/// An archive with `n` records appended (in batches, to keep the test fast).
pub fn archive_with(dir: &Path, n: u64) -> Archive {
    let a = open(dir);
    let recs: Vec<NewRecord> = (0..n).map(record).collect();
    for chunk in recs.chunks(100) {
        a.append_records(chunk).expect("append succeeds");
    }
    assert_eq!(a.log_size().expect("log size"), n);
    a
}

/// Leaf data of every record, in log order.
pub fn leaves(a: &Archive) -> Vec<Vec<u8>> {
    let n = a.log_size().expect("log size");
    (0..n)
        .map(|i| {
            let r = a
                .record(i as i64 + 1)
                .expect("query works")
                .expect("record ids start at 1 and follow leaf order");
            assert_eq!(r.leaf_index, i);
            lockstep_archive::leaf::leaf_data(&r)
        })
        .collect()
}

// ---- an independent RFC 6962 implementation, written here from the RFC ----

pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn rfc_leaf_hash(data: &[u8]) -> [u8; 32] {
    sha256(&[&[0u8], data])
}

pub fn rfc_node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha256(&[&[1u8], l, r])
}

/// MTH(D[n]) of RFC 6962 §2.1, over precomputed leaf hashes.
pub fn mth(leaf_hashes: &[[u8; 32]]) -> [u8; 32] {
    match leaf_hashes.len() {
        0 => sha256(&[]),
        1 => leaf_hashes[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            rfc_node_hash(&mth(&leaf_hashes[..k]), &mth(&leaf_hashes[k..]))
        }
    }
}

/// Files under a blob root, excluding `tmp/`.
pub fn blob_files(root: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).expect("readable dir") {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "tmp") {
                    continue;
                }
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

pub fn tmp_entries(root: &Path) -> usize {
    std::fs::read_dir(root.join("tmp"))
        .expect("tmp dir exists")
        .count()
}

pub fn raw_db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("archive.sqlite")).expect("db file opens")
}
