//! `lockstep verify`: the auditor's check.
//!
//! Remote mode (default) needs no trust in the coordinator for the log part: it fetches the
//! latest checkpoint, checks its signature with the verifier key (`--log-key`, or the one the
//! coordinator announces — pin it!), downloads every leaf from the C2SP entry tiles, recomputes
//! the tree root (RFC 6962, written here) and compares it with the checkpoint. With `--since FILE`
//! it checks that the new checkpoint extends one saved earlier: by a consistency proof from the
//! coordinator and by recomputing the old root from the same leaves. `--save FILE` stores the new
//! checkpoint for next time (only when everything verified). Then it asks the coordinator to
//! re-hash every blob and re-check every record (`POST /api/v1/audit`; skip with `--no-audit`).
//!
//! Local mode (`--data-dir DIR`) opens the archive read-only on disk and runs the full audit
//! itself: blobs, records, leaves, stored hashes, checkpoints, immutability triggers.
//!
//! Exit codes: 0 all is well; 4 verification failed (every problem printed); 1 could not check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use base64::prelude::*;
use lockstep_archive::proof::{self, CheckpointInfo, EMPTY_ROOT};

use crate::http::Api;

/// Exit code when a check fails (documented in main.rs).
pub const EXIT_VERIFY: u8 = 4;

/// Leaves per C2SP tile.
const TILE_WIDTH: u64 = 256;

#[derive(clap::Args)]
pub struct Args {
    /// The log's checkpoint verifier key (`name+hash+key`, as `lockstep log-info` prints it).
    /// Without it the key the coordinator announces is used, which only proves self-consistency.
    #[arg(long, value_name = "KEY", env = "LOCKSTEP_LOG_KEY")]
    pub log_key: Option<String>,
    /// A checkpoint saved earlier (`--save`): the new one must extend it.
    #[arg(long, value_name = "FILE")]
    pub since: Option<PathBuf>,
    /// Store the verified new checkpoint here (written only when every check passed).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Audit an archive on local disk (read-only): the coordinator's data dir or its archive dir.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Do not ask the coordinator to re-hash its blobs (log checks only).
    #[arg(long)]
    pub no_audit: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// RFC 6962 tree built leaf by leaf (the right edge of complete subtrees).
#[derive(Default)]
pub struct Tree {
    levels: Vec<Option<[u8; 32]>>,
    size: u64,
}

impl Tree {
    pub fn push(&mut self, leaf_hash: [u8; 32]) {
        let mut h = leaf_hash;
        let mut level = 0;
        while (self.size >> level) & 1 == 1 {
            let left = self.levels[level]
                .take()
                .expect("a set bit in the size means a pending subtree at that level");
            h = proof::node_hash(left, h);
            level += 1;
        }
        if self.levels.len() <= level {
            self.levels.resize(level + 1, None);
        }
        self.levels[level] = Some(h);
        self.size += 1;
    }

    pub fn root(&self) -> [u8; 32] {
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

/// C2SP tile index: groups of three digits, all but the last prefixed "x".
fn tile_index(mut n: u64) -> String {
    let mut s = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        s = format!("x{:03}/{s}", n % 1000);
    }
    s
}

/// The log's verifier key: the one given, else the coordinator's announcement.
pub async fn log_key(api: &Api, given: Option<&str>) -> anyhow::Result<(String, bool)> {
    if let Some(k) = given {
        return Ok((k.trim().to_string(), true));
    }
    let info: serde_json::Value = api.get_json("/api/v1/log").await?;
    let k = info["verifier_key"]
        .as_str()
        .context("the coordinator's /api/v1/log has no verifier_key")?;
    Ok((k.to_string(), false))
}

/// The latest checkpoint, verified.
pub async fn checkpoint(api: &Api, key: &str) -> anyhow::Result<(String, CheckpointInfo)> {
    let note = String::from_utf8(api.get_bytes("/log/checkpoint").await?)
        .context("the checkpoint is not UTF-8")?;
    let info = proof::verify_checkpoint(&note, key)
        .map_err(|e| Failure(format!("the latest checkpoint does not verify: {e}")))?;
    Ok((note, info))
}

/// A verification failure (exit 4), as opposed to not being able to check (exit 1).
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// Downloads the first `size` leaves from the entry tiles.
pub async fn fetch_leaves(api: &Api, size: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut n = 0u64;
    while n * TILE_WIDTH < size {
        let width = (size - n * TILE_WIDTH).min(TILE_WIDTH);
        let path = if width == TILE_WIDTH {
            format!("/log/tile/entries/{}", tile_index(n))
        } else {
            format!("/log/tile/entries/{}.p/{width}", tile_index(n))
        };
        let bytes = api.get_bytes(&path).await?;
        let mut rest = &bytes[..];
        let mut count = 0u64;
        while !rest.is_empty() {
            if rest.len() < 2 {
                return Err(Failure(format!("entry bundle {path} is truncated")).into());
            }
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            if rest.len() < 2 + len {
                return Err(Failure(format!("entry bundle {path} is truncated")).into());
            }
            out.push(rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
            count += 1;
        }
        if count != width {
            return Err(Failure(format!(
                "entry bundle {path} holds {count} entries, expected {width}"
            ))
            .into());
        }
        n += 1;
    }
    Ok(out)
}

/// Root of the first `size` of `leaves`.
pub fn root_of(leaves: &[Vec<u8>], size: u64) -> [u8; 32] {
    let mut t = Tree::default();
    for l in leaves
        .iter()
        .take(usize::try_from(size).unwrap_or(usize::MAX))
    {
        t.push(proof::leaf_hash(l));
    }
    t.root()
}

pub fn b64(h: &[u8; 32]) -> String {
    BASE64_STANDARD.encode(h)
}

/// Parses a `{"proof": ["hex", …]}` answer.
pub fn proof_hashes(v: &serde_json::Value) -> anyhow::Result<Vec<[u8; 32]>> {
    v["proof"]
        .as_array()
        .context("the answer has no proof array")?
        .iter()
        .map(|h| {
            let s = h.as_str().context("a proof hash is not a string")?;
            let bytes = hex::decode(s).with_context(|| format!("proof hash {s:?} is not hex"))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| anyhow::anyhow!("proof hash {s:?} is not 32 bytes"))
        })
        .collect()
}

pub async fn run(api: &Api, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.data_dir {
        if args.since.is_some() || args.save.is_some() {
            bail!(
                "--since and --save check a coordinator's served log; use them without --data-dir"
            );
        }
        return local(dir, args.log_key.as_deref(), args.json);
    }
    let mut ok_lines: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let (key, pinned) = log_key(api, args.log_key.as_deref()).await?;
    if !pinned {
        eprintln!(
            "lockstep: warning: using the verifier key the coordinator announces ({key}); pass \
             --log-key to check against a key you pinned"
        );
    }
    let (note, info) = match checkpoint(api, &key).await {
        Ok(x) => x,
        Err(e) => return finish(args.json, &ok_lines, &[format!("{e:#}")], None),
    };
    ok_lines.push(format!(
        "checkpoint signature verified: {} size {} root {}",
        info.origin,
        info.size,
        b64(&info.root)
    ));
    let leaves = match fetch_leaves(api, info.size).await {
        Ok(l) => l,
        Err(e) if e.downcast_ref::<Failure>().is_some() => {
            problems.push(format!("{e:#}"));
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    if problems.is_empty() {
        let root = root_of(&leaves, info.size);
        if root == info.root {
            ok_lines.push(format!(
                "tree recomputed from {} served leaves matches the checkpoint root",
                leaves.len()
            ));
        } else {
            problems.push(format!(
                "the {} leaves the coordinator serves hash to root {} but the signed checkpoint \
                 says {}: the log was rewritten or the tiles are wrong",
                leaves.len(),
                b64(&root),
                b64(&info.root)
            ));
        }
    }
    if let Some(since) = &args.since {
        match check_since(api, &key, since, &info, &leaves).await {
            Ok(line) => ok_lines.push(line),
            Err(e) if e.downcast_ref::<Failure>().is_some() => problems.push(format!("{e:#}")),
            Err(e) => return Err(e),
        }
    }
    let mut audit = None;
    if !args.no_audit {
        let v: serde_json::Value = api
            .post_json("/api/v1/audit", &serde_json::json!({}))
            .await
            .context("asking the coordinator to audit its archive (skip with --no-audit)")?;
        let server_problems: Vec<String> = v["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(|s| format!("coordinator audit: {s}")))
                    .collect()
            })
            .unwrap_or_default();
        if server_problems.is_empty() {
            ok_lines.push(format!(
                "coordinator audit: {} blobs re-hashed, {} leaves re-checked, no problems",
                v["blobs_checked"], v["leaves_checked"]
            ));
        }
        problems.extend(server_problems);
        if let Some(alarms) = v["alarms"].as_array().filter(|a| !a.is_empty()) {
            eprintln!(
                "lockstep: note: the archive has recorded {} alarm(s) (refused overwrites or \
                 collisions); newest: {}",
                alarms.len(),
                alarms.last().map_or(String::new(), |a| a["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string())
            );
        }
        audit = Some(v);
    }
    if problems.is_empty() {
        if let Some(save) = &args.save {
            write_atomic(save, note.as_bytes())?;
            ok_lines.push(format!("checkpoint saved to {}", save.display()));
        }
    }
    finish(args.json, &ok_lines, &problems, audit)
}

async fn check_since(
    api: &Api,
    key: &str,
    since: &Path,
    new: &CheckpointInfo,
    leaves: &[Vec<u8>],
) -> anyhow::Result<String> {
    let old_note = std::fs::read_to_string(since)
        .with_context(|| format!("reading the saved checkpoint {}", since.display()))?;
    let old = proof::verify_checkpoint(&old_note, key).map_err(|e| {
        Failure(format!(
            "the saved checkpoint {} does not verify with the log key: {e}",
            since.display()
        ))
    })?;
    if old.size > new.size {
        return Err(Failure(format!(
            "the log shrank: the saved checkpoint has size {} but the latest has size {}",
            old.size, new.size
        ))
        .into());
    }
    if old.size == new.size && old.root != new.root {
        return Err(Failure(format!(
            "split view: two signed checkpoints for size {} with different roots ({} saved, {} now)",
            old.size,
            b64(&old.root),
            b64(&new.root)
        ))
        .into());
    }
    let v: serde_json::Value = api
        .get_json(&format!(
            "/api/v1/proof/consistency?old={}&new={}",
            old.size, new.size
        ))
        .await?;
    let p = proof_hashes(&v)?;
    proof::verify_consistency(old.size, old.root, new.size, new.root, &p).map_err(|e| {
        Failure(format!(
            "the latest checkpoint (size {}) is not consistent with the saved one (size {}): {e}",
            new.size, old.size
        ))
    })?;
    if leaves.len() as u64 >= old.size {
        let recomputed = root_of(leaves, old.size);
        if recomputed != old.root {
            return Err(Failure(format!(
                "the served leaves recompute the saved size {} to root {} but the saved \
                 checkpoint says {}: earlier entries were rewritten",
                old.size,
                b64(&recomputed),
                b64(&old.root)
            ))
            .into());
        }
    }
    Ok(format!(
        "consistent with the saved checkpoint {} (size {} → {}, proof of {} hashes)",
        since.display(),
        old.size,
        new.size,
        p.len()
    ))
}

fn local(dir: &Path, key: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let report = lockstep_archive::verify_dir(dir, key)
        .with_context(|| format!("auditing the archive in {}", dir.display()))?;
    let ok = vec![format!(
        "{} blobs re-hashed and {} leaves re-checked in {} in {:.2}s",
        report.blobs_checked,
        report.leaves_checked,
        dir.display(),
        started.elapsed().as_secs_f64()
    )];
    let v = serde_json::to_value(&report)?;
    finish(json, &ok, &report.problems, Some(v))
}

fn finish(
    json: bool,
    ok: &[String],
    problems: &[String],
    audit: Option<serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": problems.is_empty(),
                "checked": ok,
                "problems": problems,
                "audit": audit,
            }))?
        );
    } else {
        for l in ok {
            println!("ok: {l}");
        }
        for p in problems {
            println!("FAIL: {p}");
        }
        if problems.is_empty() {
            println!("verified: all is well");
        } else {
            println!("verification FAILED: {} problem(s)", problems.len());
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VERIFY)
    })
}

/// Writes `bytes` to `path` via a temp file, fsync and rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Some(d) = dir {
        std::fs::File::open(d)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsyncing {}", d.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_root_matches_the_archive_frontier_definition() {
        // Root of [a] is the leaf hash; of [a, b] the node hash; empty is EMPTY_ROOT.
        let a = proof::leaf_hash(b"a");
        let b = proof::leaf_hash(b"b");
        let c = proof::leaf_hash(b"c");
        let mut t = Tree::default();
        assert_eq!(t.root(), EMPTY_ROOT);
        t.push(a);
        assert_eq!(t.root(), a);
        t.push(b);
        assert_eq!(t.root(), proof::node_hash(a, b));
        t.push(c);
        assert_eq!(t.root(), proof::node_hash(proof::node_hash(a, b), c));
        assert_eq!(tile_index(1_234_067), "x001/x234/067");
        assert_eq!(tile_index(5), "005");
    }
}
