//! T04: a node of a three-node RabbitMQ cluster (quorum queues) is stopped mid-run — the node
//! every client is connected to, which also leads the builder queues. Coordinator and agents,
//! configured with every node's URL (`amqp_urls`), fail over to the next node; the queues elect
//! a new leader from the two members left; jobs enqueued during the outage are dispatched;
//! nothing confirmed is lost and nothing is attested twice.
//!
//! Needs `scripts/rabbitmq-cluster` (started here when not running, and then stopped and cleaned
//! again; `scripts/test` starts it before the suite). Skips only when `rabbitmq-server` is not
//! installed.

use std::time::{Duration, Instant};

use lockstep_proto::v1::{self, Phase, State};
use lockstep_tests::rabbit_cluster::{ctl, BrokerCluster};
use lockstep_tests::{
    count_attestations, enqueue_dsc_http, synthetic_package, Cluster, ClusterOptions,
};

/// Starts the stopped node again even when an assertion fails, so a reused cluster stays whole.
struct StartAgain<'a> {
    broker: &'a BrokerCluster,
    node: usize,
    armed: bool,
}

impl Drop for StartAgain<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.broker.start_node(self.node) {
                eprintln!("starting the stopped RabbitMQ node again: {e:#}");
            }
        }
    }
}

/// Polls `cond` every 250 ms for at most `timeout`; returns how long it took.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_connected_broker_node_loses_nothing_and_dispatch_resumes() {
    let t0 = Instant::now();
    let Some(broker) = BrokerCluster::ensure(3)
        .expect("a three-node RabbitMQ cluster (scripts/rabbitmq-cluster start 3)")
    else {
        eprintln!(
            "SKIPPED T04 (fault_broker_node): rabbitmq-server is not installed; scripts/setup installs it"
        );
        return;
    };
    let vhost = broker.vhost("broker-node").expect("a vhost on the cluster");
    let vname = vhost.name.clone();
    let c = Cluster::start_on("broker-node", ClusterOptions::default(), vhost)
        .await
        .expect("coordinator and agents on the cluster");
    let queues: Vec<String> = c
        .agents
        .iter()
        .map(|a| v1::builder_queue(&a.fingerprint))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sources: Vec<String> = Vec::new();

    // Three jobs whose builds are running when the node goes away.
    for name in ["lockstep-node-a", "lockstep-node-b", "lockstep-node-c"] {
        let dsc = synthetic_package(dir.path(), name, "1.0", "sleep 8").expect("package");
        enqueue_dsc_http(&c.url, &dsc).await.expect("enqueue");
        sources.push(name.into());
    }
    let jobs = c.coordinator.jobs.clone();
    wait_until("the first jobs confirmed", Duration::from_secs(120), || {
        jobs.count_unconfirmed().map(|n| n == 0).unwrap_or(false)
    })
    .await;
    // Mid-run: a build running (on both agents if they get there within a minute).
    let building = || {
        c.coordinator
            .ops
            .agents
            .snapshot()
            .iter()
            .filter(|a| {
                a.current
                    .as_ref()
                    .is_some_and(|j| j.phase == Phase::Building)
            })
            .count()
    };
    wait_until("a build running", Duration::from_secs(900), || {
        building() > 0
    })
    .await;
    let both = Instant::now();
    while building() < 2 && both.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let builds_at_stop = building();

    // The node to lose: the one the clients are connected to (every client starts with the
    // first URL of its list).
    let before = broker.connections(&vname).expect("connections");
    let target = (0..before.len())
        .max_by_key(|&i| before[i])
        .expect("three nodes");
    assert!(
        before[target] >= 4,
        "coordinator (dispatch, events) and both agents are connected to one node: {before:?}"
    );
    let leaders_before: Vec<Option<usize>> = queues
        .iter()
        .map(|q| broker.leader(&vname, q).expect("leader"))
        .collect();
    let target_leads = leaders_before
        .iter()
        .filter(|l| **l == Some(target))
        .count();
    let node = broker.nodes[target].name.clone();
    eprintln!(
        "T04: stopping {node} (connections per node {before:?}, leads {target_leads} of {} builder queues, builds running {builds_at_stop})",
        queues.len()
    );
    let stop_at = Instant::now();
    broker.stop_node(target).expect("stop the node");
    let mut guard = StartAgain {
        broker: &broker,
        node: target,
        armed: true,
    };
    let stop_secs = stop_at.elapsed().as_secs_f64();

    // Two more jobs while the node is down: stored at once, dispatched through another node.
    let outage_at = Instant::now();
    for name in ["lockstep-node-d", "lockstep-node-e"] {
        let dsc = synthetic_package(dir.path(), name, "1.0", "true").expect("package");
        enqueue_dsc_http(&c.url, &dsc)
            .await
            .expect("enqueue while a broker node is down");
        sources.push(name.into());
    }
    let resumed = wait_until(
        "jobs enqueued during the outage confirmed by the remaining nodes",
        Duration::from_secs(120),
        || jobs.count_unconfirmed().map(|n| n == 0).unwrap_or(false),
    )
    .await;
    let resumed_since_stop = stop_at.elapsed();
    let b = &broker;
    let vn = vname.clone();
    let moved = wait_until(
        "every client reconnected to another node",
        Duration::from_secs(120),
        || {
            b.connections(&vn)
                .map(|v| v[target] == 0 && v.iter().sum::<usize>() >= before[target])
                .unwrap_or(false)
        },
    )
    .await;
    let after = broker.connections(&vname).expect("connections");
    let leaders_after: Vec<Option<usize>> = queues
        .iter()
        .map(|q| broker.leader(&vname, q).expect("leader"))
        .collect();
    eprintln!(
        "T04: jobs enqueued during the outage confirmed {:.1}s after their enqueue, {:.1}s after the stop began; every client on another node within {:.1}s of the stop (connections {after:?}); leaders {leaders_before:?} -> {leaders_after:?}",
        resumed.as_secs_f64(),
        resumed_since_stop.as_secs_f64(),
        (outage_at - stop_at).as_secs_f64() + moved.as_secs_f64()
    );
    assert!(
        leaders_after.iter().all(|l| l.is_some_and(|l| l != target)),
        "every builder queue has a leader on a running node: {leaders_after:?}"
    );

    // Every job ends, with the node still down.
    let mut lost = 0;
    let mut differing = 0;
    for s in &sources {
        match c.wait_decided(s, Duration::from_secs(600)).await {
            Ok(rows) => {
                if rows.iter().any(|r| r.state != State::Ship) {
                    differing += 1;
                    eprintln!("{s}: {rows:?}");
                }
            }
            Err(e) => {
                lost += 1;
                eprintln!("{s}: {e:#}");
            }
        }
    }
    let mut duplicates = 0;
    let mut attestations = 0;
    for s in &sources {
        for row in c.coordinator.status(Some(s)).expect("status") {
            let (total, dup) = count_attestations(&c.attestations(s, &row.version, &row.arch));
            attestations += total;
            duplicates += dup;
        }
    }

    // The node comes back and rejoins; nothing is left in the builder queues.
    broker.start_node(target).expect("start the node again");
    guard.armed = false;
    let listing = || {
        ctl(
            &broker.nodes[target].name,
            &[
                "list_queues",
                "-p",
                &vname,
                "--quiet",
                "--no-table-headers",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "members",
            ],
        )
        .unwrap_or_default()
    };
    let node_name = broker.nodes[target].name.clone();
    wait_until(
        "the restarted node is a member of every builder queue again",
        Duration::from_secs(60),
        || {
            let text = listing();
            queues.iter().all(|q| {
                text.lines()
                    .any(|l| l.starts_with(q.as_str()) && l.contains(&node_name))
            })
        },
    )
    .await;
    let left: u64 = listing()
        .lines()
        .filter(|l| queues.iter().any(|q| l.starts_with(q.as_str())))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(2)
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    let unconfirmed = c.coordinator.jobs.count_unconfirmed().expect("count");
    println!(
        "T04 figures: jobs {}, faults injected 1 (node {node} stopped: clients' node, leader of {target_leads} of {} builder queues, {builds_at_stop} builds running), lost {lost}, duplicates {duplicates}, decisions differing from a fault-free run {differing}, attestations {attestations}, unconfirmed {unconfirmed}, messages left in builder queues {left}, node stop took {stop_secs:.1}s, dispatch resumed {:.1}s after the stop began ({:.1}s after the enqueue during the outage), wall {}s",
        sources.len(),
        queues.len(),
        resumed_since_stop.as_secs_f64(),
        resumed.as_secs_f64(),
        t0.elapsed().as_secs()
    );
    assert_eq!(lost, 0, "every confirmed job ends");
    assert_eq!(differing, 0, "every job ships, as without the fault");
    assert_eq!(duplicates, 0, "one attestation per (job, builder)");
    assert_eq!(attestations, 2 * sources.len());
    assert_eq!(unconfirmed, 0);
    assert_eq!(left, 0, "builder queues are empty afterwards");
    c.stop().await;
}
