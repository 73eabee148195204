//! `lockstep witness`: a transparency-log witness with its own key and state.
//!
//! State directory:
//! ```text
//! <state>/witness-key     Ed25519 seed (0600), generated on first run
//! <state>/witness.pub     the cosignature verifier key, for the policy's [[witnesses]]
//! <state>/state.json      pinned log key and the last checkpoint this witness cosigned
//! <state>/evidence/       conflicting checkpoints, kept when the witness refuses
//! ```
//!
//! Each round: fetch the latest checkpoint, check the log's signature (key pinned on first
//! contact or given with `--log-key`), and compare with the last cosigned checkpoint: the same
//! size with another root is a split view; a smaller size is a rollback; a larger size needs a
//! consistency proof that verifies. On any of these failures the witness refuses, writes both
//! notes (and the proof) to `evidence/` and exits 4. Otherwise it cosigns (C2SP
//! tlog-cosignature), records the new state, and posts the cosigned note to the coordinator.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use lockstep_archive::cosign::{self, WitnessKey};
use lockstep_archive::proof;
use serde::{Deserialize, Serialize};

use crate::http::Api;
use crate::verify::{self, b64, proof_hashes, write_atomic, EXIT_VERIFY};

/// Default seconds between rounds: checkpoints follow every decision, so a minute keeps the
/// gap between a decision and its witnessing short without loading the coordinator.
pub const DEFAULT_INTERVAL: u64 = 60;

#[derive(clap::Args)]
pub struct Args {
    /// State directory (key, last cosigned checkpoint, evidence). Created if missing.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// The witness's key name, used when the key is first generated.
    #[arg(long, default_value = "lockstep-witness")]
    pub name: String,
    /// The log's verifier key; without it the coordinator's announced key is pinned on first run.
    #[arg(long, value_name = "KEY", env = "LOCKSTEP_LOG_KEY")]
    pub log_key: Option<String>,
    /// One round, then exit (0 cosigned or nothing new; 4 refused; 1 error).
    #[arg(long)]
    pub once: bool,
    /// Seconds between rounds.
    #[arg(long, default_value_t = DEFAULT_INTERVAL)]
    pub interval: u64,
}

#[derive(Serialize, Deserialize)]
struct WitnessState {
    log_key: String,
    size: u64,
    /// The last cosigned checkpoint note (log signature only).
    note: Option<String>,
}

/// Why a round refused to cosign.
struct Refusal(String);

fn load_key(dir: &Path, name: &str) -> anyhow::Result<WitnessKey> {
    let path = dir.join("witness-key");
    let seed: [u8; 32] = match std::fs::read(&path) {
        Ok(b) => b.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!(
                "{} is {} bytes, expected a 32-byte Ed25519 seed",
                path.display(),
                b.len()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&seed)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            std::fs::write(dir.join("name"), name).context("writing the witness name")?;
            seed
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let name = std::fs::read_to_string(dir.join("name")).unwrap_or_else(|_| name.to_string());
    let key = WitnessKey::from_seed(name.trim(), seed)?;
    std::fs::write(dir.join("witness.pub"), format!("{}\n", key.verifier_key()))
        .context("writing witness.pub")?;
    Ok(key)
}

fn keep_evidence(dir: &Path, what: &str, files: &[(&str, &str)]) -> anyhow::Result<Vec<PathBuf>> {
    let ev = dir.join("evidence");
    std::fs::create_dir_all(&ev).with_context(|| format!("creating {}", ev.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let mut out = Vec::new();
    for (suffix, text) in files {
        let p = ev.join(format!("{stamp}-{what}-{suffix}"));
        write_atomic(&p, text.as_bytes())?;
        out.push(p);
    }
    Ok(out)
}

/// The note without any cosignature lines: the log's own signature only.
fn log_only(note: &str, origin: &str) -> anyhow::Result<String> {
    let (body, _) = note
        .rsplit_once("\n\n")
        .context("checkpoint has no signature block")?;
    let mut out = format!("{body}\n\n");
    for l in cosign::signature_lines(note)? {
        if l.name() == origin {
            out.push_str(&String::from_utf8_lossy(&l.to_bytes()));
        }
    }
    Ok(out)
}

async fn round(
    api: &Api,
    dir: &Path,
    key: &WitnessKey,
    given_log_key: Option<&str>,
) -> anyhow::Result<Result<String, Refusal>> {
    let state_path = dir.join("state.json");
    let state: Option<WitnessState> = match std::fs::read(&state_path) {
        Ok(b) => Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is corrupt; restore it from a backup",
                state_path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", state_path.display())),
    };
    let log_key = match (&state, given_log_key) {
        (Some(s), Some(g)) if s.log_key != g.trim() => bail!(
            "--log-key differs from the key pinned in {}; use a new state directory for another log",
            state_path.display()
        ),
        (Some(s), _) => s.log_key.clone(),
        (None, _) => verify::log_key(api, given_log_key).await?.0,
    };
    let served = String::from_utf8(api.get_bytes("/log/checkpoint").await?)
        .context("the checkpoint is not UTF-8")?;
    let info = match proof::verify_checkpoint(&served, &log_key) {
        Ok(i) => i,
        Err(e) => {
            let files = keep_evidence(dir, "bad-signature", &[("served.note", &served)])?;
            return Ok(Err(Refusal(format!(
                "the served checkpoint does not verify with the pinned log key: {e}; kept {}",
                files[0].display()
            ))));
        }
    };
    let note = log_only(&served, &info.origin)?;
    if let Some(prev_note) = state.as_ref().and_then(|s| s.note.clone()) {
        let prev = proof::verify_checkpoint(&prev_note, &log_key)
            .context("the state's last checkpoint no longer verifies")?;
        if prev.size == info.size && prev.root != info.root {
            let files = keep_evidence(
                dir,
                "split-view",
                &[("cosigned.note", &prev_note), ("conflicting.note", &note)],
            )?;
            return Ok(Err(Refusal(format!(
                "split view: the log signed two different checkpoints for size {} (root {} \
                 cosigned earlier, {} now); refusing to cosign; evidence kept in {} and {}",
                info.size,
                b64(&prev.root),
                b64(&info.root),
                files[0].display(),
                files[1].display()
            ))));
        }
        if info.size < prev.size {
            let files = keep_evidence(
                dir,
                "rollback",
                &[("cosigned.note", &prev_note), ("conflicting.note", &note)],
            )?;
            return Ok(Err(Refusal(format!(
                "rollback: the log now serves size {} but size {} was cosigned; refusing; \
                 evidence kept in {} and {}",
                info.size,
                prev.size,
                files[0].display(),
                files[1].display()
            ))));
        }
        if info.size > prev.size {
            let v: serde_json::Value = api
                .get_json(&format!(
                    "/api/v1/proof/consistency?old={}&new={}",
                    prev.size, info.size
                ))
                .await?;
            let p = proof_hashes(&v)?;
            if let Err(e) =
                proof::verify_consistency(prev.size, prev.root, info.size, info.root, &p)
            {
                let proof_text = serde_json::to_string_pretty(&v)?;
                let files = keep_evidence(
                    dir,
                    "inconsistent",
                    &[
                        ("cosigned.note", &prev_note),
                        ("conflicting.note", &note),
                        ("proof.json", &proof_text),
                    ],
                )?;
                return Ok(Err(Refusal(format!(
                    "the checkpoint of size {} is not consistent with the cosigned size {} ({e}); \
                     refusing to cosign; evidence kept in {}",
                    info.size,
                    prev.size,
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))));
            }
        }
    }
    let already = cosign::verify_cosignature(&served, &key.verifier_key()).is_ok();
    let unchanged = state
        .as_ref()
        .is_some_and(|s| s.size == info.size && s.note.is_some());
    if already && unchanged {
        return Ok(Ok(format!("size {} already cosigned", info.size)));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let cosigned = key.cosign(&note, now)?;
    write_atomic(
        &state_path,
        &serde_json::to_vec_pretty(&WitnessState {
            log_key: log_key.clone(),
            size: info.size,
            note: Some(note.clone()),
        })?,
    )?;
    let _: serde_json::Value = api
        .post_json(
            "/api/v1/log/cosignatures",
            &serde_json::json!({ "note": cosigned }),
        )
        .await
        .context("posting the cosignature to the coordinator")?;
    Ok(Ok(format!(
        "cosigned size {} root {}",
        info.size,
        b64(&info.root)
    )))
}

pub async fn run(api: &Api, args: Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.state)
        .with_context(|| format!("creating {}", args.state.display()))?;
    let key = load_key(&args.state, &args.name)?;
    eprintln!("witness key: {}", key.verifier_key());
    loop {
        match round(api, &args.state, &key, args.log_key.as_deref()).await {
            Ok(Ok(msg)) => {
                println!("{msg}");
                if args.once {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Ok(Err(Refusal(why))) => {
                eprintln!("lockstep witness: REFUSED: {why}");
                return Ok(ExitCode::from(EXIT_VERIFY));
            }
            Err(e) => {
                if args.once {
                    return Err(e);
                }
                eprintln!("lockstep witness: error (retrying): {e:#}");
            }
        }
        tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
    }
}
