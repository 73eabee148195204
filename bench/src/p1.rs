//! P1: archive ingest. The same files go through
//!
//! - `Archive::put_blobs`, the batch ingest (row "put_blobs, one batch per upload"): stream +
//!   hash every file of the batch into a temp file, one `syncfs` of the archive's file system,
//!   link every file under its digest, one more `syncfs`, read back and re-hash, one SQLite commit
//!   registering the batch. One batch holds all the files of the run, as one upload or import
//!   hands them to the archive at once (like the baseline, which also syncs once for all of
//!   them), cut at [`BATCH_BYTES`] so the temp space a batch needs stays bounded (the full-size
//!   runs of 1 GiB are 4 batches);
//! - `Archive::put_blob` once per file (row "one put_blob per file"): fsync the file, link under
//!   its digest, fsync the directory, one SQLite commit, read back and re-hash — per file;
//! - the coreutils baseline `sha256sum FILES; cp FILES DST/; sync -f DST`, used by both rows.
//!
//! After one uncounted warm-up run of each, the baseline and the batches run twice each, in ABBA
//! order, and the rows give the means: the first writes after the sources were created are
//! slower, and the disk of this machine gets slower for a while after a burst of writes, either
//! of which would otherwise favour one side. Each archive is new and empty. Each measurement
//! starts after a `sync` (not timed) and writes into its own new directory; the directories of a
//! size are removed only after all its measurements, so no measurement pays for another's
//! writeback or deletions (on this ext4 volume without a journal, inode allocation skips inodes
//! freed in the last minutes, `recently_deleted` in `ext4_new_inode`, so a fresh deletion of
//! thousands of files slows every file and directory creation after it).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use lockstep_archive::Archive;
use rand::RngCore;

use crate::row::{Better, Row};
use crate::util::{progress, scratch, timed};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Most bytes per `put_blobs` batch (a single larger file is a batch of its own).
const BATCH_BYTES: u64 = 256 * MIB;

const BASELINE: &str =
    "`sha256sum` of the files, then `cp` of the files into an empty directory on \
     the same filesystem, then one `sync -f` of that filesystem; mean of 2 runs after a \
     warm-up run, ABBA order with the 2 put_blobs runs (put_blobs syncs the filesystem twice \
     and commits SQLite once per batch of up to 256 MiB; put_blob fsyncs every blob, its \
     directory and its SQLite commit)";

/// (artifact size, total bytes) per run.
fn plan(quick: bool) -> Vec<(u64, u64)> {
    if quick {
        vec![(4 * KIB, 2 * MIB), (MIB, 64 * MIB), (64 * MIB, 128 * MIB)]
    } else {
        // 4 KiB files pay one set of fsyncs each; 16 MiB of them is already 4,096 blobs.
        vec![(4 * KIB, 16 * MIB), (MIB, GIB), (64 * MIB, GIB), (GIB, GIB)]
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= GIB => format!("{} GiB", n / GIB),
        n if n >= MIB => format!("{} MiB", n / MIB),
        n => format!("{} KiB", n / KIB),
    }
}

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    // For experiments: `LOCKSTEP_BENCH_P1_ONLY="4 KiB"` runs that artifact size alone.
    let only = std::env::var("LOCKSTEP_BENCH_P1_ONLY").ok();
    for (size, total) in plan(quick) {
        if only.as_deref().is_some_and(|o| o != human(size)) {
            continue;
        }
        let count = total / size;
        progress!("P1: writing {count} source files of {}", human(size));
        let src = scratch(root, "p1-src-")?;
        let mut names = Vec::new();
        let mut rng = rand::thread_rng();
        let mut buf = vec![0u8; size.min(8 * MIB) as usize];
        for i in 0..count {
            let name = format!("f{i:06}");
            let mut f = std::fs::File::create(src.path().join(&name))
                .with_context(|| format!("creating {name}"))?;
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                rng.fill_bytes(&mut buf[..n]);
                f.write_all(&buf[..n]).context("writing a source file")?;
                left -= n as u64;
            }
            names.push(name);
        }
        // Every side reads the sources from the page cache; flush them first so no side pays
        // for their writeback.
        sync()?;

        // Baseline and batches in ABBA order (mean of two each), then one put_blob per file.
        // Every measurement writes into its own new directory, kept until the end of this size.
        let batches = batches(&names, size);
        let mut scratch_dirs = Vec::new();
        let mut runs = Vec::new();
        // The first two runs only warm up (the first writes after the sources were created are
        // slower, whichever side does them); they are not counted.
        let steps = [
            "baseline",
            "put_blobs",
            "baseline",
            "put_blobs",
            "put_blobs",
            "baseline",
        ];
        for (k, step) in steps.into_iter().enumerate() {
            let dir = scratch(root, "p1-dst-")?;
            let took = if step == "baseline" {
                baseline(src.path(), &names, dir.path())?
            } else {
                let archive = Archive::open(dir.path(), "bench.invalid/log").context("archive")?;
                let (res, took) = timed(|| -> anyhow::Result<()> {
                    for batch in &batches {
                        // Each file is opened when the batch reads it and closed right after.
                        let files = batch
                            .iter()
                            .map(|name| (None, LazyFile::new(src.path().join(name))));
                        let puts = archive.put_blobs(files, u64::MAX)?;
                        anyhow::ensure!(puts.len() == batch.len(), "one result per file");
                    }
                    Ok(())
                });
                res.context("put_blobs")?;
                took
            };
            if k >= 2 {
                runs.push((step, took));
            }
            scratch_dirs.push(dir);
            sync()?;
        }

        let mean = |which: &str| -> Duration {
            let took: Vec<Duration> = runs
                .iter()
                .filter(|(step, _)| *step == which)
                .map(|(_, took)| *took)
                .collect();
            took.iter().sum::<Duration>() / took.len() as u32
        };
        let (base, batched) = (mean("baseline"), mean("put_blobs"));

        let single_dir = scratch(root, "p1-dst-")?;
        let archive = Archive::open(single_dir.path(), "bench.invalid/log").context("archive")?;
        let (res, single) = timed(|| -> anyhow::Result<()> {
            for name in &names {
                let f = std::fs::File::open(src.path().join(name))?;
                archive.put_blob(None, f, u64::MAX)?;
            }
            Ok(())
        });
        res.context("put_blob")?;
        drop(archive);
        drop((src, single_dir, scratch_dirs));
        progress!(
            "P1 {}: put_blobs {:.3}s ({} batches), put_blob per file {:.3}s, baseline {:.3}s; \
             runs in order: {}",
            human(size),
            batched.as_secs_f64(),
            batches.len(),
            single.as_secs_f64(),
            base.as_secs_f64(),
            runs.iter()
                .map(|(step, took)| format!("{step} {:.3}s", took.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let figure = format!("ingest {} as {count} x {} files", human(total), human(size));
        Row::ratio_goal(
            "P1",
            format!("{figure}, put_blobs, one batch per upload"),
            "s",
            batched.as_secs_f64(),
            base.as_secs_f64(),
            1.0,
            Better::Lower,
            BASELINE,
        )
        .emit();
        Row::ratio_goal(
            "P1",
            format!("{figure}, one put_blob per file"),
            "s",
            single.as_secs_f64(),
            base.as_secs_f64(),
            1.0,
            Better::Lower,
            BASELINE,
        )
        .emit();
        sync()?;
    }
    Ok(())
}

/// The baseline: `sha256sum` of the files in `src`, `cp` of them into `dst`, `sync -f`.
fn baseline(src: &Path, names: &[String], dst: &Path) -> anyhow::Result<Duration> {
    let script = "set -e; sha256sum -- \"$@\" >/dev/null; cp -- \"$@\" \"$DST\"/; sync -f \"$DST\"";
    let (status, took) = timed(|| {
        Command::new("sh")
            .current_dir(src)
            .env("DST", dst)
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(names)
            .status()
    });
    anyhow::ensure!(
        status.context("running the baseline")?.success(),
        "baseline failed"
    );
    Ok(took)
}

/// `sync` of everything (untimed, between measurements).
fn sync() -> anyhow::Result<()> {
    anyhow::ensure!(
        Command::new("sync").status().context("sync")?.success(),
        "sync failed"
    );
    Ok(())
}

/// `names` (files of `size` bytes each) cut into `put_blobs` batches of at most [`BATCH_BYTES`]
/// (at least one file each).
fn batches(names: &[String], size: u64) -> Vec<&[String]> {
    let per_batch = usize::try_from(BATCH_BYTES / size.max(1))
        .unwrap_or(usize::MAX)
        .max(1);
    names.chunks(per_batch).collect()
}

/// A file opened on its first read, so a batch of thousands of files holds one descriptor at a
/// time.
struct LazyFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl LazyFile {
    fn new(path: PathBuf) -> Self {
        LazyFile { path, file: None }
    }
}

impl Read for LazyFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(std::fs::File::open(&self.path)?),
        };
        file.read(buf)
    }
}
