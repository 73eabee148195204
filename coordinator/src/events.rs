//! Agent liveness: the coordinator listens to agents' heartbeats and phase changes on the
//! `lockstep.events` topic exchange and keeps an in-memory table of who is alive and what each
//! agent is doing.
//!
//! - Agents publish an [`AgentEvent`] every heartbeat interval and at every phase change, routing
//!   key `agent.<fingerprint>`. Events are best effort: an agent never waits for them.
//! - The coordinator consumes through an exclusive, auto-delete queue bound to `agent.#`
//!   ([`spawn_listener`]); nothing here is durable, because liveness after a restart is learned
//!   again from the next heartbeat.
//! - An agent is **stale** after [`MISSED_HEARTBEATS`] heartbeat intervals without any event; the
//!   table keeps what it held (job, source, phase) so operators can see what to requeue.
//! - Every event says whether the agent takes new jobs (`paused`: it does not, e.g. because its
//!   scratch disk is full); the table keeps the last event's word.
//!
//! Served as `GET /api/v1/agents` and `GET /api/v1/progress?source=..` ([`router`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use lockstep_proto::v1::{self, AgentEvent, Phase};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::Histogram;
use crate::service::Service;

/// An agent is stale after this many heartbeat intervals without an event.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Heartbeat interval assumed for agents that do not announce theirs (the agent's default).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Jobs remembered per agent, so `enqueue --wait` still sees a finished job's last phase.
const RECENT_JOBS: usize = 32;
/// Largest event accepted; real events are a few hundred bytes.
const MAX_EVENT_BYTES: usize = 64 * 1024;

pub use lockstep_proto::v1::{AgentView, JobPhase};

struct Entry {
    view: AgentView,
}

/// The in-memory table of agents, fed by [`AgentTable::observe`].
pub struct AgentTable {
    agents: Mutex<HashMap<String, Entry>>,
    /// Build durations (first event of a job to its `done`/`failed`), for `/metrics`.
    pub durations: Histogram,
}

impl Default for AgentTable {
    fn default() -> Self {
        AgentTable {
            agents: Mutex::new(HashMap::new()),
            durations: Histogram::build_durations(),
        }
    }
}

impl AgentTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The table holds only plain values, consistent after any panic.
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one event. Phase changes move the agent's current job; heartbeats refresh
    /// liveness (and, when they carry a job, teach a restarted coordinator what is running).
    pub fn observe(&self, ev: &AgentEvent) {
        let now = Utc::now();
        let mut agents = self.lock();
        let entry = agents
            .entry(ev.fingerprint.to_uppercase())
            .or_insert_with(|| Entry {
                view: AgentView {
                    name: ev.agent.clone(),
                    fingerprint: ev.fingerprint.to_uppercase(),
                    architectures: Vec::new(),
                    first_seen: now,
                    last_heartbeat: now,
                    heartbeat_secs: DEFAULT_HEARTBEAT.as_secs(),
                    stale: false,
                    paused: None,
                    current: None,
                    recent: Vec::new(),
                },
            });
        let v = &mut entry.view;
        v.name = ev.agent.clone();
        // Liveness is judged by our clock: an agent's wrong clock must not make it look alive.
        v.last_heartbeat = now;
        if let Some(s) = ev.heartbeat_secs.filter(|s| *s > 0) {
            v.heartbeat_secs = s;
        }
        if !ev.architectures.is_empty() {
            v.architectures = ev.architectures.clone();
        }
        v.paused = ev.paused.clone();
        let (Some(job_id), Some(phase)) = (&ev.job_id, ev.phase) else {
            return;
        };
        let known = v.recent.iter().position(|j| &j.job_id == job_id);
        let changed = match known {
            Some(i) => v.recent[i].phase != phase,
            None => true,
        };
        if !changed {
            return;
        }
        let jp = match known {
            Some(i) => {
                let mut jp = v.recent.remove(i);
                jp.phase = phase;
                jp.phase_since = now;
                if jp.source.is_none() {
                    jp.source = ev.source.clone();
                }
                jp
            }
            None => JobPhase {
                job_id: job_id.clone(),
                source: ev.source.clone(),
                phase,
                phase_since: now,
                started_at: now,
            },
        };
        if phase.is_terminal() && known.is_some() {
            let secs = (now - jp.started_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.durations.observe(secs);
        }
        v.current = if phase.is_terminal() {
            None
        } else {
            Some(jp.clone())
        };
        v.recent.push(jp);
        if v.recent.len() > RECENT_JOBS {
            v.recent.remove(0);
        }
    }

    /// Every agent, sorted by name, with `stale` judged at `now`.
    pub fn snapshot_at(&self, now: DateTime<Utc>) -> Vec<AgentView> {
        let mut out: Vec<AgentView> = self
            .lock()
            .values()
            .map(|e| {
                let mut v = e.view.clone();
                let limit = chrono::Duration::seconds(
                    (v.heartbeat_secs * u64::from(MISSED_HEARTBEATS)) as i64,
                );
                v.stale = now - v.last_heartbeat > limit;
                v
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.fingerprint).cmp(&(&b.name, &b.fingerprint)));
        out
    }

    pub fn snapshot(&self) -> Vec<AgentView> {
        self.snapshot_at(Utc::now())
    }
}

/// Consumes agent events until `cancel` fires, reconnecting with backoff.
pub fn spawn_listener(svc: Arc<Service>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut nodes = lockstep_proto::broker::Failover::new(svc.cfg.amqp_urls.clone());
        while !cancel.is_cancelled() {
            let Some(conn) = crate::amqp::connect_with_backoff(
                &mut nodes,
                "lockstep-coordinator events",
                &cancel,
            )
            .await
            else {
                return;
            };
            if let Err(e) = listen(&svc, &conn, &cancel).await {
                tracing::warn!(error = %format!("{e:#}"), "agent event listener stopped; reconnecting");
            }
            if !conn.status().connected() {
                nodes.lost();
            }
            let _ = conn.close(200, "coordinator reconnecting".into()).await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

async fn listen(
    svc: &Service,
    conn: &lapin::Connection,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await.context("opening a channel")?;
    // Same declaration as the dispatcher's, so whichever runs first creates it.
    ch.exchange_declare(
        v1::EVENTS_EXCHANGE.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .context("declaring the events exchange")?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the event queue")?;
    ch.queue_bind(
        q.name().as_str().into(),
        v1::EVENTS_EXCHANGE.into(),
        "agent.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .context("binding the event queue")?;
    let mut consumer = ch
        .basic_consume(
            q.name().as_str().into(),
            "lockstep-coordinator-events".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consuming agent events")?;
    tracing::info!(queue = %q.name(), "listening to agent events");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            next = consumer.next() => match next {
                None => anyhow::bail!("the broker cancelled the event consumer"),
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("receiving agent events")),
                Some(Ok(d)) => {
                    if d.data.len() > MAX_EVENT_BYTES {
                        tracing::warn!(bytes = d.data.len(), "ignored an oversized agent event");
                        continue;
                    }
                    match serde_json::from_slice::<AgentEvent>(&d.data) {
                        Ok(ev) => svc.ops.agents.observe(&ev),
                        Err(e) => tracing::warn!(error = %e, routing_key = %d.routing_key, "ignored an undecodable agent event"),
                    }
                }
            }
        }
    }
}

/// `GET /api/v1/agents` and `GET /api/v1/progress?source=..`.
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/progress", get(progress))
        .with_state(svc)
}

async fn agents(State(svc): State<Arc<Service>>) -> Json<Vec<AgentView>> {
    Json(svc.ops.agents.snapshot())
}

#[derive(Deserialize)]
struct ProgressQuery {
    source: Option<String>,
}

/// One (agent, job) phase, for `lockstep enqueue --wait`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgressRow {
    pub agent: String,
    pub fingerprint: String,
    pub stale: bool,
    pub job_id: String,
    pub source: Option<String>,
    pub phase: Phase,
    pub phase_since: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// Seconds in the current phase, by the coordinator's clock.
    pub phase_secs: i64,
    /// Seconds since the agent started the job.
    pub elapsed_secs: i64,
}

async fn progress(State(svc): State<Arc<Service>>, Query(q): Query<ProgressQuery>) -> Response {
    let now = Utc::now();
    let mut rows = Vec::new();
    for a in svc.ops.agents.snapshot_at(now) {
        for j in &a.recent {
            if q.source.is_some() && j.source != q.source {
                continue;
            }
            let end = if j.phase.is_terminal() {
                j.phase_since
            } else {
                now
            };
            rows.push(ProgressRow {
                agent: a.name.clone(),
                fingerprint: a.fingerprint.clone(),
                stale: a.stale,
                job_id: j.job_id.clone(),
                source: j.source.clone(),
                phase: j.phase,
                phase_since: j.phase_since,
                started_at: j.started_at,
                phase_secs: (now - j.phase_since).num_seconds(),
                elapsed_secs: (end - j.started_at).num_seconds(),
            });
        }
    }
    Json(rows).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(job: Option<&str>, phase: Option<Phase>) -> AgentEvent {
        AgentEvent {
            agent: "a1".into(),
            fingerprint: "abcd".into(),
            job_id: job.map(str::to_string),
            source: job.map(|_| "hello".to_string()),
            phase,
            at: Utc::now(),
            architectures: vec!["amd64".into()],
            heartbeat_secs: Some(2),
            paused: None,
        }
    }

    #[test]
    fn phases_move_the_current_job_and_a_silent_agent_turns_stale_holding_it() {
        let t = AgentTable::default();
        t.observe(&ev(Some("j1"), Some(Phase::Fetching)));
        t.observe(&ev(Some("j1"), Some(Phase::Building)));
        t.observe(&ev(None, None));
        let now = Utc::now();
        let v = &t.snapshot_at(now)[0];
        assert_eq!(v.fingerprint, "ABCD");
        assert!(!v.stale);
        assert_eq!(v.current.as_ref().map(|c| c.phase), Some(Phase::Building));
        // 3 missed heartbeats of 2 s.
        let later = &t.snapshot_at(now + chrono::Duration::seconds(7))[0];
        assert!(later.stale);
        assert_eq!(
            later.current.as_ref().map(|c| c.job_id.as_str()),
            Some("j1")
        );
        t.observe(&ev(Some("j1"), Some(Phase::Done)));
        let v = &t.snapshot()[0];
        assert!(v.current.is_none());
        assert_eq!(v.recent.last().map(|j| j.phase), Some(Phase::Done));
        assert_eq!(t.durations.snapshot().count, 1);
    }

    #[test]
    fn an_agent_is_paused_until_an_event_says_otherwise() {
        let t = AgentTable::default();
        t.observe(&ev(None, None));
        assert_eq!(t.snapshot()[0].paused, None);
        let full = AgentEvent {
            paused: Some("scratch disk full".into()),
            ..ev(None, None)
        };
        t.observe(&full);
        assert_eq!(t.snapshot()[0].paused.as_deref(), Some("scratch disk full"));
        // A job's phase change from the paused agent (one started before the disk filled).
        t.observe(&AgentEvent {
            paused: Some("scratch disk full".into()),
            ..ev(Some("j1"), Some(Phase::Building))
        });
        let v = &t.snapshot()[0];
        assert_eq!(v.paused.as_deref(), Some("scratch disk full"));
        assert_eq!(v.current.as_ref().map(|c| c.phase), Some(Phase::Building));
        t.observe(&ev(None, None));
        assert_eq!(t.snapshot()[0].paused, None);
    }
}
