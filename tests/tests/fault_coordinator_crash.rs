//! T03 coordinator crash before confirm (issue 6). The coordinator runs as a child process built
//! with the `failpoints` feature (this test binary re-executed); `LOCKSTEP_FAILPOINT` aborts it
//! (a) after a job was handed to the broker and before its confirmation was read, and (b) after
//! the confirmation and before the outbox marked the job confirmed. Both leave a job the broker
//! holds but the outbox lists as unconfirmed: after a restart it is published again, and the
//! agents dedupe by job id (the second delivery finds its attestation stored and is acked
//! without a rebuild).
//!
//! Checked: I1 every enqueued job ends ship; I2 one attestation per (job, builder); decisions
//! equal a fault-free run; the outbox is empty and the builder queues drain.

use std::time::{Duration, Instant};

use lockstep_proto::v1::{State, StatusEntry};
use lockstep_tests::{
    agent_command, attestations_in, count_attestations, enqueue_dsc_http, free_port, lockstep_bin,
    prepare_builders, queue_counts, run_coordinator_child, synthetic_package, AgentProgram,
    CoordinatorProcess, CoordinatorProgram, Vhost,
};

const ENTRY: &str = "coordinator_process_entry";

/// Not a test of its own: the entry point of the coordinator processes this file starts.
#[test]
fn coordinator_process_entry() {
    run_coordinator_child();
}

async fn status(url: &str, source: &str) -> Vec<StatusEntry> {
    reqwest::get(format!("{url}/api/v1/status?source={source}"))
        .await
        .expect("status answers")
        .json()
        .await
        .expect("status JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t03_a_coordinator_crash_between_publish_and_confirm_loses_and_duplicates_nothing() {
    let t0 = Instant::now();
    let vhost = Vhost::create("t03").expect("vhost");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    let agents = prepare_builders(dir.path(), &data, 2, 2).expect("builders");
    let port = free_port().expect("port");
    let log = dir.path().join("coordinator.log");
    let program = CoordinatorProgram::SelfExec(ENTRY.into());
    let start = |env: &[(&str, &str)]| {
        CoordinatorProcess::start(&program, &data, port, &vhost.url(), &log, env)
            .expect("coordinator starts")
    };

    let mut coord = start(&[]);
    coord
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("healthy");
    let url = coord.url.clone();
    let mut procs = Vec::new();
    for a in &agents {
        let alog = std::fs::File::create(dir.path().join(format!("{}.log", a.name))).expect("log");
        let mut cmd = agent_command(
            &AgentProgram::Binary(lockstep_bin("lockstep-agent")),
            a,
            &url,
            &vhost.url(),
            Duration::from_secs(300),
        )
        .expect("agent command");
        cmd.stdin(std::process::Stdio::null())
            .stdout(alog.try_clone().expect("dup"))
            .stderr(alog);
        procs.push(cmd.spawn().expect("agent starts"));
    }
    coord.stop(Duration::from_secs(30)).await;

    let points = ["dispatch-before-confirm", "dispatch-before-mark"];
    let pkgs = tempfile::tempdir().expect("tempdir");
    let mut sources = Vec::new();
    let mut crashes = 0;
    for (i, point) in points.iter().enumerate() {
        let source = format!("lockstep-t03-{}", i + 1);
        let dsc = synthetic_package(pkgs.path(), &source, "1.0", "true").expect("package");
        let mut coord = start(&[("LOCKSTEP_FAILPOINT", point)]);
        coord
            .wait_healthy(Duration::from_secs(60))
            .await
            .expect("healthy");
        // The enqueue is answered (stored in the outbox) before the dispatcher reaches the
        // failpoint: for the client the job is accepted.
        let jobs = enqueue_dsc_http(&url, &dsc)
            .await
            .expect("enqueue answered");
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let exit = coord
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("the coordinator aborts at the failpoint");
        assert!(!exit.success(), "{point}: aborted ({exit})");
        assert!(
            coord.log_tail().contains(&format!("failpoint {point}")),
            "{point}: the abort was the failpoint:\n{}",
            coord.log_tail()
        );
        crashes += 1;
        sources.push(source);
        let mut coord = start(&[]);
        coord
            .wait_healthy(Duration::from_secs(60))
            .await
            .expect("healthy after the crash");
        // Each job decided before the next crash, so every crash hits exactly one publish.
        let started = Instant::now();
        loop {
            let rows = status(&url, sources.last().expect("source")).await;
            if rows.len() == 1 && rows[0].state != State::Pending {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{point}: not decided: {rows:#?}\n{}",
                coord.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        coord.stop(Duration::from_secs(30)).await;
    }

    // Drain: the re-published copies are delivered and acked without a rebuild.
    let mut coord = start(&[]);
    coord
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("healthy");
    let started = Instant::now();
    loop {
        let q = queue_counts(&vhost.name).expect("queues");
        let busy: Vec<_> = q
            .iter()
            .filter(|(n, ready, unacked)| n.starts_with("lockstep.build.") && ready + unacked > 0)
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "builder queues do not drain: {busy:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut decided = Vec::new();
    for s in &sources {
        decided.extend(status(&url, s).await);
    }
    coord.stop(Duration::from_secs(30)).await;
    for mut p in procs {
        let _ = p.kill();
        let _ = p.wait();
    }

    // Read the archive and the outbox directly now that nothing writes.
    let archive = lockstep_archive::Archive::open(&data.join("archive"), "lockstep.local/log")
        .expect("open the archive");
    let mut duplicates = 0;
    let mut attestations = 0;
    for row in &decided {
        assert_eq!(
            row.state,
            State::Ship,
            "decision equals fault-free: {row:#?}"
        );
        assert!(row.failures.is_empty(), "{row:#?}");
        let per = attestations_in(&archive, &row.source, "1.0", &row.arch);
        let (total, dup) = count_attestations(&per);
        attestations += total;
        duplicates += dup;
        assert_eq!(per.len(), 2, "one attestation per builder: {per:?}");
    }
    let agent_log = |a: &lockstep_tests::AgentInfo| {
        std::fs::read_to_string(dir.path().join(format!("{}.log", a.name))).unwrap_or_default()
    };
    let deduped: usize = agents
        .iter()
        .map(|a| {
            agent_log(a)
                .lines()
                .filter(|l| l.contains("attestation already stored; acking the redelivery"))
                .count()
        })
        .sum();
    let builds: usize = agents
        .iter()
        .map(|a| {
            agent_log(a)
                .lines()
                .filter(|l| l.contains("phase=Building"))
                .count()
        })
        .sum();
    eprintln!(
        "T03 figures: jobs {}, faults {crashes} ({}), lost 0, re-published copies deduped by the \
         agents {deduped}, builds {builds} (fault-free {}), attestations {attestations}, duplicate \
         attestations {duplicates}, decisions differing from fault-free 0 (all ship); wall {:.0} s",
        sources.len(),
        points.join(", "),
        2 * sources.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        decided.len(),
        sources.len(),
        "every job decided: {decided:#?}"
    );
    assert_eq!(duplicates, 0);
    assert_eq!(
        builds,
        2 * sources.len(),
        "a re-published job is not rebuilt"
    );
}
