//! `lockstep diff SOURCE VERSION ARCH`: which builders produced which bytes, and inside differing
//! `.deb`s which members, files and control fields differ (`GET /api/v1/diff/...`).

use serde_json::Value;

use crate::http::Api;

/// Fetches the diff and prints it (as JSON with `json`). Returns whether every artifact agreed.
pub async fn run(
    api: &Api,
    source: &str,
    version: &str,
    arch: &str,
    json: bool,
) -> anyhow::Result<bool> {
    let path = format!(
        "/api/v1/diff/{}/{}/{}",
        escape(source),
        escape(version),
        escape(arch)
    );
    let report: Value = api.get_json(&path).await?;
    let artifacts = report["artifacts"].as_array().cloned().unwrap_or_default();
    let all_agree = artifacts.iter().all(|a| a["agree"].as_bool() == Some(true));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(all_agree);
    }
    println!("{source} {version} {arch}");
    for a in &artifacts {
        let name = a["name"].as_str().unwrap_or("?");
        let variants = a["variants"].as_array().cloned().unwrap_or_default();
        if a["agree"].as_bool() == Some(true) {
            println!(
                "  {name}: all {} builder(s) agree",
                count_builders(&variants)
            );
        } else {
            println!("  {name}: {} different contents", variants.len());
        }
        for v in &variants {
            let who: Vec<String> = v["builders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| match b["name"].as_str() {
                    Some(n) => format!("{n} ({})", short(b["fingerprint"].as_str().unwrap_or(""))),
                    None => format!("{} (untrusted)", b["fingerprint"].as_str().unwrap_or("")),
                })
                .collect();
            println!(
                "    {}  {:>10} bytes  by {}",
                v["sha256"].as_str().unwrap_or(""),
                v["size"],
                who.join(", ")
            );
        }
        for c in a["comparisons"].as_array().into_iter().flatten() {
            print_comparison(c);
        }
    }
    Ok(all_agree)
}

fn print_comparison(c: &Value) {
    let a = short(c["a"].as_str().unwrap_or(""));
    let b = short(c["b"].as_str().unwrap_or(""));
    println!("    {a} vs {b}:");
    if let Some(e) = c["error"].as_str() {
        println!("      not compared in detail: {e}");
    }
    for m in c["members"].as_array().into_iter().flatten() {
        println!(
            "      member {}: {} vs {}",
            m["name"].as_str().unwrap_or("?"),
            side(&m["a"]),
            side(&m["b"])
        );
    }
    for f in c["control_fields"].as_array().into_iter().flatten() {
        println!(
            "      control field {}: {} vs {}",
            f["field"].as_str().unwrap_or("?"),
            f["a"],
            f["b"]
        );
    }
    for f in c["files"].as_array().into_iter().flatten() {
        println!(
            "      {} file {:?}: {} vs {}",
            f["member"].as_str().unwrap_or("?"),
            f["path"].as_str().unwrap_or("?"),
            entry(&f["a"]),
            entry(&f["b"])
        );
    }
    for n in c["notes"].as_array().into_iter().flatten() {
        println!("      note: {}", n.as_str().unwrap_or(""));
    }
    if let Some(r) = c["diffoscope_report"].as_str() {
        println!("      diffoscope report: blob {r} (GET /api/v1/blobs/{r})");
    }
}

fn side(m: &Value) -> String {
    if m.is_null() {
        return "absent".into();
    }
    format!(
        "{} bytes {}",
        m["size"],
        short(m["sha256"].as_str().unwrap_or(""))
    )
}

fn entry(f: &Value) -> String {
    if f.is_null() {
        return "absent".into();
    }
    let mut s = format!(
        "{} {} {} bytes",
        f["kind"].as_str().unwrap_or("?"),
        f["mode"].as_str().unwrap_or("?"),
        f["size"]
    );
    if let Some(h) = f["sha256"].as_str() {
        s.push_str(&format!(" sha256 {}", short(h)));
    }
    if let Some(t) = f["link_target"].as_str() {
        s.push_str(&format!(" -> {t:?}"));
    }
    s
}

fn count_builders(variants: &[Value]) -> usize {
    variants
        .iter()
        .map(|v| v["builders"].as_array().map_or(0, |b| b.len()))
        .sum()
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

/// Percent-encodes what may not appear raw in a path segment (`+`, `:`, `~` in versions are fine
/// for axum except `+`, which some proxies turn into a space).
fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace('+', "%2B")
        .replace('/', "%2F")
}
