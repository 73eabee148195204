//! T07 poison jobs (issue 6): a job whose id the coordinator never issued (its evidence is
//! refused for good) and an undecodable message, both published into a builder queue, end in
//! the dead-letter queue `lockstep.dead` with RabbitMQ's `x-death` reason and nothing recorded,
//! while a normal job published meanwhile still ships. Builder queues also carry a delivery
//! limit (3 here) for jobs that would be requeued forever.

use std::time::{Duration, Instant};

use lockstep_proto::v1::{builder_queue, State};
use lockstep_tests::{drain_dead_letters, publish_raw, synthetic_package, Cluster, ClusterOptions};

const DELIVERY_LIMIT: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_jobs_are_dead_lettered_with_a_reason_and_other_jobs_continue() {
    let t0 = Instant::now();
    let c = Cluster::start(
        "poison",
        ClusterOptions {
            delivery_limit: Some(DELIVERY_LIMIT),
            ..Default::default()
        },
    )
    .await
    .expect("cluster starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(dir.path(), "lockstep-t07", "1.0", "true").expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("job id printed")
        .to_string();
    let real = c
        .coordinator
        .jobs
        .get(&job_id)
        .expect("get")
        .expect("job")
        .job;

    // The same job under an id the coordinator never issued, straight into agent-1's queue.
    let mut poison = real.clone();
    poison.job_id = "00000000-0000-4000-8000-00000000dead".into();
    let queue = builder_queue(&c.agents[0].fingerprint);
    publish_raw(
        &c.vhost.url(),
        &queue,
        &serde_json::to_vec(&poison).expect("json"),
    )
    .await
    .expect("published");
    publish_raw(&c.vhost.url(), &queue, b"this is not a job")
        .await
        .expect("published");

    let rows = c
        .wait_decided("lockstep-t07", Duration::from_secs(600))
        .await
        .expect("decided");
    assert_eq!(
        rows[0].state,
        State::Ship,
        "other jobs continue: {:#?}",
        rows[0]
    );

    let started = Instant::now();
    let mut dead = Vec::new();
    while dead.len() < 2 {
        dead.extend(
            drain_dead_letters(&c.vhost.url())
                .await
                .expect("dead letters"),
        );
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not dead-lettered: {dead:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("dead letters: {dead:#?}");
    let poisoned = dead
        .iter()
        .find(|d| d.body.windows(8).any(|w| w == b"0000dead"))
        .expect("the poison job is dead-lettered");
    assert!(
        poisoned.deaths.iter().any(|d| d.contains(&queue)
            && (d.contains("reason=delivery_limit") || d.contains("reason=rejected"))),
        "{poisoned:#?}"
    );
    // The coordinator refuses evidence for a job it never issued, so the agent rejects it after
    // one attempt (no endless requeue); the delivery limit backs this up for jobs that requeue.
    let deliveries = poisoned
        .delivery_count
        .clone()
        .unwrap_or_else(|| "0".into());
    let garbage = dead
        .iter()
        .find(|d| d.body == b"this is not a job")
        .expect("the undecodable message is dead-lettered");
    assert!(
        garbage.deaths.iter().any(|d| d.contains("reason=rejected")),
        "{garbage:#?}"
    );
    assert!(
        c.coordinator
            .jobs
            .get(&poison.job_id)
            .expect("get")
            .is_none(),
        "nothing was recorded for the poison job"
    );
    eprintln!(
        "T07 figures: jobs 1 + 2 poison messages, delivery limit {DELIVERY_LIMIT}, dead-lettered 2 \
         (poison job after {deliveries} redeliveries, reason {}; garbage at once, reason {}), lost 0, \
         decisions differing from fault-free 0, wall {:.0} s",
        poisoned.first_reason.as_deref().unwrap_or("?"),
        garbage.first_reason.as_deref().unwrap_or("?"),
        t0.elapsed().as_secs_f64()
    );
    c.stop().await;
}

/// T07, the other half: a job that fails every attempt with an infrastructure error (here its
/// only builder's build image is missing and the recipe that would make it fails) is requeued
/// each time, so the agent alone would retry it forever. (A full scratch disk no longer serves:
/// the agent stops consuming instead, `fault_disk_full`.) The builder queue's delivery limit ends that: after
/// `DELIVERY_LIMIT` deliveries the broker dead-letters it with reason `delivery_limit`, nothing
/// is recorded for it, and the job stays visibly pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_requeued_on_every_attempt_is_dead_lettered_by_the_delivery_limit() {
    let t0 = Instant::now();
    let c = Cluster::start(
        "limit",
        ClusterOptions {
            agents: 1,
            threshold: 1,
            delivery_limit: Some(DELIVERY_LIMIT),
            image: Some("lockstep-t07b-missing:none".into()),
            image_recipe: Some("/bin/false".into()),
            ..Default::default()
        },
    )
    .await
    .expect("cluster starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(dir.path(), "lockstep-t07b", "1.0", "true").expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let started = Instant::now();
    let mut dead = Vec::new();
    while dead.is_empty() {
        dead.extend(
            drain_dead_letters(&c.vhost.url())
                .await
                .expect("dead letters"),
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not dead-lettered"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let queue = builder_queue(&c.agents[0].fingerprint);
    let d = &dead[0];
    assert!(
        d.deaths
            .iter()
            .any(|x| x.contains(&queue) && x.contains("reason=delivery_limit")),
        "dead-lettered by the delivery limit: {d:#?}"
    );
    let rows = c.coordinator.status(Some("lockstep-t07b")).expect("status");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].state, State::Pending, "{rows:#?}");
    assert!(
        rows[0].failures.is_empty(),
        "no failure recorded: {rows:#?}"
    );
    assert!(
        c.coordinator
            .archive
            .records_for("lockstep-t07b", "1.0", &rows[0].arch, Some("attestation"))
            .expect("records")
            .is_empty(),
        "no attestation recorded"
    );
    eprintln!(
        "T07 figures (delivery limit): jobs 1, delivery limit {DELIVERY_LIMIT}, every attempt an \
         infrastructure error (requeued), dead-lettered 1, reason {}, failure records 0, \
         attestations 0; wall {:.0} s",
        d.first_reason.as_deref().unwrap_or("?"),
        t0.elapsed().as_secs_f64()
    );
    c.stop().await;
}
