//! `lockstep upload FILE.changes`: send a developer-clearsigned `.changes` (as `debsign` makes
//! it) with the files it lists. Every file is checked against the `.changes` checksums locally
//! first, then uploaded as a blob; then the coordinator is asked to verify the signature and
//! archive the upload (`POST /api/v1/uploads`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use lockstep_proto::digest::{hash_file, Sha256Digest};

use crate::http::{Api, Upload};

/// (name, sha256, size) of every file in the `.changes`' Checksums-Sha256 field.
fn listed_files(text: &str) -> anyhow::Result<Vec<(String, Sha256Digest, u64)>> {
    let body = lockstep_proto::dsc::strip_cleartext(text);
    let mut out = Vec::new();
    let mut inside = false;
    for line in body.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if inside && !line.trim().is_empty() {
                let parts: Vec<&str> = line.split_whitespace().collect();
                let [sum, size, name] = parts[..] else {
                    bail!("bad Checksums-Sha256 line {line:?}");
                };
                lockstep_proto::dsc::check_file_name(name)
                    .map_err(|e| anyhow::anyhow!("file name {name:?} in the .changes: {e}"))?;
                out.push((
                    name.to_string(),
                    sum.parse()
                        .map_err(|e| anyhow::anyhow!("checksum of {name}: {e}"))?,
                    size.parse().with_context(|| format!("size of {name}"))?,
                ));
            }
            continue;
        }
        inside = line
            .split_once(':')
            .is_some_and(|(k, _)| k.eq_ignore_ascii_case("Checksums-Sha256"));
    }
    if out.is_empty() {
        bail!("the .changes lists no files under Checksums-Sha256");
    }
    Ok(out)
}

pub async fn run(api: &Api, changes: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(changes).with_context(|| format!("reading {}", changes.display()))?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{} is not UTF-8 text", changes.display()))?;
    if !text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        bail!(
            "{} is not clearsigned; sign it first (debsign {})",
            changes.display(),
            changes.display()
        );
    }
    let files = listed_files(text)?;
    let dir = changes.parent().unwrap_or(Path::new("."));
    for (name, sha, size) in &files {
        let p = dir.join(name);
        let (d, n) = hash_file(&p).with_context(|| {
            format!(
                "{} lists {name}, which is missing next to it",
                changes.display()
            )
        })?;
        if d != *sha || n != *size {
            bail!(
                "{name}: SHA-256 {d} ({n} bytes) does not match the .changes' {sha} ({size} bytes); \
                 rebuild or re-sign the upload"
            );
        }
    }
    // The listed files and the .changes itself, in one batch: stored all together or not at all.
    let digest = Sha256Digest::of(&bytes);
    let mut blobs: Vec<(Sha256Digest, Upload)> = files
        .iter()
        .map(|(name, sha, _)| (*sha, Upload::File(dir.join(name))))
        .collect();
    blobs.push((digest, Upload::Bytes(bytes)));
    api.put_blobs(blobs)
        .await
        .context("uploading the .changes and its files")?;
    let v: serde_json::Value = api
        .post_json(
            "/api/v1/uploads",
            &serde_json::json!({ "changes_sha256": digest }),
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "archived {} {} signed by {} ({} file(s))",
            v["source"].as_str().unwrap_or(""),
            v["version"].as_str().unwrap_or(""),
            v["signer"].as_str().unwrap_or(""),
            files.len()
        );
        for r in v["records"].as_array().into_iter().flatten() {
            println!(
                "  {:<8} record {} leaf {}{} — package state {}",
                r["arch"].as_str().unwrap_or(""),
                r["record_id"],
                r["leaf_index"],
                if r["created"].as_bool() == Some(false) {
                    " (already archived)"
                } else {
                    ""
                },
                r["state"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sha256_list_only() {
        let text = "Source: hello\nChecksums-Sha1:\n aaaa 1 x.deb\nChecksums-Sha256:\n \
                    0000000000000000000000000000000000000000000000000000000000000000 10 hello_1_amd64.deb\n\
                    Files:\n d41d 10 misc optional hello_1_amd64.deb\n";
        let f = listed_files(text).expect("parses");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, "hello_1_amd64.deb");
        assert_eq!(f[0].2, 10);
        assert!(listed_files("Source: x\n").is_err());
    }
}
