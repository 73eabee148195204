//! T05: the broker restarts mid-run (RabbitMQ's application stopped and started on its node, so
//! every connection drops). Coordinator and agents reconnect with backoff and rebuild their
//! consumers; a job enqueued during the outage waits in the outbox; nothing is lost and nothing
//! is attested twice.

use std::time::Duration;

use lockstep_proto::v1::State;
use lockstep_tests::{
    broker_app, count_attestations, synthetic_package, Cluster, ClusterOptions, StartBrokerAgain,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_run_loses_nothing_and_duplicates_nothing() {
    let c = Cluster::start("broker-restart", ClusterOptions::default())
        .await
        .expect("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sources = Vec::new();
    for name in ["lockstep-restart-a", "lockstep-restart-b"] {
        let dsc = synthetic_package(dir.path(), name, "1.0", "sleep 5").expect("package");
        let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sources.push(name);
    }
    // Let the jobs be dispatched and the builds start, then take the broker away.
    tokio::time::sleep(Duration::from_secs(8)).await;
    broker_app("stop_app").expect("stop the broker application");
    let mut guard = StartBrokerAgain { armed: true };
    // A job enqueued while the broker is down is stored and waits in the outbox.
    let dsc = synthetic_package(dir.path(), "lockstep-restart-c", "1.0", "true").expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "enqueue works without the broker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sources.push("lockstep-restart-c");
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker_app("start_app").expect("start the broker application");
    guard.armed = false;

    let mut lost = 0;
    for s in &sources {
        match c.wait_decided(s, Duration::from_secs(600)).await {
            Ok(rows) if rows[0].state == State::Ship => {}
            other => {
                lost += 1;
                eprintln!("{s}: {other:?}");
            }
        }
    }
    let mut duplicates = 0;
    for s in &sources {
        for row in c.coordinator.status(Some(s)).expect("status") {
            let (_, dup) = count_attestations(&c.attestations(s, &row.version, &row.arch));
            duplicates += dup;
        }
    }
    println!(
        "T05 figures: jobs {}, broker restarts 1, lost {lost}, duplicate attestations {duplicates}, unconfirmed {}",
        sources.len(),
        c.coordinator.jobs.count_unconfirmed().expect("count")
    );
    assert_eq!(lost, 0, "every job ends ship after the broker restart");
    assert_eq!(duplicates, 0);
    assert_eq!(c.coordinator.jobs.count_unconfirmed().expect("count"), 0);
    c.stop().await;
}
