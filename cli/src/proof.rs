//! `lockstep proof`: fetch inclusion and consistency proofs from the coordinator and verify them
//! locally against the signed checkpoint (verification: `lockstep_archive::proof`).
//!
//! - `proof inclusion RECORD_ID` or `proof inclusion --leaf INDEX [--size N]`: the leaf data comes
//!   from the served entry tile, its hash is checked into the root of the signed checkpoint (or,
//!   with `--size N` below it, into the root recomputed from the served leaves, which is itself
//!   proved consistent with the signed checkpoint).
//! - `proof consistency OLD NEW`: OLD and NEW are sizes or saved checkpoint files.
//!
//! Printed as hex (or `--json`). Exit 4 when a proof does not verify.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use lockstep_archive::proof::{self, CheckpointInfo};

use crate::http::Api;
use crate::verify::{self, b64, proof_hashes, Failure, EXIT_VERIFY};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Prove that a record (or leaf) is in the log.
    Inclusion {
        /// Record id (as `lockstep lookup` and the API show it).
        record_id: Option<i64>,
        /// Prove this leaf index instead of a record.
        #[arg(long, value_name = "INDEX", conflicts_with = "record_id")]
        leaf: Option<u64>,
        /// Tree size to prove against (default: the latest signed checkpoint).
        #[arg(long, value_name = "N")]
        size: Option<u64>,
        #[arg(long, value_name = "KEY", env = "LOCKSTEP_LOG_KEY")]
        log_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Prove that the tree of size NEW extends the tree of size OLD.
    Consistency {
        /// A size, or a checkpoint file saved with `lockstep verify --save`.
        old: String,
        /// A size, or a checkpoint file.
        new: String,
        #[arg(long, value_name = "KEY", env = "LOCKSTEP_LOG_KEY")]
        log_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// A tree size with its root and where the root came from.
struct Sized {
    size: u64,
    root: [u8; 32],
    from: String,
}

/// The root of size `size`: the signed checkpoint's if the sizes match, else recomputed from the
/// served leaves and proved consistent with the signed checkpoint.
async fn root_at(api: &Api, cp: &CheckpointInfo, size: u64) -> anyhow::Result<Sized> {
    if size == cp.size {
        return Ok(Sized {
            size,
            root: cp.root,
            from: "the signed checkpoint".into(),
        });
    }
    if size > cp.size {
        bail!(
            "size {size} is beyond the latest signed checkpoint (size {}); wait for a newer one",
            cp.size
        );
    }
    let leaves = verify::fetch_leaves(api, size).await?;
    let root = verify::root_of(&leaves, size);
    let v: serde_json::Value = api
        .get_json(&format!(
            "/api/v1/proof/consistency?old={size}&new={}",
            cp.size
        ))
        .await?;
    proof::verify_consistency(size, root, cp.size, cp.root, &proof_hashes(&v)?).map_err(|e| {
        Failure(format!(
            "the served leaves up to {size} are not consistent with the signed checkpoint of size {}: {e}",
            cp.size
        ))
    })?;
    Ok(Sized {
        size,
        root,
        from: format!(
            "recomputed from the served leaves, consistent with the signed checkpoint of size {}",
            cp.size
        ),
    })
}

async fn size_arg(api: &Api, key: &str, cp: &CheckpointInfo, arg: &str) -> anyhow::Result<Sized> {
    if let Ok(n) = arg.parse::<u64>() {
        return root_at(api, cp, n).await;
    }
    let text = std::fs::read_to_string(Path::new(arg))
        .with_context(|| format!("{arg:?} is neither a size nor a readable checkpoint file"))?;
    let info = proof::verify_checkpoint(&text, key)
        .map_err(|e| Failure(format!("checkpoint file {arg} does not verify: {e}")))?;
    Ok(Sized {
        size: info.size,
        root: info.root,
        from: format!("checkpoint file {arg}"),
    })
}

pub async fn run(api: &Api, cmd: Cmd) -> anyhow::Result<ExitCode> {
    match inner(api, cmd).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.downcast_ref::<Failure>().is_some() => {
            eprintln!("lockstep: proof FAILED: {e:#}");
            Ok(ExitCode::from(EXIT_VERIFY))
        }
        Err(e) => Err(e),
    }
}

async fn inner(api: &Api, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Inclusion {
            record_id,
            leaf,
            size,
            log_key,
            json,
        } => {
            let (key, _) = verify::log_key(api, log_key.as_deref()).await?;
            let (_, cp) = verify::checkpoint(api, &key).await?;
            let (index, record) = match (record_id, leaf) {
                (Some(id), None) => {
                    let r: serde_json::Value =
                        api.get_json(&format!("/api/v1/records/{id}")).await?;
                    let idx = r["leaf_index"]
                        .as_u64()
                        .context("the record answer has no leaf_index")?;
                    (idx, Some(r))
                }
                (None, Some(i)) => (i, None),
                _ => bail!("give a RECORD_ID or --leaf INDEX"),
            };
            let target = root_at(api, &cp, size.unwrap_or(cp.size)).await?;
            if index >= target.size {
                bail!(
                    "leaf {index} is not in a tree of size {}; wait for a newer checkpoint",
                    target.size
                );
            }
            // The leaf data from the served entry tile, not from the record answer.
            let leaves = verify::fetch_leaves(api, index + 1).await?;
            let data = &leaves[usize::try_from(index)?];
            if let Some(r) = &record {
                let leaf: serde_json::Value = serde_json::from_slice(data)
                    .map_err(|e| Failure(format!("leaf {index} is not JSON: {e}")))?;
                for f in ["kind", "source", "version", "arch"] {
                    if leaf[f] != r[f] {
                        return Err(Failure(format!(
                            "leaf {index} says {f} = {} but the record says {}",
                            leaf[f], r[f]
                        ))
                        .into());
                    }
                }
            }
            let lh = proof::leaf_hash(data);
            let v: serde_json::Value = api
                .get_json(&format!(
                    "/api/v1/proof/inclusion?index={index}&size={}",
                    target.size
                ))
                .await?;
            let p = proof_hashes(&v)?;
            proof::verify_inclusion(lh, index, target.size, &p, target.root).map_err(|e| {
                Failure(format!(
                    "inclusion proof for leaf {index} in size {} does not verify: {e}",
                    target.size
                ))
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "verified": true,
                        "record_id": record_id,
                        "leaf_index": index,
                        "tree_size": target.size,
                        "root": hex::encode(target.root),
                        "root_from": target.from,
                        "leaf_hash": hex::encode(lh),
                        "leaf": String::from_utf8_lossy(data),
                        "proof": p.iter().map(hex::encode).collect::<Vec<_>>(),
                    }))?
                );
            } else {
                println!("inclusion proof verified");
                if let Some(id) = record_id {
                    println!("record     {id}");
                }
                println!("leaf       {index}");
                println!("leaf hash  {}", hex::encode(lh));
                println!("tree size  {}", target.size);
                println!("root       {} ({})", hex::encode(target.root), target.from);
                println!("root b64   {}", b64(&target.root));
                for (i, h) in p.iter().enumerate() {
                    println!("proof[{i:>2}]  {}", hex::encode(h));
                }
            }
            Ok(())
        }
        Cmd::Consistency {
            old,
            new,
            log_key,
            json,
        } => {
            let (key, _) = verify::log_key(api, log_key.as_deref()).await?;
            let (_, cp) = verify::checkpoint(api, &key).await?;
            let o = size_arg(api, &key, &cp, &old).await?;
            let n = size_arg(api, &key, &cp, &new).await?;
            if o.size > n.size {
                bail!("OLD (size {}) is larger than NEW (size {})", o.size, n.size);
            }
            let v: serde_json::Value = api
                .get_json(&format!(
                    "/api/v1/proof/consistency?old={}&new={}",
                    o.size, n.size
                ))
                .await?;
            let p = proof_hashes(&v)?;
            proof::verify_consistency(o.size, o.root, n.size, n.root, &p).map_err(|e| {
                Failure(format!(
                    "consistency proof from size {} to {} does not verify: {e}",
                    o.size, n.size
                ))
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "verified": true,
                        "old": {"size": o.size, "root": hex::encode(o.root), "from": o.from},
                        "new": {"size": n.size, "root": hex::encode(n.root), "from": n.from},
                        "proof": p.iter().map(hex::encode).collect::<Vec<_>>(),
                    }))?
                );
            } else {
                println!("consistency proof verified");
                println!(
                    "old  size {} root {} ({})",
                    o.size,
                    hex::encode(o.root),
                    o.from
                );
                println!(
                    "new  size {} root {} ({})",
                    n.size,
                    hex::encode(n.root),
                    n.from
                );
                for (i, h) in p.iter().enumerate() {
                    println!("proof[{i:>2}]  {}", hex::encode(h));
                }
            }
            Ok(())
        }
    }
}
