//! AMQP transport: topology, confirmed job dispatch, decision publishing.
//!
//! Topology (declared by the coordinator, which knows the trusted builders from the policy):
//! - `lockstep.jobs` (topic) → one durable **quorum queue per builder identity**
//!   (`lockstep.build.<fingerprint>`), so each job reaches every independent builder, and agents
//!   sharing an identity share its queue;
//! - builder queues dead-letter to `lockstep.dead` after `delivery_limit` deliveries;
//! - `lockstep.decisions` (topic, routing key `<state>.<arch>.<source>`) and `lockstep.events`.
//!
//! Jobs are published `mandatory` with publisher confirms: an unroutable publish comes back acked
//! *with the message returned*, which is a failed dispatch, not a success. The job table is the
//! outbox: a job counts as dispatched only once the broker confirmed it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lockstep_proto::broker::Failover;
use lockstep_proto::v1::{self, Decision, Job};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{DISPATCH_RETRY, MAX_BACKOFF};
use crate::jobs::JobStore;

/// Jobs published per dispatch round before checking for shutdown.
const DISPATCH_BATCH: usize = 500;
/// How long one broker node may take to accept a connection before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of a builder queue. Agents passively declare, so only the coordinator sets these.
pub fn builder_queue_args(delivery_limit: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(delivery_limit as i32),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(v1::DEAD_LETTER_EXCHANGE.into()),
    );
    args
}

/// Declares exchanges and the queues of `builders` (fingerprints).
pub async fn declare_topology(
    ch: &Channel,
    builders: &[String],
    delivery_limit: u32,
) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (v1::JOBS_EXCHANGE, ExchangeKind::Topic),
        (v1::DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
        (v1::DECISIONS_EXCHANGE, ExchangeKind::Topic),
        (v1::EVENTS_EXCHANGE, ExchangeKind::Topic),
    ] {
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await
            .with_context(|| format!("declaring exchange {name}"))?;
    }
    let qopts = QueueDeclareOptions::durable();
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(v1::DEAD_LETTER_QUEUE.into(), qopts, dead_args)
        .await
        .context("declaring the dead-letter queue")?;
    ch.queue_bind(
        v1::DEAD_LETTER_QUEUE.into(),
        v1::DEAD_LETTER_EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .context("binding the dead-letter queue")?;
    for fpr in builders {
        let q = v1::builder_queue(fpr);
        ch.queue_declare(q.as_str().into(), qopts, builder_queue_args(delivery_limit))
            .await
            .with_context(|| format!("declaring builder queue {q}"))?;
        ch.queue_bind(
            q.as_str().into(),
            v1::JOBS_EXCHANGE.into(),
            "job.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding builder queue {q}"))?;
    }
    Ok(())
}

/// Connects to the first broker node of `nodes` that answers, in [`Failover`] order (the node of
/// the previous connection first, unless that connection was lost); after a round in which none
/// answered, waits with exponential backoff and tries again, until `cancel` fires.
pub async fn connect_with_backoff(
    nodes: &mut Failover,
    name: &str,
    cancel: &CancellationToken,
) -> Option<Connection> {
    let mut delay = Duration::from_millis(200);
    loop {
        for (i, url) in nodes.round() {
            let props = ConnectionProperties::default().with_connection_name(name.into());
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return None,
                r = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&url, props)) => r,
            };
            let error = match attempt {
                Ok(Ok(c)) => {
                    nodes.connected(i);
                    tracing::info!(url = %crate::config::redact_url(&url), connection = name, "connected to RabbitMQ");
                    return Some(c);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            };
            if nodes.len() > 1 {
                tracing::warn!(
                    %error,
                    url = %crate::config::redact_url(&url),
                    "cannot reach this RabbitMQ node; trying the next one"
                );
            } else {
                tracing::warn!(
                    %error,
                    url = %crate::config::redact_url(&url),
                    retry_in = ?delay,
                    "cannot reach RabbitMQ; is rabbitmq-server running? retrying"
                );
            }
        }
        if nodes.len() > 1 {
            tracing::warn!(nodes = nodes.len(), retry_in = ?delay, "no RabbitMQ node reachable; retrying");
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

/// Publishes one message with confirms; an unroutable or nacked publish is an error.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    payload: &[u8],
    mandatory: bool,
) -> anyhow::Result<()> {
    let pending = start_publish(ch, exchange, routing_key, message_id, payload, mandatory).await?;
    await_confirm(pending, routing_key).await
}

/// Sends one persistent message on a channel in confirm mode; the broker's answer comes later
/// through [`await_confirm`].
pub async fn start_publish(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    payload: &[u8],
    mandatory: bool,
) -> anyhow::Result<lapin::PublisherConfirm> {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id.into());
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions {
            mandatory,
            ..Default::default()
        },
        payload,
        props,
    )
    .await
    .context("publishing")
}

/// Waits for the broker's confirmation of one publish; unroutable or nacked is an error.
pub async fn await_confirm(
    pending: lapin::PublisherConfirm,
    routing_key: &str,
) -> anyhow::Result<()> {
    let confirm = pending
        .await
        .context("waiting for the broker's confirmation")?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(ret)) => bail!(
            "unroutable: the broker returned the message ({} {}): no queue is bound for {routing_key}",
            ret.reply_code,
            ret.reply_text
        ),
        Confirmation::Nack(_) => bail!("the broker refused the message (nack)"),
        Confirmation::NotRequested => bail!("publisher confirms are not enabled on this channel"),
    }
}

/// Handle used by the rest of the coordinator to wake the dispatcher and publish decisions.
#[derive(Clone)]
pub struct Dispatcher {
    wake: Arc<Notify>,
    decisions: mpsc::Sender<Decision>,
}

impl Dispatcher {
    /// Asks the dispatcher to publish unconfirmed jobs now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Queues a decision for publishing on the decisions exchange (best effort: the decision is
    /// already stored and served over HTTP).
    pub fn publish_decision(&self, d: Decision) {
        if self.decisions.try_send(d).is_err() {
            tracing::warn!("decision publish queue full; the decision stays available over HTTP");
        }
    }
}

/// Settings the dispatcher needs.
pub struct DispatchSettings {
    /// Broker nodes, tried in turn (`Config::amqp_urls`).
    pub amqp_urls: Vec<String>,
    pub delivery_limit: u32,
    /// Returns the current trusted builder fingerprints (the policy may be reloaded).
    pub builders: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

/// Starts the dispatcher task; it runs until `cancel` fires.
pub fn spawn_dispatcher(
    settings: DispatchSettings,
    jobs: Arc<JobStore>,
    cancel: CancellationToken,
) -> (Dispatcher, tokio::task::JoinHandle<()>) {
    let wake = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel(10_000);
    let handle = tokio::spawn(dispatch_loop(settings, jobs, wake.clone(), rx, cancel));
    (
        Dispatcher {
            wake,
            decisions: tx,
        },
        handle,
    )
}

async fn dispatch_loop(
    settings: DispatchSettings,
    jobs: Arc<JobStore>,
    wake: Arc<Notify>,
    mut decisions: mpsc::Receiver<Decision>,
    cancel: CancellationToken,
) {
    let mut nodes = Failover::new(settings.amqp_urls.clone());
    while !cancel.is_cancelled() {
        let Some(conn) = connect_with_backoff(&mut nodes, "lockstep-coordinator", &cancel).await
        else {
            return;
        };
        match run_connection(&settings, &conn, &jobs, &wake, &mut decisions, &cancel).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "AMQP session ended; reconnecting"),
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
}

async fn run_connection(
    settings: &DispatchSettings,
    conn: &Connection,
    jobs: &Arc<JobStore>,
    wake: &Notify,
    decisions: &mut mpsc::Receiver<Decision>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // Connection errors (the node went away) end the session at once, so the dispatcher fails
    // over to the next node even while it has nothing to publish.
    let mut events = Box::pin(conn.events_listener());
    let ch = conn.create_channel().await.context("opening a channel")?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let mut declared = (settings.builders)();
    declare_topology(&ch, &declared, settings.delivery_limit).await?;
    tracing::info!(
        builders = declared.len(),
        "connected to RabbitMQ; topology declared"
    );
    loop {
        // Newly trusted builders get their queue before any further job is published.
        let now = (settings.builders)();
        if now != declared {
            declare_topology(&ch, &now, settings.delivery_limit).await?;
            declared = now;
        }
        let pending = {
            let jobs = jobs.clone();
            tokio::task::spawn_blocking(move || jobs.unconfirmed(DISPATCH_BATCH))
                .await
                .context("job store task")??
        };
        let mut failed = false;
        for row in &pending {
            let job: &Job = &row.job;
            let payload = serde_json::to_vec(job)?;
            let key = v1::job_routing_key(&job.arch, &job.source);
            let published = async {
                let pending =
                    start_publish(&ch, v1::JOBS_EXCHANGE, &key, &job.job_id, &payload, true)
                        .await?;
                // T03: a crash here leaves a job the broker may hold but the outbox still lists
                // as unconfirmed; it is published again after the restart.
                crate::failpoint::hit("dispatch-before-confirm").await;
                await_confirm(pending, &key).await
            };
            match published.await {
                Ok(()) => {
                    crate::failpoint::hit("dispatch-before-mark").await;
                    let (j, id) = (jobs.clone(), job.job_id.clone());
                    tokio::task::spawn_blocking(move || j.mark_confirmed(&id))
                        .await
                        .context("job store task")??;
                    tracing::info!(job = %job.job_id, source = %job.source, version = %job.version, arch = %job.arch, "job dispatched (confirmed)");
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::error!(job = %job.job_id, error = %msg, "dispatch failed; will retry");
                    let (j, id) = (jobs.clone(), job.job_id.clone());
                    tokio::task::spawn_blocking(move || j.mark_dispatch_error(&id, &msg))
                        .await
                        .context("job store task")??;
                    failed = true;
                    if !ch.status().connected() {
                        bail!("channel closed while dispatching");
                    }
                    break;
                }
            }
        }
        if pending.len() == DISPATCH_BATCH && !failed {
            continue;
        }
        let retry = if failed || !pending.is_empty() {
            DISPATCH_RETRY
        } else {
            Duration::from_secs(60)
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(retry) => {}
            Some(ev) = events.next() => {
                if let lapin::Event::Error(e) = ev {
                    bail!("connection lost: {e}");
                }
            }
            Some(d) = decisions.recv() => {
                let key = format!("{}.{}.{}", d.state, d.arch, d.source);
                let payload = serde_json::to_vec(&d)?;
                let id = lockstep_proto::Sha256Digest::of(&d.canonical_bytes()).to_hex();
                // Decisions are for whoever subscribes: not mandatory, no subscriber is fine.
                if let Err(e) = publish_confirmed(&ch, v1::DECISIONS_EXCHANGE, &key, &id, &payload, false).await {
                    tracing::warn!(error = %format!("{e:#}"), "publishing a decision failed");
                }
            }
        }
        if !conn.status().connected() {
            bail!("connection lost");
        }
    }
}
