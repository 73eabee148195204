//! Builds that fail or hang end as outcomes (`Failed`, `TimedOut`) with their log, and leave no
//! container behind.

mod common;

use std::time::{Duration, Instant};

use lockstep_agent::runtime::BuildStatus;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_is_failed_with_the_error_in_the_log_tail() {
    let root = tempfile::tempdir().expect("tempdir");
    let pkg = common::synthetic_package(
        root.path(),
        "lockstep-fails",
        &["echo 'lockstep-test: deliberate failure' >&2", "exit 3"],
        &[],
    );
    let (rt, image) = common::runtime(common::test_config()).await;
    let work = tempfile::tempdir().expect("tempdir");
    let req = common::request(
        "fails-1",
        &pkg.name,
        &pkg.version,
        &pkg.dsc_name,
        &pkg.source_dir,
        work.path(),
        &image,
    );
    let out = rt
        .build(&req, CancellationToken::new())
        .await
        .expect("build runs");
    let log = String::from_utf8_lossy(&out.log);
    match &out.status {
        BuildStatus::Failed { exit_code, reason } => {
            assert_ne!(*exit_code, 0);
            assert!(reason.contains("dpkg-buildpackage"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}\n{log}"),
    }
    let tail = &log[log.len().saturating_sub(2000)..];
    assert!(tail.contains("lockstep-test: deliberate failure"), "{tail}");
    assert!(out.artifacts.is_empty());
    assert!(rt.live_containers().is_empty(), "containers removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_build_times_out_and_its_container_is_gone() {
    let root = tempfile::tempdir().expect("tempdir");
    let pkg = common::synthetic_package(root.path(), "lockstep-hangs", &["sleep 600"], &[]);
    let cfg = lockstep_agent::runtime::RuntimeConfig {
        max_build_time: Duration::from_secs(30),
        stop_grace: Duration::from_secs(2),
        ..common::test_config()
    };
    let (rt, image) = common::runtime(cfg).await;
    let work = tempfile::tempdir().expect("tempdir");
    let req = common::request(
        "hangs-1",
        &pkg.name,
        &pkg.version,
        &pkg.dsc_name,
        &pkg.source_dir,
        work.path(),
        &image,
    );
    let started = Instant::now();
    let out = rt
        .build(&req, CancellationToken::new())
        .await
        .expect("build runs");
    let elapsed = started.elapsed();
    assert_eq!(
        out.status,
        BuildStatus::TimedOut,
        "log:\n{}",
        String::from_utf8_lossy(&out.log)
    );
    assert!(
        out.timings.iter().any(|(phase, _)| phase == "build"),
        "the build step (not deps) timed out: {:?}",
        out.timings
    );
    assert!(
        elapsed < Duration::from_secs(120),
        "stopped promptly: {elapsed:?}"
    );
    for audit in rt.container_audits() {
        assert!(
            !common::container_exists(rt.docker(), &audit.id).await,
            "container {} removed",
            audit.id
        );
    }
    assert!(rt.live_containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_build_stops_and_removes_its_containers() {
    let root = tempfile::tempdir().expect("tempdir");
    let pkg = common::synthetic_package(root.path(), "lockstep-cancelled", &["sleep 600"], &[]);
    let (rt, image) = common::runtime(common::test_config()).await;
    let work = tempfile::tempdir().expect("tempdir");
    let req = common::request(
        "cancelled-1",
        &pkg.name,
        &pkg.version,
        &pkg.dsc_name,
        &pkg.source_dir,
        work.path(),
        &image,
    );
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        let docker = rt.docker().clone();
        tokio::spawn(async move {
            // Cancel once the build container is running.
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let running = docker
                    .list_containers(None::<bollard::query_parameters::ListContainersOptions>)
                    .await
                    .expect("list containers");
                let build_running = running.iter().any(|c| {
                    c.labels.as_ref().is_some_and(|l| {
                        l.get("org.lockstep.job").map(String::as_str) == Some("cancelled-1")
                            && l.get("org.lockstep.role").map(String::as_str) == Some("build")
                    })
                });
                if build_running {
                    cancel.cancel();
                    return;
                }
            }
        })
    };
    let result = rt.build(&req, cancel).await;
    canceller.await.expect("canceller finished");
    assert!(
        matches!(
            result,
            Err(lockstep_agent::runtime::RuntimeError::Cancelled)
        ),
        "{result:?}"
    );
    for audit in rt.container_audits() {
        assert!(!common::container_exists(rt.docker(), &audit.id).await);
    }
    assert!(rt.live_containers().is_empty());
}
