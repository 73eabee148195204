//! P6: stored bytes for N identical rebuilds. N builders upload the same artifacts (the size of
//! `hello`'s two `.deb`s) through `Archive::put_blob`, and N attestation records link them; the
//! blob store's apparent size is compared with one copy of the artifact bytes.

use std::path::Path;

use anyhow::Context;
use lockstep_archive::{Archive, BlobLink, NewRecord};
use rand::RngCore;

use crate::row::{Better, Row};
use crate::util::{dir_bytes, progress, scratch};

const BASELINE: &str = "the artifact bytes stored once";

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let n = if quick { 5 } else { 20 };
    let dir = scratch(root, "p6-")?;
    let archive = Archive::open(dir.path(), "bench.invalid/log").context("archive")?;
    let mut rng = rand::thread_rng();
    let artifacts: Vec<(String, Vec<u8>)> = [
        ("hello_2.10-3_amd64.deb", 53_000usize),
        ("hello-dbgsym_2.10-3_amd64.deb", 30_000),
    ]
    .iter()
    .map(|(name, size)| {
        let mut b = vec![0u8; *size];
        rng.fill_bytes(&mut b);
        (name.to_string(), b)
    })
    .collect();
    let one: u64 = artifacts.iter().map(|(_, b)| b.len() as u64).sum();
    progress!("P6: {n} identical rebuilds of {one} artifact bytes");
    for i in 0..n {
        let mut links = Vec::new();
        for (name, bytes) in &artifacts {
            let put = archive.put_blob(None, &bytes[..], u64::MAX)?;
            links.push(BlobLink {
                role: "artifact".into(),
                name: name.clone(),
                sha256: put.digest,
                size: put.size,
            });
        }
        archive.append_record(NewRecord {
            kind: "attestation".into(),
            source: "hello".into(),
            version: "2.10-3".into(),
            arch: "amd64".into(),
            job_id: Some("bench-job".into()),
            signer: Some(format!("builder-{i}")),
            dedup_key: Some(format!("attestation:bench-job:builder-{i}")),
            body: format!("{{\"rebuild\":{i}}}").into_bytes(),
            signature: None,
            blobs: links,
        })?;
    }
    let stored = dir_bytes(archive.blob_root())?;
    Row::abs_goal(
        "P6",
        format!("blob bytes stored for {n} identical rebuilds"),
        "B",
        stored as f64,
        one as f64,
        one as f64,
        Better::Lower,
        BASELINE,
    )
    .emit();
    Ok(())
}
