//! Whole suites (issue 8): `lockstep enqueue --suite bookworm --section localization --since
//! DATE` against the machine's real apt sources enqueues exactly the sources of that section
//! whose newest `debian/changelog` entry is on or after DATE. The expected set is computed
//! independently: the test downloads every candidate source with its own apt configuration,
//! unpacks it with `dpkg-source -x` and dates it with `dpkg-parsechangelog`.
//!
//! No agent runs: the jobs stay queued and nothing is built.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_tests::{lockstep_bin, AgentProgram, ClusterOptions, ProcCluster};

const SUITE: &str = "bookworm";
const SECTION: &str = "localization";
const SINCE: &str = "2025-06-01";

/// apt-get with a configuration of the test's own under `dir`: the machine's deb822 sources
/// as `deb-src`, its own lists and cache.
fn test_apt(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("apt-get")
        .arg("-q")
        .arg("-oDir::Etc::SourceList=/dev/null")
        .arg(format!(
            "-oDir::Etc::SourceParts={}",
            dir.join("etc").display()
        ))
        .arg(format!(
            "-oDir::State::Lists={}",
            dir.join("lists").display()
        ))
        .arg(format!("-oDir::Cache={}", dir.join("cache").display()))
        .arg("-oDebug::NoLocking=1")
        .args(args)
        .current_dir(dir.join("src"))
        .output()
        .expect("apt-get runs")
}

fn prepare_test_apt(dir: &Path) {
    for d in ["etc", "lists/partial", "cache/archives/partial", "src"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    let mut n = 0;
    for e in std::fs::read_dir("/etc/apt/sources.list.d").expect("apt sources") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "sources") {
            let text = std::fs::read_to_string(&p).expect("read sources");
            let src: String = text
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("Types:") {
                        "Types: deb-src".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(dir.join("etc").join(format!("s{n}.sources")), src + "\n")
                .expect("write sources");
            n += 1;
        }
    }
    assert!(n > 0, "the machine has deb822 apt sources");
    let out = test_apt(dir, &["update"]);
    assert!(
        out.status.success(),
        "apt-get update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Downloads `name=version`, unpacks it and returns `dpkg-parsechangelog`'s Timestamp, or
/// `None` when the mirror does not serve the source (this machine's mirror answers 404 for some
/// pool files): such a source cannot be dated, and the coordinator must skip it too.
fn independent_timestamp(dir: &Path, name: &str, version: &str) -> Option<i64> {
    let spec = format!("{name}={version}");
    let out = test_apt(dir, &["source", "--download-only", &spec]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("404") {
        eprintln!("{spec}: the mirror does not serve it: {}", stderr.trim());
        return None;
    }
    assert!(out.status.success(), "apt-get source {spec}: {stderr}");
    let plain = version.split_once(':').map_or(version, |(_, v)| v);
    let dsc = dir.join("src").join(format!("{name}_{plain}.dsc"));
    let tree = dir.join("src").join(format!("tree-{name}"));
    let out = Command::new("dpkg-source")
        .args(["--no-check", "-x"])
        .arg(&dsc)
        .arg(&tree)
        .output()
        .expect("dpkg-source runs");
    assert!(
        out.status.success(),
        "dpkg-source -x {}: {}",
        dsc.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("dpkg-parsechangelog")
        .arg("-l")
        .arg(tree.join("debian/changelog"))
        .args(["-S", "Timestamp"])
        .output()
        .expect("dpkg-parsechangelog runs");
    assert!(out.status.success(), "dpkg-parsechangelog for {spec}");
    let _ = std::fs::remove_dir_all(&tree);
    Some(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a Unix timestamp"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_since_enqueues_exactly_the_sources_uploaded_since_the_date() {
    let t0 = Instant::now();
    let mut c = ProcCluster::start(
        "suite",
        ClusterOptions {
            agents: 1,
            threshold: 1,
            ..Default::default()
        },
        AgentProgram::Binary(lockstep_bin("lockstep-agent")),
    )
    .await
    .expect("cluster starts");
    // Nothing is built: jobs only need a queue to be dispatched to.
    c.kill_agent(0);

    let out = c.cli(&[
        "enqueue",
        "--suite",
        SUITE,
        "--section",
        SECTION,
        "--since",
        SINCE,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "enqueue --suite: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    let candidates: Vec<(String, String)> = v["sources"]
        .as_array()
        .expect("sources listed")
        .iter()
        .map(|s| {
            (
                s["package"].as_str().expect("package").to_string(),
                s["version"].as_str().expect("version").to_string(),
            )
        })
        .collect();
    assert!(
        candidates.len() >= 5,
        "the {SECTION} section of {SUITE} has sources: {v}"
    );

    // The expected set, computed without the coordinator.
    let apt = tempfile::tempdir().expect("tempdir");
    prepare_test_apt(apt.path());
    let since = chrono::NaiveDate::parse_from_str(SINCE, "%Y-%m-%d")
        .expect("date")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp();
    let mut expected = BTreeSet::new();
    let mut dates = Vec::new();
    let mut datable = 0;
    for (name, version) in &candidates {
        let ts = independent_timestamp(apt.path(), name, version);
        dates.push(format!("{name} {version} {ts:?}"));
        if let Some(ts) = ts {
            datable += 1;
            if ts >= since {
                expected.insert(name.clone());
            }
        }
    }
    assert!(
        !expected.is_empty() && expected.len() < datable,
        "the section has sources on both sides of {SINCE}: {dates:#?}"
    );

    // The coordinator dates every candidate (cached under <data>/apt/dates) and enqueues.
    let cache = c.dir.path().join("coordinator/apt/dates");
    let started = Instant::now();
    loop {
        let dated = std::fs::read_dir(&cache)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".part"))
                    .count()
            })
            .unwrap_or(0);
        let enqueued: BTreeSet<String> = candidates
            .iter()
            .filter(|(n, _)| !c.coordinator.status(Some(n)).expect("status").is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        if dated >= datable && enqueued.len() >= expected.len() {
            assert_eq!(
                enqueued, expected,
                "enqueued exactly the sources uploaded since {SINCE}: {dates:#?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "dated {dated} of {datable}, enqueued {enqueued:?} of {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "suite --since figures: {SUITE}/{SECTION}: candidates {}, not served by the mirror {}, \
         uploaded since {SINCE} {} ({:?}), enqueued {} (all and only those, checked with \
         dpkg-parsechangelog); wall {:.0} s",
        candidates.len(),
        candidates.len() - datable,
        expected.len(),
        expected,
        expected.len(),
        t0.elapsed().as_secs_f64()
    );
    c.stop().await;
}
