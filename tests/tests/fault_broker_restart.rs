//! T05: the broker restarts mid-run (RabbitMQ's application stopped and started on its node, so
//! every connection drops). Coordinator and agents reconnect with backoff and rebuild their
//! consumers; a job enqueued during the outage waits in the outbox; nothing is lost and nothing
//! is attested twice.

use std::process::Command;
use std::time::Duration;

use lockstep_proto::v1::State;
use lockstep_tests::{rabbit_node, synthetic_package, Cluster, ClusterOptions};

fn rabbitmqctl(arg: &str) {
    let out = Command::new("rabbitmqctl")
        .args(["-n", &rabbit_node(), arg])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "{arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the broker application again even when an assertion fails.
struct StartAgain(bool);

impl Drop for StartAgain {
    fn drop(&mut self) {
        if !self.0 {
            rabbitmqctl("start_app");
        }
    }
}

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
    rabbitmqctl("stop_app");
    let mut guard = StartAgain(false);
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
    rabbitmqctl("start_app");
    guard.0 = true;

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
            let recs = c
                .coordinator
                .archive
                .records_for(s, &row.version, &row.arch, Some("attestation"))
                .expect("records");
            let mut keys: Vec<(Option<String>, Option<String>)> = recs
                .iter()
                .map(|r| (r.job_id.clone(), r.signer.clone()))
                .collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            duplicates += n - keys.len();
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
