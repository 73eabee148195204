//! T06 (issue 6): a build longer than the agents' maximum build time is stopped, then killed;
//! the job ends FAILED(timeout) on both builders and is never built twice — the agent acks
//! after a timeout, so the broker has nothing to redeliver — and the broker's consumer timeout
//! is above the maximum build time, so a long build is never taken back while it runs.

use std::time::{Duration, Instant};

use lockstep_agent::runtime::{ContainerRole, RuntimeConfig};
use lockstep_proto::v1::State;
use lockstep_tests::{
    queue_counts, rabbitmqctl_output, synthetic_package, Cluster, ClusterOptions,
};

const MAX_BUILD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_over_its_time_limit_fails_once_and_is_not_redelivered() {
    let t0 = Instant::now();
    // The broker side of the trap: consumer_timeout (ms) above the default maximum build time.
    let text = rabbitmqctl_output(&["eval", "application:get_env(rabbit, consumer_timeout)."])
        .expect("rabbitmqctl eval");
    let consumer_timeout_ms: u64 = text
        .trim()
        .trim_start_matches("{ok,")
        .trim_end_matches('}')
        .parse()
        .unwrap_or_else(|_| panic!("consumer_timeout is not set on the test node: {text}"));
    let default_max = RuntimeConfig::default().max_build_time;
    assert!(
        Duration::from_millis(consumer_timeout_ms) > default_max,
        "consumer_timeout {consumer_timeout_ms} ms must be above the maximum build time {default_max:?}"
    );

    let c = Cluster::start(
        "timeout",
        ClusterOptions {
            max_build: MAX_BUILD,
            ..Default::default()
        },
    )
    .await
    .expect("cluster starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(dir.path(), "lockstep-slow", "1.0", "sleep 600").expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both builders report the timeout.
    let started = Instant::now();
    let row = loop {
        let rows = c.coordinator.status(Some("lockstep-slow")).expect("status");
        if let Some(r) = rows.first().filter(|r| r.failures.len() == 2) {
            break r.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "no two failures yet: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let until_failed = started.elapsed();
    assert_eq!(row.state, State::Failed, "{row:#?}");
    for f in &row.failures {
        assert_eq!(f.kind, "timeout", "{f:#?}");
        assert!(f.reason.contains("maximum build time of 30s"), "{f:#?}");
    }

    // Give a redelivery every chance to show up, then count.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut builds = 0;
    for (rt, a) in c.runtimes.iter().zip(&c.agents) {
        let n = rt
            .container_audits()
            .iter()
            .filter(|au| au.role == ContainerRole::Build)
            .count();
        assert_eq!(n, 1, "{} started the build {n} times", a.name);
        builds += n;
        assert!(
            rt.live_containers().is_empty(),
            "{}: the container was removed",
            a.name
        );
    }
    let records = c
        .coordinator
        .archive
        .records_for("lockstep-slow", "1.0", &row.arch, Some("failure"))
        .expect("records");
    for a in &c.agents {
        let n = records
            .iter()
            .filter(|r| r.signer.as_deref() == Some(a.fingerprint.as_str()))
            .count();
        assert_eq!(n, 1, "{}: one failure record", a.name);
    }
    for (q, ready, unacked) in queue_counts(&c.vhost.name).expect("queues") {
        assert_eq!((ready, unacked), (0, 0), "queue {q} still holds the job");
    }
    eprintln!(
        "T06 figures: jobs 1, builders 2, builds started {builds}, failure records {}, \
         redeliveries 0, lost 0, failed(timeout) after {:.0} s (limit {}s per step), \
         consumer_timeout {} s, wall {:.0} s",
        records.len(),
        until_failed.as_secs_f64(),
        MAX_BUILD.as_secs(),
        consumer_timeout_ms / 1000,
        t0.elapsed().as_secs_f64()
    );
    c.stop().await;
}
