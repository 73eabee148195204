//! Bad input gets a clear message and stores nothing half-way (issue 2, "Bad input").

use std::time::Duration;

use lockstep_proto::v1::State;
use lockstep_tests::{synthetic_package, Cluster, ClusterOptions};

fn no_agents() -> ClusterOptions {
    ClusterOptions {
        agents: 0,
        threshold: 2,
        ..Default::default()
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_packages_and_versions_are_refused_with_a_reason() {
    let c = Cluster::start("bad-pkg", no_agents())
        .await
        .expect("cluster");
    let out = c.cli(&["enqueue", "no-such-package-lockstep"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no-such-package-lockstep")
            && stderr(&out).contains("source package"),
        "{}",
        stderr(&out)
    );
    let out = c.cli(&["enqueue", "hello=9.9.9-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("9.9.9-9"), "{}", stderr(&out));
    let out = c.cli(&["enqueue", "--from-file", "/nonexistent/list"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("/nonexistent/list"),
        "{}",
        stderr(&out)
    );
    let out = c.cli(&["enqueue", "-oDebug::X=1"]);
    assert_ne!(out.status.code(), Some(0), "option-like names are refused");
    assert!(
        c.coordinator.jobs.keys(None).expect("keys").is_empty(),
        "no job was created"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsc_whose_files_do_not_match_is_refused_and_nothing_is_enqueued() {
    let c = Cluster::start("bad-dsc", no_agents())
        .await
        .expect("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(dir.path(), "lockstep-bad", "1.0", "true").expect("package");
    // Corrupt the tarball after dpkg-source wrote its checksum into the .dsc.
    let tarball = dir.path().join("lockstep-bad_1.0.tar.xz");
    let mut bytes = std::fs::read(&tarball).expect("tarball");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&tarball, bytes).expect("write");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("lockstep-bad_1.0.tar.xz") && stderr(&out).contains("does not match"),
        "{}",
        stderr(&out)
    );
    // A path that is not a source package.
    let not_dsc = dir.path().join("notes.txt");
    std::fs::write(&not_dsc, "just some text\n").expect("write");
    let out = c.cli(&["enqueue", "--dsc", not_dsc.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a source package"),
        "{}",
        stderr(&out)
    );
    // The server refuses a .dsc whose files were never uploaded.
    let dsc2 = synthetic_package(dir.path(), "lockstep-missing", "1.0", "true").expect("package");
    let bytes = std::fs::read(&dsc2).expect("dsc");
    let digest = lockstep_proto::Sha256Digest::of(&bytes);
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/api/v1/blobs/{digest}", c.url))
        .body(bytes)
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success());
    let r = http
        .post(format!("{}/api/v1/jobs/dsc", c.url))
        .json(&serde_json::json!({ "dsc_sha256": digest }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("was not uploaded")),
        "{body}"
    );
    // A blob whose bytes do not match its name is refused and not stored.
    let wrong = lockstep_proto::Sha256Digest::of(b"other");
    let r = http
        .put(format!("{}/api/v1/blobs/{wrong}", c.url))
        .body("these bytes")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 422);
    assert!(!c.coordinator.archive.has_blob(&wrong));
    assert!(
        c.coordinator.jobs.keys(None).expect("keys").is_empty(),
        "no job was created"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_a_failed_dispatch_not_a_success() {
    // No trusted builder → no builder queue is bound → the broker returns the job.
    let c = Cluster::start("unroutable", no_agents())
        .await
        .expect("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(dir.path(), "lockstep-nobody", "1.0", "true").expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("job id printed")
        .to_string();
    let mut row = None;
    for _ in 0..100 {
        let r = c
            .coordinator
            .jobs
            .get(&id)
            .expect("get")
            .expect("job exists");
        if r.dispatch_error.is_some() {
            row = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let row = row.expect("a dispatch error is recorded");
    assert!(
        row.confirmed_at.is_none(),
        "an unroutable job is not dispatched"
    );
    assert!(
        row.dispatch_error
            .as_deref()
            .is_some_and(|e| e.contains("unroutable")),
        "{:?}",
        row.dispatch_error
    );
    assert_eq!(
        c.coordinator.jobs.count_unconfirmed().expect("count"),
        1,
        "it stays in the outbox for retry"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_build_ends_failed_with_the_log_tail_and_no_attestation() {
    let c = Cluster::start("fail-build", ClusterOptions::default())
        .await
        .expect("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc = synthetic_package(
        dir.path(),
        "lockstep-broken",
        "1.0",
        "echo 'lockstep-test: deliberate compile error' >&2; exit 3",
    )
    .expect("package");
    let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = c
        .wait_decided("lockstep-broken", Duration::from_secs(900))
        .await
        .expect("decided");
    let row = &rows[0];
    assert_eq!(row.state, State::Failed, "{row:#?}");
    assert!(row.builders.is_empty(), "no attestation for a failed build");
    assert!(!row.failures.is_empty());
    assert!(
        row.failures
            .iter()
            .any(|f| f.kind == "build" && f.log_tail.contains("deliberate compile error")),
        "{:#?}",
        row.failures
    );
    let atts = c
        .coordinator
        .archive
        .records_for("lockstep-broken", "1.0", &row.arch, Some("attestation"))
        .expect("records");
    assert!(atts.is_empty());
    c.stop().await;
}
