//! Liveness and progress events: a heartbeat every [`HEARTBEAT`] and one event per phase change
//! (fetching, preparing, building, …, done or failed), published on the `lockstep.events` topic
//! exchange with routing key `agent.<fingerprint>`.
//!
//! Best effort by design: the worker hands events to a bounded channel with `try_send` and goes
//! on; a publisher task on the agent's AMQP connection drains it. A full channel (broker gone,
//! connection stalled) drops events, never a build. The coordinator learns the current state
//! again from the next heartbeat, which carries the agent's current job and phase, and why it
//! takes no jobs when it does not (its scratch disk is full).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use lockstep_proto::v1::{self, AgentEvent, Job, Phase};
use tokio::sync::mpsc;

use crate::config::HEARTBEAT;

/// Events buffered while the publisher cannot keep up; more are dropped.
pub const EVENT_BUFFER: usize = 256;

/// The worker's side: cheap, non-blocking, shareable.
#[derive(Clone)]
pub struct EventSink {
    agent: String,
    fingerprint: String,
    architectures: Vec<String>,
    tx: mpsc::Sender<AgentEvent>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<AgentEvent>>>,
    /// Jobs in progress: job id → (source, phase). Heartbeats report the newest.
    running: Arc<Mutex<BTreeMap<String, (String, Phase)>>>,
    /// Why the agent takes no jobs now (`None`: it takes them). Every event carries it.
    paused: Arc<Mutex<Option<String>>>,
}

impl EventSink {
    pub fn new(agent: &str, fingerprint: &str) -> EventSink {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        EventSink {
            agent: agent.to_string(),
            fingerprint: fingerprint.to_string(),
            architectures: architectures(),
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            running: Arc::default(),
            paused: Arc::default(),
        }
    }

    fn event(&self, job: Option<(&str, &str, Phase)>) -> AgentEvent {
        AgentEvent {
            agent: self.agent.clone(),
            fingerprint: self.fingerprint.clone(),
            job_id: job.map(|j| j.0.to_string()),
            source: job.map(|j| j.1.to_string()),
            phase: job.map(|j| j.2),
            at: Utc::now(),
            architectures: self.architectures.clone(),
            heartbeat_secs: Some(HEARTBEAT.as_secs()),
            paused: self
                .paused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Records why the agent takes no jobs (`None`: it takes them again); a change is announced
    /// at once, without waiting for the next heartbeat. Never waits.
    pub fn set_paused(&self, reason: Option<&str>) {
        {
            let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
            if paused.as_deref() == reason {
                return;
            }
            *paused = reason.map(str::to_owned);
        }
        if self.tx.try_send(self.heartbeat()).is_err() {
            tracing::debug!(?reason, "event buffer full; pause event dropped");
        }
    }

    /// Records a phase change and queues its event; never waits.
    pub fn phase(&self, job: &Job, phase: Phase) {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if phase.is_terminal() {
                running.remove(&job.job_id);
            } else {
                running.insert(job.job_id.clone(), (job.source.clone(), phase));
            }
        }
        let ev = self.event(Some((&job.job_id, &job.source, phase)));
        if self.tx.try_send(ev).is_err() {
            tracing::debug!(job = %job.job_id, %phase, "event buffer full; phase event dropped");
        }
    }

    /// A heartbeat, carrying one running job (if any) so a restarted coordinator catches up.
    fn heartbeat(&self) -> AgentEvent {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let job = running
            .iter()
            .next()
            .map(|(id, (src, ph))| (id.clone(), src.clone(), *ph));
        drop(running);
        self.event(job.as_ref().map(|(a, b, c)| (a.as_str(), b.as_str(), *c)))
    }

    /// Starts publishing on `ch` (a channel of the agent's connection). The task ends when the
    /// returned guard is dropped or the channel fails; a later session starts a new one.
    pub fn start(&self, ch: Channel) -> PublisherGuard {
        let sink = self.clone();
        PublisherGuard(tokio::spawn(async move { sink.publish(ch).await }))
    }

    async fn publish(self, ch: Channel) {
        // One publisher at a time holds the receiver; an old session's task is aborted first.
        let mut rx = self.rx.lock().await;
        // The coordinator declares the exchange, but an agent may come up first (a fresh
        // install, or a coordinator that is down): publishing to a missing exchange closes the
        // channel and every later event would be lost until the next session. Declaring it with
        // the coordinator's arguments is idempotent.
        if let Err(e) = declare_events_exchange(&ch).await {
            tracing::warn!(error = %e, "declaring the events exchange failed; no events this session");
            return;
        }
        let key = format!("agent.{}", self.fingerprint);
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            let ev = tokio::select! {
                _ = tick.tick() => self.heartbeat(),
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
            };
            let Ok(payload) = serde_json::to_vec(&ev) else {
                continue;
            };
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_expiration((HEARTBEAT.as_millis() * 4).to_string().into());
            // No confirms and not mandatory: nobody listening is fine, and a lost event is
            // corrected by the next heartbeat.
            if let Err(e) = ch
                .basic_publish(
                    v1::EVENTS_EXCHANGE.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    props,
                )
                .await
            {
                tracing::debug!(error = %e, "publishing an agent event failed; stopping the event publisher");
                return;
            }
        }
    }
}

/// Declares `lockstep.events` exactly as the coordinator does (durable topic exchange).
pub async fn declare_events_exchange(ch: &Channel) -> Result<(), lapin::Error> {
    ch.exchange_declare(
        v1::EVENTS_EXCHANGE.into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
}

/// Aborts the publisher task when dropped (the AMQP session ended).
pub struct PublisherGuard(tokio::task::JoinHandle<()>);

impl Drop for PublisherGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Debian architectures this machine builds: its own and `all`.
fn architectures() -> Vec<String> {
    let host = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "x86" => "i386",
                "powerpc64" => "ppc64el",
                "s390x" => "s390x",
                other => other,
            }
            .to_string()
        });
    vec![host, "all".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({
            "job_id": "j1", "source": "hello", "version": "1", "arch": "amd64", "kind": "any",
            "dsc": {"name": "hello_1.dsc", "sha256": "0".repeat(64), "size": 1},
            "files": [], "origin": "test", "enqueued_at": "2026-01-01T00:00:00Z"
        }))
        .expect("job")
    }

    #[tokio::test]
    async fn phases_never_block_and_heartbeats_carry_the_running_job() {
        let sink = EventSink::new("a1", "ABCD");
        // Far more events than the buffer holds, with no publisher: none of this waits.
        for _ in 0..(EVENT_BUFFER * 4) {
            sink.phase(&job(), Phase::Building);
        }
        let hb = sink.heartbeat();
        assert_eq!(hb.job_id.as_deref(), Some("j1"));
        assert_eq!(hb.phase, Some(Phase::Building));
        assert_eq!(hb.heartbeat_secs, Some(HEARTBEAT.as_secs()));
        assert!(hb.architectures.contains(&"all".to_string()));
        sink.phase(&job(), Phase::Done);
        assert_eq!(sink.heartbeat().job_id, None);
    }

    #[tokio::test]
    async fn a_pause_is_announced_once_and_carried_by_every_heartbeat_until_lifted() {
        let sink = EventSink::new("a1", "ABCD");
        let mut rx = sink.rx.lock().await;
        assert_eq!(sink.heartbeat().paused, None);
        sink.set_paused(Some("scratch disk full"));
        sink.set_paused(Some("scratch disk full"));
        let ev = rx.try_recv().expect("the pause is announced at once");
        assert_eq!(ev.paused.as_deref(), Some("scratch disk full"));
        assert!(rx.try_recv().is_err(), "announced once, not on every check");
        assert_eq!(
            sink.heartbeat().paused.as_deref(),
            Some("scratch disk full")
        );
        sink.phase(&job(), Phase::Building);
        let ev = rx.try_recv().expect("phase event");
        assert_eq!(ev.paused.as_deref(), Some("scratch disk full"));
        sink.set_paused(None);
        assert_eq!(rx.try_recv().expect("resume announced").paused, None);
        assert_eq!(sink.heartbeat().paused, None);
    }
}
