//! P1: archive ingest. The same files go through `Archive::put_blob` (hash while streaming, fsync
//! the file, link under its digest, fsync the directory, register in SQLite, read back and
//! re-hash) and through the coreutils baseline `sha256sum FILES; cp FILES DST/; sync -f DST`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use lockstep_archive::Archive;
use rand::RngCore;

use crate::row::{Better, Row};
use crate::util::{progress, scratch, timed};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

const BASELINE: &str =
    "`sha256sum` of the files, then `cp` of the files into an empty directory on \
     the same filesystem, then one `sync -f` of that filesystem (put_blob instead fsyncs every \
     blob, its directory and the SQLite commit)";

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
    for (size, total) in plan(quick) {
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
        // Both sides read the sources from the page cache; flush them first so neither pays
        // for the other's writeback.
        Command::new("sync").status().context("sync")?;

        // Baseline.
        let dst = scratch(root, "p1-cp-")?;
        let script =
            "set -e; sha256sum -- \"$@\" >/dev/null; cp -- \"$@\" \"$DST\"/; sync -f \"$DST\"";
        let (status, base) = timed(|| {
            Command::new("sh")
                .current_dir(src.path())
                .env("DST", dst.path())
                .arg("-c")
                .arg(script)
                .arg("sh")
                .args(&names)
                .status()
        });
        anyhow::ensure!(
            status.context("running the baseline")?.success(),
            "baseline failed"
        );
        drop(dst);

        // Lockstep.
        let arch_dir = scratch(root, "p1-archive-")?;
        let archive = Archive::open(arch_dir.path(), "bench.invalid/log").context("archive")?;
        let (res, ours) = timed(|| -> anyhow::Result<()> {
            for name in &names {
                let f = std::fs::File::open(src.path().join(name))?;
                archive.put_blob(None, f, u64::MAX)?;
            }
            Ok(())
        });
        res.context("put_blob")?;
        drop(archive);
        drop(arch_dir);
        progress!(
            "P1 {}: put_blob {:.2}s, baseline {:.2}s",
            human(size),
            ours.as_secs_f64(),
            base.as_secs_f64()
        );
        Row::ratio_goal(
            "P1",
            format!("ingest {} as {count} x {} files", human(total), human(size)),
            "s",
            ours.as_secs_f64(),
            base.as_secs_f64(),
            1.0,
            Better::Lower,
            BASELINE,
        )
        .emit();
    }
    Ok(())
}
