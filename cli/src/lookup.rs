//! `lockstep lookup SHA256` (which records — packages, builders, developer uploads — reference
//! these bytes), `lockstep lookup --builder FPR` (what a key signed) and `lockstep keys history`
//! (which keys the policy trusted when, from the `policy` records in the log).

use std::process::ExitCode;

use anyhow::bail;

use crate::http::Api;

fn print_records(records: &[serde_json::Value]) {
    for r in records {
        println!(
            "  record {:<6} leaf {:<6} {:<17} {} {} {}  {}{}",
            r["record_id"],
            r["leaf_index"],
            r["kind"].as_str().unwrap_or(""),
            r["source"].as_str().unwrap_or(""),
            r["version"].as_str().unwrap_or(""),
            r["arch"].as_str().unwrap_or(""),
            r["created_at"].as_str().unwrap_or(""),
            r["signer"]
                .as_str()
                .map(|s| format!("  signed by {s}"))
                .unwrap_or_default()
        );
    }
}

pub async fn run(
    api: &Api,
    sha256: Option<String>,
    builder: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match (sha256, builder) {
        (Some(sha), None) => {
            let v: serde_json::Value = api.get_json(&format!("/api/v1/lookup/blob/{sha}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let records = v["records"].as_array().cloned().unwrap_or_default();
            println!(
                "{sha}: {} ({} record(s))",
                if v["stored"].as_bool() == Some(true) {
                    format!("stored, {} bytes", v["size"])
                } else {
                    "not stored".into()
                },
                records.len()
            );
            for r in &records {
                let names: Vec<String> = r["blobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b["sha256"].as_str() == Some(sha.as_str()))
                    .map(|b| {
                        format!(
                            "{} ({})",
                            b["name"].as_str().unwrap_or(""),
                            b["role"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                print_records(std::slice::from_ref(r));
                println!("      as {}", names.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        (None, Some(fpr)) => {
            let v: Vec<serde_json::Value> = api
                .get_json(&format!("/api/v1/lookup/signer/{fpr}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{fpr}: {} signed record(s)", v.len());
                print_records(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("give a SHA256 or --builder FINGERPRINT"),
    }
}

pub async fn history(api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    let v: Vec<serde_json::Value> = api.get_json("/api/v1/keys/history").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if v.is_empty() {
        println!("no policy has been recorded: no key was ever trusted");
    }
    for c in &v {
        let t = &c["trusted"];
        println!(
            "{}  (record {}, leaf {})  default threshold {}{}",
            c["at"].as_str().unwrap_or(""),
            c["record_id"],
            c["leaf_index"],
            t["default_threshold"],
            if t["require_witness"].as_bool() == Some(true) {
                ", witness required"
            } else {
                ""
            }
        );
        for b in t["builders"].as_array().into_iter().flatten() {
            println!(
                "    builder   {}  {}",
                b["key"].as_str().unwrap_or(""),
                b["name"].as_str().unwrap_or("")
            );
        }
        for d in t["developers"].as_array().into_iter().flatten() {
            println!("    developer {}", d.as_str().unwrap_or(""));
        }
        for w in t["witnesses"].as_array().into_iter().flatten() {
            println!(
                "    witness   {}  {}",
                w["key"].as_str().unwrap_or(""),
                w["name"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
