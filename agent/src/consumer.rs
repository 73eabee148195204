//! The AMQP side of the agent: consume this identity's queue with manual acks and a prefetch of
//! the build concurrency, hand each job to the [`Worker`], ack or requeue, reconnect with backoff.
//!
//! Scratch space: while the work dir's filesystem has less than `min_free_bytes` free (the
//! [`ScratchGate`], read every [`SCRATCH_POLL`] and at each delivery) the session holds no
//! consumer. The broker then neither delivers this identity's jobs here nor counts deliveries
//! against their limit; they wait in the queue or go to another process of the same identity.
//! Running builds go on, and the consumer starts again once there is room.
//!
//! Shutdown: stop consuming, give running builds the grace period, then cancel them (the runtime
//! stops and removes their containers), requeue what did not finish, close the channel.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::FutureExt;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use lockstep_proto::broker::{redact, Failover};
use lockstep_proto::v1::{self, Job};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{MAX_BACKOFF, REQUEUE_DELAY, SCRATCH_POLL};
use crate::scratch::ScratchGate;
use crate::worker::{Disposition, Worker};

/// How long one broker node may take to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the first node of `nodes` that answers, in [`Failover`] order (a lost node is
/// tried last); `None` when no node answered this round.
async fn connect_next(
    nodes: &mut Failover,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    for (i, url) in nodes.round() {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&url, props)) => r,
        };
        let error = match attempt {
            Ok(Ok(c)) => {
                nodes.connected(i);
                tracing::info!(url = %redact(&url), "connected to RabbitMQ");
                return Some(c);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        };
        tracing::warn!(%error, url = %redact(&url), "cannot reach this RabbitMQ node");
    }
    None
}

/// Runs until `shutdown` fires.
pub async fn run(worker: Arc<Worker>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let queue = v1::builder_queue(&worker.key.fingerprint());
    let mut nodes = Failover::new(worker.cfg.amqp_urls.clone());
    let name = format!("lockstep-agent {}", worker.cfg.name);
    // Outlives sessions: a pause is logged once, not again after every reconnection.
    let mut scratch = ScratchGate::new(worker.cfg.work_root(), worker.cfg.runtime.min_free_bytes);
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let Some(conn) = connect_next(&mut nodes, &name, &shutdown).await else {
            if shutdown.is_cancelled() {
                break;
            }
            tracing::warn!(nodes = nodes.len(), retry_in = ?delay, "cannot reach RabbitMQ; is rabbitmq-server running? retrying");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_BACKOFF);
            continue;
        };
        let began = std::time::Instant::now();
        match session(&worker, &conn, &queue, &mut scratch, &shutdown).await {
            Ok(()) => delay = Duration::from_millis(200),
            Err(e) => {
                // A session that worked for a while lost its node: fail over at once. Sessions
                // that end right away (no queue yet, say) back off.
                if began.elapsed() > MAX_BACKOFF {
                    delay = Duration::from_millis(200);
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "AMQP session ended; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
        if !conn.status().connected() {
            // The node went away: the next attempt starts with the next node of the list.
            nodes.lost();
        }
        let _ = conn.close(200, "agent closing".into()).await;
    }
    Ok(())
}

async fn session(
    worker: &Arc<Worker>,
    conn: &Connection,
    queue: &str,
    scratch: &mut ScratchGate,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await.context("opening a channel")?;
    // Heartbeats and phase events go out on their own channel while this session lasts.
    let _events = worker.events.start(
        conn.create_channel()
            .await
            .context("opening the events channel")?,
    );
    // The coordinator declares builder queues for trusted builders; a missing queue means this
    // agent's key is not in the coordinator's policy yet.
    if let Err(e) = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        anyhow::bail!(
            "queue {queue} does not exist ({e}); add this agent's public key (fingerprint {}) to the coordinator's policy and reload it",
            worker.key.fingerprint()
        );
    }
    ch.basic_qos(worker.cfg.concurrency, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let tag = format!("{}-{}", worker.cfg.name, std::process::id());
    // `None` while the scratch disk is full. The first tick comes at once: the consumer starts
    // (or not) right away.
    let mut consumer: Option<Consumer> = None;
    let mut poll = tokio::time::interval(SCRATCH_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let permits = Arc::new(Semaphore::new(worker.cfg.concurrency as usize));
    let builds = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "job task panicked");
                }
            }
            _ = poll.tick() => {
                let room = has_room(worker, scratch);
                if room && consumer.is_none() {
                    match start_consuming(&ch, queue, &tag).await {
                        Ok(c) => consumer = Some(c),
                        Err(e) => break Err(e),
                    }
                    tracing::info!(%queue, concurrency = worker.cfg.concurrency, "consuming jobs");
                } else if !room {
                    if let Err(e) = stop_consuming(&ch, &tag, consumer.take()).await {
                        break Err(e);
                    }
                    // Without a consumer nothing else notices a lost connection.
                    if !conn.status().connected() || !ch.status().connected() {
                        break Err(anyhow::anyhow!("the connection was lost while not taking jobs"));
                    }
                }
            }
            next = next_delivery(&mut consumer) => {
                match next {
                    None => break Err(anyhow::anyhow!("consumer cancelled by the broker")),
                    Some(Err(e)) => break Err(anyhow::Error::new(e).context("consuming")),
                    Some(Ok(delivery)) if !has_room(worker, scratch) => {
                        // The disk filled since the last reading: give the job back unopened
                        // (one delivery spent) and stop consuming before it comes back here.
                        let stopped = stop_consuming(&ch, &tag, consumer.take()).await;
                        give_back(delivery).await;
                        if let Err(e) = stopped {
                            break Err(e);
                        }
                    }
                    Some(Ok(delivery)) => {
                        let permit = permits.clone().acquire_owned().await.context("semaphore closed")?;
                        let w = worker.clone();
                        let cancel = builds.child_token();
                        tasks.spawn(async move {
                            handle_delivery(&w, delivery, cancel).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
    };
    // Stop receiving new deliveries.
    if consumer.is_some() {
        let _ = ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    if !tasks.is_empty() {
        let grace = worker.cfg.shutdown_grace;
        tracing::info!(running = tasks.len(), ?grace, "waiting for running builds");
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("grace period over: stopping running builds and requeueing them");
            builds.cancel();
            while tasks.join_next().await.is_some() {}
        }
    }
    let _ = ch.close(200, "agent closing".into()).await;
    result
}

/// Reads the scratch space's free bytes; the agent's events say whether it takes jobs.
fn has_room(worker: &Worker, scratch: &mut ScratchGate) -> bool {
    let room = scratch.has_room();
    worker.events.set_paused(scratch.paused());
    room
}

async fn start_consuming(ch: &Channel, queue: &str, tag: &str) -> anyhow::Result<Consumer> {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .context("starting to consume")
}

/// Cancels the consumer (if there is one) so the broker delivers nothing more here, and gives
/// back what it had delivered that this session had not taken yet.
async fn stop_consuming(ch: &Channel, tag: &str, consumer: Option<Consumer>) -> anyhow::Result<()> {
    let Some(mut consumer) = consumer else {
        return Ok(());
    };
    ch.basic_cancel(tag.into(), BasicCancelOptions::default())
        .await
        .context("cancelling the consumer")?;
    // The cancel-ok has been handled: the stream holds what came before it, then its end.
    while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
        give_back(delivery).await;
    }
    Ok(())
}

/// The next delivery of the consumer; pending for good while there is no consumer.
async fn next_delivery(consumer: &mut Option<Consumer>) -> Option<lapin::Result<Delivery>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Requeues a delivery that was not worked on (the scratch disk is full).
async fn give_back(delivery: Delivery) {
    tracing::info!(
        delivery_tag = delivery.delivery_tag,
        "scratch disk full: giving back a job received before the consumer stopped"
    );
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(e) = delivery.acker.nack(requeue).await {
        tracing::warn!(error = %e, "could not give the job back; the broker will redeliver it");
    }
}

async fn handle_delivery(worker: &Worker, delivery: Delivery, cancel: CancellationToken) {
    let job: Job = match serde_json::from_slice(&delivery.data) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "undecodable job message; dead-lettering it");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await;
            return;
        }
    };
    tracing::info!(job = %job.job_id, source = %job.source, version = %job.version, arch = %job.arch, redelivered = delivery.redelivered, "job received");
    let disposition = worker.handle(&job, cancel).await;
    let result = match &disposition {
        Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Disposition::Requeue(reason) => {
            tracing::warn!(job = %job.job_id, %reason, "requeueing the job");
            tokio::time::sleep(REQUEUE_DELAY).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Disposition::Reject(reason) => {
            tracing::error!(job = %job.job_id, %reason, "rejecting the job (dead-lettered)");
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = result {
        // The channel this delivery came on is gone (broker restart): its tag means nothing now.
        // The broker redelivers the job; the attestation check makes that cheap.
        tracing::warn!(job = %job.job_id, error = %e, "could not settle the delivery; the broker will redeliver it");
    }
}
