//! `/metrics` (issue 5): the exposition parses with an independent Prometheus text-format
//! parser, every family is there, and values agree with the coordinator's own state.

mod ops_support;

use lockstep_tests::{Cluster, ClusterOptions};
use ops_support::{scrape, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_have_every_family_and_count_refused_attestations() {
    let c = Cluster::start(
        "ops-metrics",
        ClusterOptions {
            agents: 0,
            ..Default::default()
        },
    )
    .await
    .expect("cluster");
    let (body, m) = scrape(&c.url).await;
    for family in [
        "lockstep_jobs",
        "lockstep_packages",
        "lockstep_broker_up",
        "lockstep_queue_messages",
        "lockstep_decisions_total",
        "lockstep_attestation_refusals_total",
        "lockstep_build_duration_seconds",
        "lockstep_archive_blob_bytes",
        "lockstep_archive_linked_bytes",
        "lockstep_archive_dedup_ratio",
        "lockstep_archive_blobs",
        "lockstep_archive_records",
        "lockstep_archive_commits_total",
        "lockstep_archive_commit_appends_total",
        "lockstep_archive_commit_seconds_total",
        "lockstep_log_leaves",
        "lockstep_agents",
        "lockstep_agents_paused",
    ] {
        assert!(
            m.docs.contains_key(family),
            "no # HELP for {family}:\n{body}"
        );
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "no # TYPE for {family}"
        );
    }
    // An empty coordinator: nothing stored, nothing refused, the histogram empty but complete.
    assert_eq!(
        value(&m, "lockstep_jobs", &[("state", "undispatched")]),
        0.0
    );
    assert_eq!(
        value(&m, "lockstep_decisions_total", &[("state", "ship")]),
        0.0
    );
    assert_eq!(value(&m, "lockstep_archive_dedup_ratio", &[]), 1.0);
    assert_eq!(value(&m, "lockstep_agents_paused", &[]), 0.0);
    assert_eq!(value(&m, "lockstep_build_duration_seconds_count", &[]), 0.0);
    let hist = m
        .samples
        .iter()
        .find(|s| s.metric == "lockstep_build_duration_seconds")
        .expect("histogram buckets");
    match &hist.value {
        prometheus_parse::Value::Histogram(b) => {
            assert!(b.len() >= 5, "buckets: {b:?}");
            assert!(b.iter().any(|x| x.less_than.is_infinite()), "+Inf bucket");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // The group commit's counters are the archive's own (nothing is appended while idle).
    let commits = c.coordinator.archive.commit_stats();
    assert_eq!(
        value(&m, "lockstep_archive_commits_total", &[]),
        commits.commits as f64
    );
    assert_eq!(
        value(&m, "lockstep_archive_commit_appends_total", &[]),
        commits.appends as f64
    );
    assert!(commits.appends >= commits.commits, "{commits:?}");
    let log_leaves = value(&m, "lockstep_log_leaves", &[]);
    assert_eq!(
        log_leaves,
        c.coordinator.archive.log_size().expect("log size") as f64
    );

    // A malformed attestation and one signed by nobody the policy trusts: two refusals.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/attestations", c.url))
        .json(&serde_json::json!({
            "statement": "not json",
            "signature": "",
            "signed_buildinfo": "0".repeat(64),
            "build_log": null
        }))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 400);
    let (_, m) = scrape(&c.url).await;
    assert_eq!(
        value(
            &m,
            "lockstep_attestation_refusals_total",
            &[("reason", "malformed")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "lockstep_attestation_refusals_total",
            &[("reason", "signature_or_trust")]
        ),
        0.0
    );

    // Blobs: uploading the same bytes twice stores them once.
    let data = b"lockstep metrics test blob".to_vec();
    let digest = lockstep_proto::Sha256Digest::of(&data).to_hex();
    for _ in 0..2 {
        let r = http
            .put(format!("{}/api/v1/blobs/{digest}", c.url))
            .body(data.clone())
            .send()
            .await
            .expect("PUT blob");
        assert!(r.status().is_success());
    }
    let (_, m) = scrape(&c.url).await;
    let stats = c.coordinator.archive.stats().expect("stats");
    assert_eq!(value(&m, "lockstep_archive_blobs", &[]), stats.blobs as f64);
    assert_eq!(
        value(&m, "lockstep_archive_blob_bytes", &[]),
        stats.blob_bytes as f64
    );
    assert!(stats.blob_bytes >= data.len() as u64);
    // The broker is up and the gauge says so.
    assert_eq!(value(&m, "lockstep_broker_up", &[]), 1.0);
    c.stop().await;
}
