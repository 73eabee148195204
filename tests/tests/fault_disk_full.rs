//! T09 agent disk full (issue 6). Agent-1's scratch space (its work dir) is a small tmpfs; the
//! job's build fills it. That is an infrastructure error, not a verdict on the package: no
//! failure report, nothing uploaded, the job is requeued, and a second process of the same
//! builder identity (a copy of agent-1's key, with room on its disk) builds it. The decision
//! equals a fault-free run (ship, one attestation per builder), the full agent stays up and its
//! scratch space is empty again afterwards.
//!
//! While its disk stays full the agent takes no jobs at all: it cancels its consumer, so the
//! broker neither delivers to it nor counts deliveries against the job's limit, and consumes again
//! once there is room. Both tests here check that; the second is the regression test of an agent
//! that burnt its jobs' delivery attempts until the broker dead-lettered them.

mod ops_support;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_proto::v1::{builder_queue, State};
use lockstep_tests::{
    drain_dead_letters, enqueue_dsc_http, lockstep_bin, queue_consumers, queue_counts,
    synthetic_package, AgentProgram, Cluster, ClusterOptions, ProcCluster,
};

/// Size of agent-1's scratch tmpfs, and the free space it needs to start a build.
const SCRATCH: &str = "160m";
const MIN_FREE: &str = "33554432"; // 32 MiB
/// What the test's own file leaves free on agent-1's scratch tmpfs to keep it full.
const LEFT_FREE: u64 = 16 << 20;
/// The agent's log lines when it stops and starts taking jobs because of its scratch disk.
const PAUSED: &str = "not taking jobs until space is freed";
const RESUMED: &str = "taking jobs again";

/// Polls `ready` every 500 ms until it holds, failing with `what` after `timeout`.
async fn wait_for(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < timeout, "{what} (waited {timeout:?})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (consumers, ready, unacknowledged) of `queue` in `vhost`.
fn queue_state(vhost: &str, queue: &str) -> (u64, u64, u64) {
    let consumers = queue_consumers(vhost)
        .expect("rabbitmqctl list_queues")
        .into_iter()
        .find(|(n, _)| n == queue)
        .map_or(0, |(_, c)| c);
    let (ready, unacked) = queue_counts(vhost)
        .expect("rabbitmqctl list_queues")
        .into_iter()
        .find(|(n, _, _)| n == queue)
        .map_or((0, 0), |(_, r, u)| (r, u));
    (consumers, ready, unacked)
}

/// Writes `bytes` of zeros to `path` (on a tmpfs: they take up the space).
fn write_filler(path: &std::path::Path, bytes: u64) {
    let mut f = std::fs::File::create(path).expect("creating the filler");
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        f.write_all(&chunk[..n as usize])
            .expect("writing the filler");
        left -= n;
    }
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_scratch_disk_is_an_infrastructure_error_and_the_job_is_built_elsewhere() {
    let t0 = Instant::now();
    let mut c = ProcCluster::start(
        "diskfull",
        ClusterOptions {
            agents: 2,
            threshold: 2,
            max_build: Duration::from_secs(300),
            ..Default::default()
        },
        AgentProgram::Binary(lockstep_bin("lockstep-agent")),
    )
    .await
    .expect("cluster starts");

    // Agent-1 again, on a small scratch disk.
    c.kill_agent(0);
    let work = c.agents[0].state_dir.join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={SCRATCH},mode=0755"),
            "tmpfs",
        ])
        .arg(&work)
        .status()
        .expect("mount runs (the test suite runs as root)");
    assert!(st.success(), "mount -t tmpfs failed: run the suite as root");
    let mount = Mount(work.clone());
    let scratch_size = lockstep_agent::runtime::free_bytes(&work).expect("statvfs");
    // The apt lists cache off: the tmpfs is the job's scratch space alone, and is checked to be
    // empty again at the end.
    c.start_agent(
        0,
        &[
            ("LOCKSTEP__MIN_FREE_BYTES", MIN_FREE),
            ("LOCKSTEP__APT_LISTS_MAX_AGE_SECS", "0"),
        ],
    )
    .expect("agent-1 restarts");

    // A build that writes 256 MiB into its build dir (then deletes it, so where there is room
    // the package builds and reproduces).
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(
        dir.path(),
        "lockstep-t09",
        "1.0",
        "dd if=/dev/zero of=filler bs=1M count=256 && rm -f filler",
    )
    .expect("package");
    let jobs = enqueue_dsc_http(&c.url, &dsc).await.expect("enqueued");
    assert_eq!(jobs.len(), 1, "one job: {jobs:?}");

    // Agent-1 fills its disk and requeues.
    let needle = "scratch space full";
    let started = Instant::now();
    while c.count_in_agent_log(0, needle) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "agent-1 never reported its full scratch space; its log:\n{}",
            c.agent_log_text(0)
        );
        assert!(c.agent_running(0), "agent-1 died:\n{}", c.agent_log_text(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = c.coordinator.status(Some("lockstep-t09")).expect("status");
    assert!(
        status.iter().all(|r| r.failures.is_empty()),
        "a full disk is not a build failure: {status:#?}"
    );

    // Now its disk stays full: once the job's work dir is gone (the agent is waiting out its
    // REQUEUE_DELAY), a file of the test's leaves less than MIN_FREE free. The agent stops taking
    // jobs before that requeue, says so once, and the job waits in the queue without a consumer.
    wait_for(
        Duration::from_secs(60),
        "agent-1 removed the job's work dir",
        || std::fs::read_dir(&work).is_ok_and(|mut d| d.next().is_none()),
    )
    .await;
    let filler = work.join("t09-filler");
    let free = lockstep_agent::runtime::free_bytes(&work).expect("statvfs");
    write_filler(&filler, free.saturating_sub(LEFT_FREE));
    let filled = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "agent-1 never said it paused",
        || c.count_in_agent_log(0, PAUSED) == 1,
    )
    .await;
    let pause_secs = filled.elapsed().as_secs_f64();
    let vhost = c.vhost.name.clone();
    let queue = builder_queue(&c.agents[0].fingerprint);
    wait_for(
        Duration::from_secs(30),
        "the requeued job waits in agent-1's queue, which has no consumer",
        || queue_state(&vhost, &queue) == (0, 1, 0),
    )
    .await;
    // Its heartbeat says why (before agent-1b, which shares its fingerprint, is heard from).
    let fingerprint = c.agents[0].fingerprint.to_uppercase();
    wait_for(
        Duration::from_secs(30),
        "the coordinator shows agent-1 paused",
        || {
            c.coordinator.ops.agents.snapshot().iter().any(|a| {
                a.fingerprint == fingerprint && a.paused.as_deref() == Some("scratch disk full")
            })
        },
    )
    .await;

    // Another process of the same identity, with room, takes the requeued job.
    let second = c
        .add_agent_process(0, &c.dir.path().join("agent-1b"))
        .expect("second agent-1 process");
    c.start_agent(second, &[]).expect("agent-1b starts");

    let rows = c
        .wait_all_decided(&["lockstep-t09".to_string()], Duration::from_secs(900))
        .await
        .expect("decided");
    let row = &rows[0];
    assert_eq!(row.state, State::Ship, "{row:#?}");
    assert!(row.failures.is_empty(), "no failure recorded: {row:#?}");
    let atts = c.attestations("lockstep-t09", "1.0", &row.arch);
    let duplicates: usize = atts.values().map(|v| v.len() - 1).sum();
    assert_eq!(atts.len(), 2, "one attestation per builder: {atts:?}");
    assert_eq!(duplicates, 0, "{atts:?}");

    // Agent-1 (the full one) stays up, uploaded nothing, and its scratch space is empty again.
    let full_attempts = c.count_in_agent_log(0, needle);
    assert!(c.agent_running(0), "agent-1 is still running");
    assert_eq!(
        c.count_in_agent_log(0, "phase=Uploading"),
        0,
        "the full agent uploaded nothing"
    );
    let built_by_second = c.count_in_agent_log(second, "phase=Uploading");
    assert_eq!(built_by_second, 1, "agent-1b built and uploaded the job");
    // Paused, agent-1 received nothing, and the job kept its deliveries.
    let log = c.agent_log_text(0);
    let (_, after_pause) = log.split_once(PAUSED).expect("the pause is logged");
    let received_paused = after_pause.matches("job received").count();
    assert_eq!(
        received_paused, 0,
        "the paused agent received a job:\n{log}"
    );
    let dead = drain_dead_letters(&c.vhost.url())
        .await
        .expect("dead letters");
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:#?}");

    // Space is back: agent-1 consumes again, beside agent-1b.
    std::fs::remove_file(&filler).expect("removing the filler");
    let freed = Instant::now();
    wait_for(Duration::from_secs(30), "agent-1 never resumed", || {
        c.count_in_agent_log(0, RESUMED) == 1
    })
    .await;
    let resume_secs = freed.elapsed().as_secs_f64();
    wait_for(
        Duration::from_secs(30),
        "agent-1 and agent-1b both consume their queue",
        || queue_state(&vhost, &queue).0 == 2,
    )
    .await;
    assert_eq!(
        c.count_in_agent_log(0, PAUSED),
        1,
        "the pause is logged once"
    );
    let started = Instant::now();
    loop {
        let left: Vec<_> = std::fs::read_dir(&work)
            .expect("scratch dir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        let free = lockstep_agent::runtime::free_bytes(&work).expect("statvfs");
        if left.is_empty() && free + (1 << 20) >= scratch_size {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "agent-1's scratch space still holds {left:?} ({free} of {scratch_size} bytes free)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    eprintln!(
        "T09 figures: jobs 1, faults 1 (scratch tmpfs {SCRATCH} filled), attempts on the full \
         agent {full_attempts}, failure records 0, uploads from the full agent 0, lost 0, \
         duplicate attestations 0, decisions differing from fault-free 0 (ship), scratch space \
         left 0 bytes; kept full: paused {pause_secs:.1} s after, jobs received while paused \
         {received_paused}, dead-lettered 0, resumed {resume_secs:.1} s after space was freed; \
         wall {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    // Unmount before the cluster removes its directory (a mount point cannot be removed).
    c.kill_agent(0);
    drop(mount);
    c.stop().await;
}

/// Regression test (docs/reliability.md, "an agent whose scratch space stays below
/// `min_free_bytes` burns its jobs' delivery attempts"): such an agent used to take its
/// identity's job, requeue it after `REQUEUE_DELAY`, take it again, until the delivery limit
/// dead-lettered it. Now it holds no consumer while its disk is full: the job waits in the queue,
/// never delivered and never dead-lettered, the agent's heartbeats say why (`lockstep agents`),
/// and it still shuts down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_whose_disk_stays_full_takes_no_jobs_and_none_is_dead_lettered() {
    let t0 = Instant::now();
    let c = Cluster::start(
        "fullidle",
        ClusterOptions {
            agents: 1,
            threshold: 1,
            // The first requeue would be its last delivery.
            delivery_limit: Some(1),
            // More free space than any disk has: the disk is always full.
            min_free_bytes: Some(1 << 60),
            ..Default::default()
        },
    )
    .await
    .expect("cluster starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(dir.path(), "lockstep-t09b", "1.0", "true").expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Watched for three requeue delays (5 s each): time enough for the old agent to take the
    // job, give it back twice and have it dead-lettered.
    let queue = builder_queue(&c.agents[0].fingerprint);
    let watched = Instant::now();
    let mut queued = None;
    while watched.elapsed() < Duration::from_secs(15) || queued.is_none() {
        let (consumers, ready, unacked) = queue_state(&c.vhost.name, &queue);
        assert_eq!(consumers, 0, "the full agent holds no consumer on {queue}");
        assert_eq!(unacked, 0, "no delivery is out");
        if ready == 1 && queued.is_none() {
            queued = Some(watched.elapsed());
        }
        assert!(
            watched.elapsed() < Duration::from_secs(120),
            "the job never reached {queue}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        queue_state(&c.vhost.name, &queue),
        (0, 1, 0),
        "the job waits in the queue"
    );
    let dead = drain_dead_letters(&c.vhost.url())
        .await
        .expect("dead letters");
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:#?}");
    let rows = c.coordinator.status(Some("lockstep-t09b")).expect("status");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].state, State::Pending, "{rows:#?}");
    assert!(
        rows[0].failures.is_empty(),
        "no failure recorded: {rows:#?}"
    );

    // Operators see why it is idle (the pause event, or at the latest the next heartbeat).
    wait_for(
        Duration::from_secs(40),
        "the coordinator shows the agent paused",
        || {
            c.coordinator
                .ops
                .agents
                .snapshot()
                .iter()
                .any(|a| a.paused.as_deref() == Some("scratch disk full"))
        },
    )
    .await;
    let out = c.cli(&["agents"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("not taking jobs: scratch disk full"),
        "lockstep agents:\n{shown}"
    );
    let (_, m) = ops_support::scrape(&c.url).await;
    assert_eq!(
        ops_support::value(&m, "lockstep_agents_paused", &[]),
        1.0,
        "the paused agent is counted"
    );

    let stopping = Instant::now();
    c.stop().await;
    let stop_secs = stopping.elapsed().as_secs_f64();
    assert!(stop_secs < 20.0, "stopping took {stop_secs:.1} s");
    eprintln!(
        "T09b figures: jobs 1, agent's scratch always below min_free_bytes, delivery limit 1, \
         watched {:.0} s: consumers 0, deliveries 0, dead-lettered 0, job ready in the queue; \
         stopped in {stop_secs:.1} s; wall {:.0} s",
        watched.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
