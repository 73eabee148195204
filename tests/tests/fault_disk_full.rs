//! T09 agent disk full (issue 6). Agent-1's scratch space (its work dir) is a small tmpfs; the
//! job's build fills it. That is an infrastructure error, not a verdict on the package: no
//! failure report, nothing uploaded, the job is requeued, and a second process of the same
//! builder identity (a copy of agent-1's key, with room on its disk) builds it. The decision
//! equals a fault-free run (ship, one attestation per builder), the full agent stays up and its
//! scratch space is empty again afterwards.

use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_proto::v1::State;
use lockstep_tests::{
    enqueue_dsc_http, lockstep_bin, synthetic_package, AgentProgram, ClusterOptions, ProcCluster,
};

/// Size of agent-1's scratch tmpfs, and the free space it needs to start a build.
const SCRATCH: &str = "160m";
const MIN_FREE: &str = "33554432"; // 32 MiB

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
         left 0 bytes; wall {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    // Unmount before the cluster removes its directory (a mount point cannot be removed).
    c.kill_agent(0);
    drop(mount);
    c.stop().await;
}
