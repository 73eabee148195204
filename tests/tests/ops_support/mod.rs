//! Helpers of the ops_* tests (issue 5): headless Chromium from Debian's `chromium` package, a
//! Prometheus text-format parser, and a simulated agent on the events exchange.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use lockstep_proto::v1::{AgentEvent, Phase, EVENTS_EXCHANGE};

/// Longest a headless Chromium run may take before the test fails.
const CHROMIUM_TIMEOUT_SECS: &str = "90";

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    let out = Command::new("timeout")
        .arg(CHROMIUM_TIMEOUT_SECS)
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("running chromium (Debian package `chromium`, installed by scripts/setup)");
    assert!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` after Chromium loaded and rendered it.
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = chromium(&["--dump-dom", url], profile.path());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Saves a screenshot of `url` as `target/ops-screenshots/<name>.png` and returns its path.
pub fn screenshot(url: &str, name: &str) -> PathBuf {
    let dir = lockstep_tests::repo_root().join("target/ops-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    let profile = tempfile::tempdir().expect("profile dir");
    chromium(
        &[
            &format!("--screenshot={}", path.display()),
            "--window-size=1280,1100",
            url,
        ],
        profile.path(),
    );
    let png = std::fs::read(&path).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    assert!(
        png.len() > 10_000,
        "the screenshot is not blank ({} bytes)",
        png.len()
    );
    path
}

/// The visible text of a dumped DOM: tags removed, entities decoded, whitespace collapsed.
pub fn text(dom: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut skip = false;
    let lower = dom.to_lowercase();
    let mut i = 0;
    let bytes = dom.as_bytes();
    while i < bytes.len() {
        if lower[i..].starts_with("<style") {
            skip = true;
        }
        if skip && lower[i..].starts_with("</style>") {
            skip = false;
        }
        let c = dom[i..].chars().next().expect("in bounds");
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag && !skip => out.push(c),
            _ => {}
        }
        i += c.len_utf8();
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Fetches and parses `/metrics`.
pub async fn scrape(base: &str) -> (String, prometheus_parse::Scrape) {
    let resp = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct}"
    );
    let body = resp.text().await.expect("metrics body");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses");
    (body, parsed)
}

/// The value of the sample `metric` whose labels include `labels`.
pub fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&prometheus_parse::Sample> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one sample {metric}{labels:?}: {found:?}"
    );
    match &found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{metric} is not a plain value: {other:?}"),
    }
}

/// Pretends to be an agent: publishes events as a real agent does.
pub struct FakeAgent {
    pub name: String,
    pub fingerprint: String,
    conn: Connection,
    ch: Channel,
}

impl FakeAgent {
    pub async fn connect(amqp: &str, name: &str, fingerprint: &str) -> FakeAgent {
        let conn = Connection::connect(amqp, ConnectionProperties::default())
            .await
            .expect("connecting to the test vhost");
        let ch = conn.create_channel().await.expect("channel");
        // As the real agent's event publisher does: the coordinator may not have declared it yet.
        lockstep_agent::events::declare_events_exchange(&ch)
            .await
            .expect("declaring the events exchange");
        FakeAgent {
            name: name.into(),
            fingerprint: fingerprint.into(),
            conn,
            ch,
        }
    }

    pub async fn send(&self, job: Option<(&str, &str, Phase)>, heartbeat_secs: u64) {
        let ev = AgentEvent {
            agent: self.name.clone(),
            fingerprint: self.fingerprint.clone(),
            job_id: job.map(|j| j.0.to_string()),
            source: job.map(|j| j.1.to_string()),
            phase: job.map(|j| j.2),
            at: chrono::Utc::now(),
            architectures: vec!["amd64".into(), "all".into()],
            heartbeat_secs: Some(heartbeat_secs),
            paused: None,
        };
        self.ch
            .basic_publish(
                EVENTS_EXCHANGE.into(),
                format!("agent.{}", self.fingerprint).as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&ev).expect("event serialises"),
                BasicProperties::default(),
            )
            .await
            .expect("publishing an event");
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "test done".into()).await;
    }
}
