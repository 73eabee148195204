//! `lockstep enqueue --suite` and `lockstep summary`: checking a whole distribution release.

use std::process::ExitCode;

use serde_json::json;

use crate::http::Api;

/// Enqueues the sources of a suite (the coordinator works through them in the background).
pub async fn enqueue_suite(
    api: &Api,
    suite: &str,
    section: Option<&str>,
    limit: Option<usize>,
    since: Option<&str>,
    rebuild: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(d) = since {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|e| anyhow::anyhow!("--since {d:?}: expected a date like 2025-05-20 ({e})"))?;
    }
    let v: serde_json::Value = api
        .post_json(
            "/api/v1/jobs/suite",
            &json!({ "suite": suite, "section": section, "limit": limit, "since": since, "rebuild": rebuild }),
        )
        .await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let n = v["accepted"].as_u64().unwrap_or(0);
        match since {
            None => println!(
                "{n} source package(s) of {suite}{} accepted; they are fetched and enqueued in the background",
                section.map(|s| format!(" (section {s})")).unwrap_or_default()
            ),
            Some(d) => println!(
                "{n} candidate source package(s) of {suite}{}; those uploaded since {d}{} are enqueued in the background",
                section.map(|s| format!(" (section {s})")).unwrap_or_default(),
                limit.map(|l| format!(", at most {l},")).unwrap_or_default()
            ),
        }
        println!("follow with `lockstep status` and `lockstep summary`");
    }
    Ok(ExitCode::SUCCESS)
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Prints how much of what was checked reproduces the distribution's binaries.
pub async fn summary(api: &Api, as_json: bool) -> anyhow::Result<ExitCode> {
    let rows: Vec<serde_json::Value> = api.get_json("/api/v1/summary").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<6} {:>8} {:>10} {:>9} {:>9} {:>11} {:>7} {:>6} {:>8}",
        "suite",
        "arch",
        "packages",
        "reproduces",
        "differs",
        "disagree",
        "no-official",
        "pending",
        "failed",
        "repro %"
    );
    for r in &rows {
        let pct = r["reproducible_percent"]
            .as_f64()
            .map_or("-".to_string(), |p| format!("{p:.1}"));
        println!(
            "{:<20} {:<6} {:>8} {:>10} {:>9} {:>9} {:>11} {:>7} {:>6} {:>8}",
            r["suite"].as_str().unwrap_or(""),
            r["arch"].as_str().unwrap_or(""),
            n(&r["packages"]),
            n(&r["reproduces"]),
            n(&r["official_differs"]),
            n(&r["builders_disagree"]),
            n(&r["no_official"]),
            n(&r["pending"]),
            n(&r["failed"]),
            pct
        );
    }
    if rows.is_empty() {
        println!("nothing checked yet: `lockstep enqueue --suite bookworm --limit 10`");
    }
    Ok(ExitCode::SUCCESS)
}
