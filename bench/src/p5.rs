//! P5: last attestation → decision published. An in-process coordinator (`Server`, on its own
//! RabbitMQ vhost) receives the deciding attestation through `Service::attest`; the clock stops
//! when the decision arrives on a queue bound to `lockstep.decisions`. The baseline is a bare
//! confirmed publish → consume round trip of a message of the same size on the same broker.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use lockstep_coordinator::Server;
use lockstep_tests::Vhost;
use tokio_util::sync::CancellationToken;

use crate::fixture::{self, Builder, Debs};
use crate::row::{Better, Row};
use crate::util::{percentile, progress, scratch};

const BASELINE: &str = "a confirmed publish -> consume round trip of a message of the same size \
     on the same broker (lapin, loopback)";

pub async fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let n = if quick { 30 } else { 200 };
    let dir = scratch(root, "p5-")?;
    let vhost = Vhost::create("bench-p5").context("RabbitMQ vhost (scripts/rabbitmq start)")?;
    let builders = vec![Builder::new("b1")?, Builder::new("b2")?];
    let policy = fixture::write_policy(dir.path(), &builders, 2)?;
    let server = Server::build(fixture::config(dir.path(), &vhost.url(), &policy)).await?;
    let svc = server.service.clone();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));

    // Our consumer of decisions (the exchange is declared by the dispatcher on connect).
    let conn = Connection::connect(&vhost.url(), ConnectionProperties::default()).await?;
    // The dispatcher declares the exchange once it connects; a bind before that fails and
    // closes the channel, so every attempt uses a fresh channel.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ch, q) = loop {
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let bind = ch
            .queue_bind(
                q.name().as_str().into(),
                lockstep_proto::v1::DECISIONS_EXCHANGE.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        match bind {
            Ok(()) => break (ch, q),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("binding to the decisions exchange"),
        }
    };
    let mut decisions = ch
        .basic_consume(
            q.name().as_str().into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let debs = Debs::new(dir.path())?;
    progress!("P5: preparing {n} packages");
    let prepared = {
        let svc = svc.clone();
        tokio::task::spawn_blocking(move || fixture::prepare_many(&svc, &builders, &debs, n, "p5-"))
            .await??
    };
    let mut lat = Vec::with_capacity(n);
    let mut size = 0usize;
    for (job, ups) in prepared {
        let svc2 = svc.clone();
        let first = ups[0].clone();
        tokio::task::spawn_blocking(move || svc2.attest(&first))
            .await?
            .map_err(|e| anyhow::anyhow!("attest: {e}"))?;
        let t = Instant::now();
        let svc2 = svc.clone();
        let last = ups[1].clone();
        tokio::task::spawn_blocking(move || svc2.attest(&last))
            .await?
            .map_err(|e| anyhow::anyhow!("attest: {e}"))?;
        loop {
            let d = tokio::time::timeout(Duration::from_secs(30), decisions.next())
                .await
                .context("no decision within 30 s")?
                .context("consumer closed")??;
            if d.routing_key
                .as_str()
                .ends_with(&format!(".{}", job.source))
            {
                size = d.data.len();
                break;
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // Baseline: confirmed publish -> consume on a fresh queue.
    let bch = conn.create_channel().await?;
    bch.confirm_select(ConfirmSelectOptions::default()).await?;
    let bq = bch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut bc = bch
        .basic_consume(
            bq.name().as_str().into(),
            "bench-base".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let payload = vec![b'x'; size.max(1)];
    let mut base = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        bch.basic_publish(
            "".into(),
            bq.name().as_str().into(),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default(),
        )
        .await?
        .await?;
        let d = bc.next().await.context("consumer closed")??;
        d.ack(BasicAckOptions::default()).await?;
        base.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stop.cancel();
    task.await??;
    drop(vhost);

    let (o50, b50) = (percentile(&mut lat, 50.0), percentile(&mut base, 50.0));
    let (o99, b99) = (percentile(&mut lat, 99.0), percentile(&mut base, 99.0));
    progress!("P5: p50 {o50:.1} ms p99 {o99:.1} ms (baseline p50 {b50:.2} p99 {b99:.2})");
    Row::abs_goal(
        "P5",
        format!("decision latency p50 ({n} decisions)"),
        "ms",
        o50,
        b50,
        50.0,
        Better::Lower,
        BASELINE,
    )
    .emit();
    Row::abs_goal(
        "P5",
        format!("decision latency p99 ({n} decisions)"),
        "ms",
        o99,
        b99,
        50.0,
        Better::Lower,
        BASELINE,
    )
    .emit();
    Ok(())
}
