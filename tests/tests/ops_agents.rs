//! Agent liveness (issue 5): agents' heartbeats and phases reach the coordinator; an agent that
//! goes silent is shown stale with the job it held — by `lockstep agents`, its exit code, the
//! web page in headless Chromium and `/metrics`.

mod ops_support;

use std::time::{Duration, Instant};

use lockstep_proto::v1::Phase;
use lockstep_tests::{Cluster, ClusterOptions};
use ops_support::{dump_dom, scrape, text, value, FakeAgent};

const FPR: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_turns_stale_and_still_shows_the_job_it_held() {
    let c = Cluster::start(
        "ops-stale",
        ClusterOptions {
            agents: 0,
            ..Default::default()
        },
    )
    .await
    .expect("cluster");
    // Before any heartbeat: an explanation, exit 0.
    let out = c.cli(&["agents"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("no agents"), "{}", stdout(&out));

    let agent = FakeAgent::connect(&c.vhost.url(), "ops-agent-1", FPR).await;
    // The coordinator's listener may still be binding its queue: send until it is seen.
    let started = Instant::now();
    agent
        .send(Some(("job-1", "hello", Phase::Fetching)), 1)
        .await;
    loop {
        agent
            .send(Some(("job-1", "hello", Phase::Building)), 1)
            .await;
        let seen = c.coordinator.ops.agents.snapshot();
        if seen
            .iter()
            .any(|a| a.current.as_ref().map(|j| j.phase) == Some(Phase::Building))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the coordinator never saw the agent's events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Live: the table, JSON and exit code 0.
    let out = c.cli(&["agents"]);
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    for want in [
        "ops-agent-1",
        "live",
        "amd64,all",
        "hello building",
        "job-1",
        FPR,
    ] {
        assert!(s.contains(want), "`lockstep agents` lacks {want:?}:\n{s}");
    }
    let out = c.cli(&["agents", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["fingerprint"], FPR);
    assert_eq!(v[0]["stale"], false);
    assert_eq!(v[0]["current"]["phase"], "building");
    assert_eq!(v[0]["heartbeat_secs"], 1);
    let (_, m) = scrape(&c.url).await;
    assert_eq!(value(&m, "lockstep_agents", &[("state", "live")]), 1.0);
    assert_eq!(value(&m, "lockstep_agents", &[("state", "stale")]), 0.0);

    // Silence: three missed 1 s heartbeats make it stale.
    agent.close().await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let out = c.cli(&["agents"]);
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "stale agents exit 3:\n{s}");
    for want in ["STALE", "held: hello building", "job-1"] {
        assert!(s.contains(want), "`lockstep agents` lacks {want:?}:\n{s}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stale"),
        "stderr says why the exit code is 3"
    );
    let (_, m) = scrape(&c.url).await;
    assert_eq!(value(&m, "lockstep_agents", &[("state", "stale")]), 1.0);
    assert_eq!(value(&m, "lockstep_agents", &[("state", "live")]), 0.0);

    // The web page, rendered by a real browser, shows the same thing.
    let page = text(&dump_dom(&format!("{}/", c.url)));
    for want in [
        "Agents",
        "ops-agent-1",
        FPR,
        "stale",
        "no heartbeat for",
        "held: hello building",
        "job-1",
    ] {
        assert!(page.contains(want), "the page lacks {want:?}:\n{page}");
    }
    c.stop().await;
}
