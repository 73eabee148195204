//! T13: a broker disk alarm blocks publishers. Jobs enqueued meanwhile are not lost: they stay in
//! the coordinator's outbox (unconfirmed) and are dispatched, confirmed, once the alarm clears.

use std::process::Command;
use std::time::Duration;

use lockstep_tests::{rabbit_node, synthetic_package, Cluster, ClusterOptions};

fn set_disk_free_limit(limit: &str) {
    let out = Command::new("rabbitmqctl")
        .args(["-n", &rabbit_node(), "set_disk_free_limit", limit])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restores the default limit even when an assertion fails.
struct ClearAlarm;

impl Drop for ClearAlarm {
    fn drop(&mut self) {
        set_disk_free_limit("50MB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_enqueued_during_a_broker_disk_alarm_are_dispatched_after_it_clears() {
    // One trusted builder (its queue is declared by the coordinator), no agent consuming.
    let c = Cluster::start(
        "disk-alarm",
        ClusterOptions {
            agents: 1,
            threshold: 1,
            ..Default::default()
        },
    )
    .await
    .expect("cluster");
    // Let the dispatcher connect and declare the topology first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _guard = ClearAlarm;
    // A limit far above any free space raises the disk alarm at once.
    set_disk_free_limit("100000000000000");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(dir.path(), "lockstep-alarm", "1.0", "true").expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "enqueue works during the alarm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("job id")
        .to_string();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let row = c
        .coordinator
        .jobs
        .get(&id)
        .expect("get")
        .expect("job exists");
    assert!(
        row.confirmed_at.is_none(),
        "nothing is confirmed while the broker blocks publishers"
    );

    set_disk_free_limit("50MB");
    let mut confirmed = false;
    for _ in 0..120 {
        let row = c
            .coordinator
            .jobs
            .get(&id)
            .expect("get")
            .expect("job exists");
        if row.confirmed_at.is_some() {
            confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("T13: jobs 1, alarms 1, lost {}", u8::from(!confirmed));
    assert!(confirmed, "the job is dispatched once the alarm clears");
    assert_eq!(c.coordinator.jobs.count_unconfirmed().expect("count"), 0);
    c.stop().await;
}
