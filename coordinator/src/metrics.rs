//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4), and the small amount
//! of operational state behind it ([`Ops`]).
//!
//! Written by hand rather than with a metrics crate: almost every value is read at scrape time
//! from the job table, the archive and the agent table (the source of truth), so a registry of
//! long-lived mutable metrics would only duplicate state; the format is a few line shapes whose
//! escaping rules are implemented in [`Exposition`] and checked by an independent parser in the
//! integration suite (`tests/tests/ops_metrics.rs`).
//!
//! Families: `lockstep_jobs`, `lockstep_packages`, `lockstep_queue_messages`,
//! `lockstep_broker_up`, `lockstep_decisions_total`, `lockstep_attestation_refusals_total`,
//! `lockstep_build_duration_seconds` (histogram), `lockstep_archive_*` (sizes, and the group
//! commit's `commits_total`, `commit_appends_total`, `commit_seconds_total`), `lockstep_log_leaves`,
//! `lockstep_agents`, `lockstep_agents_paused`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lockstep_proto::v1::{self, Decision, State as QState};

use crate::events::AgentTable;
use crate::service::{kind, Service, ServiceError};

/// How long a broker queue-depth reading is reused: scrapes and page loads within this window do
/// not open a new AMQP connection each.
pub const BROKER_DEPTH_CACHE: Duration = Duration::from_secs(5);
/// How long a queue-depth reading may take before the broker is reported unreachable.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

/// Operational state of a running coordinator that is not evidence: agent liveness, counters.
#[derive(Default)]
pub struct Ops {
    pub agents: AgentTable,
    pub refusals: Refusals,
    broker: tokio::sync::Mutex<Option<(Instant, BrokerDepth)>>,
}

/// Attestations refused by `Service::attest`, by reason class.
#[derive(Default)]
pub struct Refusals(Mutex<BTreeMap<&'static str, u64>>);

impl Refusals {
    /// Counts a refusal; internal errors are not refusals and are not counted.
    pub fn count(&self, e: &ServiceError) {
        let class = match e {
            ServiceError::BadRequest(_) => "malformed",
            ServiceError::Forbidden(_) => "signature_or_trust",
            ServiceError::NotFound(_) => "unknown_job",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::Unprocessable(_) => "mismatch",
            ServiceError::TooLarge(_) => "too_large",
            ServiceError::Internal(_) => return,
        };
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A fixed-bucket histogram.
pub struct Histogram {
    bounds: Vec<f64>,
    state: Mutex<HistogramSnapshot>,
}

/// Counts per bucket (not cumulative), sum and count.
#[derive(Clone, Debug, Default)]
pub struct HistogramSnapshot {
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: Vec<f64>) -> Histogram {
        let n = bounds.len();
        Histogram {
            bounds,
            state: Mutex::new(HistogramSnapshot {
                buckets: vec![0; n],
                ..Default::default()
            }),
        }
    }

    /// Buckets for package builds: small packages take seconds, large ones hours.
    pub fn build_durations() -> Histogram {
        Histogram::new(vec![
            5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
        ])
    }

    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            s.buckets[i] += 1;
        }
        s.sum += v;
        s.count += 1;
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Ready messages per builder queue, as the broker reports them.
#[derive(Clone, Debug)]
pub struct BrokerDepth {
    /// (queue, messages) per trusted builder.
    pub queues: Vec<(String, u32)>,
    /// Why the broker could not be asked, if it could not.
    pub error: Option<String>,
}

impl Ops {
    /// Message counts of every builder queue (passive declares), cached for
    /// [`BROKER_DEPTH_CACHE`].
    pub async fn broker_depth(&self, svc: &Service) -> BrokerDepth {
        let mut cache = self.broker.lock().await;
        if let Some((at, d)) = cache.as_ref() {
            if at.elapsed() < BROKER_DEPTH_CACHE {
                return d.clone();
            }
        }
        let queues: Vec<String> = svc
            .builder_fingerprints()
            .iter()
            .map(|f| v1::builder_queue(f))
            .collect();
        let d = match tokio::time::timeout(BROKER_TIMEOUT, read_depths(&svc.cfg.amqp_urls, &queues))
            .await
        {
            Ok(Ok(q)) => BrokerDepth {
                queues: q,
                error: None,
            },
            Ok(Err(e)) => BrokerDepth {
                queues: Vec::new(),
                error: Some(format!("{e:#}")),
            },
            Err(_) => BrokerDepth {
                queues: Vec::new(),
                error: Some(format!(
                    "RabbitMQ did not answer within {}s",
                    BROKER_TIMEOUT.as_secs()
                )),
            },
        };
        *cache = Some((Instant::now(), d.clone()));
        d
    }
}

async fn read_depths(urls: &[String], queues: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    use anyhow::Context;
    // The first node of the cluster that answers (every node serves every queue's counts).
    let mut conn = None;
    let mut last_error = None;
    for url in urls {
        match lapin::Connection::connect(
            url,
            lapin::ConnectionProperties::default()
                .with_connection_name("lockstep-coordinator queue depth".into()),
        )
        .await
        {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let conn = match (conn, last_error) {
        (Some(c), _) => c,
        (None, Some(e)) => return Err(e).context("connecting to RabbitMQ to read queue depths"),
        (None, None) => anyhow::bail!("no broker URL configured"),
    };
    let mut out = Vec::new();
    for q in queues {
        // A passive declare fails and closes the channel when the queue does not exist (yet),
        // so each queue gets its own channel.
        let ch = conn.create_channel().await.context("opening a channel")?;
        match ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Ok(info) => {
                out.push((q.clone(), info.message_count()));
                let _ = ch.close(200, "done".into()).await;
            }
            Err(_) => out.push((q.clone(), 0)),
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Builds the text exposition: `# HELP`, `# TYPE`, then samples, family by family.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled as Prometheus does.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value(v));
    }

    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (b, n) in bounds.iter().zip(&h.buckets) {
            cumulative += n;
            self.sample(
                &format!("{name}_bucket"),
                &[("le", &value(*b))],
                cumulative as f64,
            );
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Everything `/metrics` reads from disk, gathered in one blocking call.
struct Stored {
    unconfirmed: u64,
    jobs: u64,
    packages: BTreeMap<&'static str, u64>,
    decisions: BTreeMap<&'static str, u64>,
    archive: lockstep_archive::stats::ArchiveStats,
    log_leaves: u64,
}

fn stored(svc: &Service) -> Result<Stored, ServiceError> {
    let mut packages: BTreeMap<&'static str, u64> =
        [QState::Pending, QState::Ship, QState::Hold, QState::Failed]
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect();
    // Counted row by row: a scrape never holds every package's status at once.
    let mut jobs = 0;
    svc.status_each(None, |r| {
        *packages.entry(r.state.as_str()).or_default() += 1;
        jobs += r.job_ids.len() as u64;
        Ok(())
    })?;
    let mut decisions = packages.keys().map(|k| (*k, 0)).collect::<BTreeMap<_, _>>();
    svc.archive.each_record_of_kind(kind::DECISION, |r| {
        if let Ok(d) = serde_json::from_slice::<Decision>(&r.body) {
            *decisions.entry(d.state.as_str()).or_default() += 1;
        }
        Ok(())
    })?;
    Ok(Stored {
        unconfirmed: svc.jobs.count_unconfirmed()?,
        jobs,
        packages,
        decisions,
        archive: svc.archive.stats()?,
        log_leaves: svc.archive.log_size()?,
    })
}

/// The whole exposition.
pub async fn render(svc: Arc<Service>) -> Result<String, ServiceError> {
    let s2 = svc.clone();
    let st = tokio::task::spawn_blocking(move || stored(&s2))
        .await
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("metrics task failed: {e}")))??;
    let depth = svc.ops.broker_depth(&svc).await;
    let mut x = Exposition::default();

    x.family(
        "lockstep_jobs",
        "gauge",
        "Rebuild jobs: undispatched (not yet confirmed by RabbitMQ) and dispatched.",
    );
    x.sample(
        "lockstep_jobs",
        &[("state", "undispatched")],
        st.unconfirmed as f64,
    );
    x.sample(
        "lockstep_jobs",
        &[("state", "dispatched")],
        st.jobs.saturating_sub(st.unconfirmed) as f64,
    );

    x.family(
        "lockstep_packages",
        "gauge",
        "Packages (source, version, arch) by current quorum state.",
    );
    for (state, n) in &st.packages {
        x.sample("lockstep_packages", &[("state", state)], *n as f64);
    }

    x.family(
        "lockstep_broker_up",
        "gauge",
        "1 if RabbitMQ answered the last queue-depth reading, else 0.",
    );
    x.sample(
        "lockstep_broker_up",
        &[],
        if depth.error.is_none() { 1.0 } else { 0.0 },
    );
    x.family(
        "lockstep_queue_messages",
        "gauge",
        "Jobs waiting in each builder's RabbitMQ queue (ready messages).",
    );
    for (q, n) in &depth.queues {
        x.sample("lockstep_queue_messages", &[("queue", q)], f64::from(*n));
    }

    x.family(
        "lockstep_decisions_total",
        "counter",
        "Signed decisions recorded, by the state they decided.",
    );
    for (state, n) in &st.decisions {
        x.sample("lockstep_decisions_total", &[("state", state)], *n as f64);
    }

    x.family(
        "lockstep_attestation_refusals_total",
        "counter",
        "Attestations refused since the coordinator started, by reason class.",
    );
    let refusals = svc.ops.refusals.snapshot();
    for class in [
        "malformed",
        "signature_or_trust",
        "unknown_job",
        "conflict",
        "mismatch",
        "too_large",
    ] {
        let n = refusals.get(class).copied().unwrap_or(0);
        x.sample(
            "lockstep_attestation_refusals_total",
            &[("reason", class)],
            n as f64,
        );
    }

    let h = &svc.ops.agents.durations;
    x.histogram(
        "lockstep_build_duration_seconds",
        "Time from an agent's first phase event for a job to its done or failed event.",
        &h.bounds,
        &h.snapshot(),
    );

    let a = st.archive;
    x.family(
        "lockstep_archive_blob_bytes",
        "gauge",
        "Bytes of distinct blobs stored in the archive.",
    );
    x.sample("lockstep_archive_blob_bytes", &[], a.blob_bytes as f64);
    x.family(
        "lockstep_archive_linked_bytes",
        "gauge",
        "Bytes referred to by archive records: what would be stored without deduplication.",
    );
    x.sample("lockstep_archive_linked_bytes", &[], a.linked_bytes as f64);
    x.family(
        "lockstep_archive_dedup_ratio",
        "gauge",
        "linked_bytes / blob_bytes (1 for an empty archive).",
    );
    x.sample("lockstep_archive_dedup_ratio", &[], a.dedup_ratio());
    x.family(
        "lockstep_archive_blobs",
        "gauge",
        "Distinct blobs stored in the archive.",
    );
    x.sample("lockstep_archive_blobs", &[], a.blobs as f64);
    x.family(
        "lockstep_archive_records",
        "gauge",
        "Records (jobs, attestations, failures, decisions, uploads) in the archive.",
    );
    x.sample("lockstep_archive_records", &[], a.records as f64);
    let c = svc.archive.commit_stats();
    x.family(
        "lockstep_archive_commits_total",
        "counter",
        "Group commits of the archive since the coordinator started (each one fsync and one \
         signed checkpoint).",
    );
    x.sample("lockstep_archive_commits_total", &[], c.commits as f64);
    x.family(
        "lockstep_archive_commit_appends_total",
        "counter",
        "Appends (an attestation with the decision it causes, a job, a failure report...) \
         carried by those commits; divided by lockstep_archive_commits_total, how many uploads \
         share one fsync.",
    );
    x.sample(
        "lockstep_archive_commit_appends_total",
        &[],
        c.appends as f64,
    );
    x.family(
        "lockstep_archive_commit_seconds_total",
        "counter",
        "Wall time spent in those commits, fsync included; divided by \
         lockstep_archive_commits_total, the mean commit time.",
    );
    x.sample(
        "lockstep_archive_commit_seconds_total",
        &[],
        c.busy.as_secs_f64(),
    );
    x.family(
        "lockstep_log_leaves",
        "gauge",
        "Leaves of the transparency log (its size).",
    );
    x.sample("lockstep_log_leaves", &[], st.log_leaves as f64);

    let agents = svc.ops.agents.snapshot();
    x.family(
        "lockstep_agents",
        "gauge",
        "Agents seen on the events exchange, live or stale (three missed heartbeats).",
    );
    let stale = agents.iter().filter(|a| a.stale).count();
    x.sample(
        "lockstep_agents",
        &[("state", "live")],
        (agents.len() - stale) as f64,
    );
    x.sample("lockstep_agents", &[("state", "stale")], stale as f64);
    x.family(
        "lockstep_agents_paused",
        "gauge",
        "Live agents that take no jobs (their scratch disk is below min_free_bytes).",
    );
    let paused = agents
        .iter()
        .filter(|a| !a.stale && a.paused.is_some())
        .count();
    x.sample("lockstep_agents_paused", &[], paused as f64);
    Ok(x.finish())
}

/// `GET /metrics`.
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(svc)
}

async fn metrics(State(svc): State<Arc<Service>>) -> Response {
    match render(svc).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("lockstep: cannot read the coordinator's state for metrics: {e}\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped_and_histograms_are_cumulative() {
        let mut x = Exposition::default();
        x.family("m", "gauge", "a\\b\nc");
        x.sample("m", &[("q", "a\"b\\c\nd")], 1.0);
        let h = Histogram::new(vec![1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        x.histogram("h", "help", &[1.0, 10.0], &h.snapshot());
        let t = x.finish();
        assert!(t.contains("# HELP m a\\\\b\\nc\n"), "{t}");
        assert!(t.contains(r#"m{q="a\"b\\c\nd"} 1"#), "{t}");
        assert!(t.contains("h_bucket{le=\"1\"} 1\nh_bucket{le=\"10\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 55.5\nh_count 3\n"), "{t}");
    }
}
