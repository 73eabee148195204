//! P3b: job dispatch — publish → agent-like consumer receives (no build), 4 consumers, with
//! 1,000 and 100,000 jobs queued (10,000 with `--quick`). The queue is a quorum queue declared
//! with the coordinator's own arguments (`amqp::builder_queue_args`) on a throw-away vhost;
//! publishes are persistent and confirmed like the dispatcher's; consumers use one connection
//! each, prefetch 1 and manual acks like agents with one build slot. The rate at a depth is the
//! median of several drains (see [`rounds`]); the delivery gaps of all of them are pooled.
//!
//! Baseline: an HTTP-less SQLite job table (WAL, `synchronous=FULL`) popped by 4 threads, each
//! pop a `BEGIN IMMEDIATE; SELECT … LIMIT 1; UPDATE …; COMMIT` — the core of a rebuilder's
//! SQLite queue without its HTTP layer.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use lockstep_tests::Vhost;

use crate::row::{Better, Row};
use crate::util::{percentile, progress, scratch};

const CONSUMERS: usize = 4;
/// Pops timed on the SQLite baseline (each is an fsynced transaction).
const BASELINE_POPS: usize = 4_000;

const BASELINE_RATE: &str =
    "SQLite job table (WAL, synchronous=FULL) at the same depth, 4 threads \
     popping with BEGIN IMMEDIATE; SELECT ... LIMIT 1; UPDATE; COMMIT (4,000 pops timed)";
const BASELINE_LAT: &str = "Lockstep's own per-delivery gap at 1,000 queued";

/// Fills a quorum queue with `depth` jobs, drains it with 4 consumers; returns jobs/s and every
/// gap between deliveries per consumer in ms.
async fn dispatch(url: &str, depth: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let q = format!("bench.dispatch.{depth}");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::durable(),
        lockstep_coordinator::amqp::builder_queue_args(5),
    )
    .await
    .context("declaring the quorum queue")?;
    let body = vec![b'j'; 1500]; // about a job's JSON
    let props = BasicProperties::default().with_delivery_mode(2);
    let t = Instant::now();
    for chunk in (0..depth).collect::<Vec<_>>().chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for _ in chunk {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
    }
    progress!(
        "P3b: {depth} jobs published and confirmed in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let left = Arc::new(AtomicUsize::new(depth));
    let finished = Arc::new(std::sync::Mutex::new(None::<Instant>));
    // The agents' channels exist before the clock starts (an agent opens its channel once, not
    // per job): each gets its prefetch of 1 and then subscribes, the first deliveries begin.
    // Each consumer has its own connection, as each agent process does.
    let mut channels = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..CONSUMERS {
        let c = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = c.create_channel().await?;
        conns.push(c);
        ch.basic_qos(1, BasicQosOptions::default()).await?;
        channels.push(ch);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, ch) in channels.into_iter().enumerate() {
        let mut c = ch
            .basic_consume(
                q.as_str().into(),
                format!("agent-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (left, finished) = (left.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let mut gaps = Vec::new();
            let mut last = Instant::now();
            while left.load(Ordering::SeqCst) > 0 {
                let next =
                    tokio::time::timeout(std::time::Duration::from_millis(500), c.next()).await;
                let Ok(Some(d)) = next else { continue };
                let d = d?;
                gaps.push(last.elapsed().as_secs_f64() * 1e3);
                d.ack(BasicAckOptions::default()).await?;
                last = Instant::now();
                if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                    // The last job is delivered and acknowledged: the clock stops here, not
                    // when the other consumers' idle polls (up to 500 ms) notice.
                    *finished.lock().expect("not poisoned") = Some(last);
                }
            }
            let _ = ch.close(200, "done".into()).await;
            anyhow::Ok(gaps)
        }));
    }
    let mut gaps = Vec::new();
    for t in tasks {
        gaps.extend(t.await??);
    }
    let end = finished
        .lock()
        .expect("not poisoned")
        .context("the last delivery was never recorded")?;
    let rate = depth as f64 / end.duration_since(t).as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    for c in conns {
        let _ = c.close(200, "done".into()).await;
    }
    Ok((rate, gaps))
}

/// Drains of `depth` jobs measured: a drain of 1,000 lasts under a second, so one busy moment of
/// this shared machine would decide it; the median of several is the figure.
fn rounds(depth: usize) -> usize {
    (20_000 / depth).clamp(1, 5)
}

fn sqlite_baseline(root: &Path, depth: usize) -> anyhow::Result<f64> {
    let dir = scratch(root, "p3b-sqlite-")?;
    let path = dir.path().join("queue.sqlite");
    {
        let mut c = rusqlite::Connection::open(&path)?;
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE queue (id INTEGER PRIMARY KEY, body BLOB NOT NULL, taken INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX queue_free ON queue (taken, id);",
        )?;
        let tx = c.transaction()?;
        let body = vec![b'j'; 1500];
        for _ in 0..depth {
            tx.execute("INSERT INTO queue (body) VALUES (?1)", [&body])?;
        }
        tx.commit()?;
    }
    let popped = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut hs = Vec::new();
        for _ in 0..CONSUMERS {
            let path = path.clone();
            let popped = popped.clone();
            hs.push(s.spawn(move || -> anyhow::Result<()> {
                let mut c = rusqlite::Connection::open(&path)?;
                c.busy_timeout(std::time::Duration::from_secs(30))?;
                c.pragma_update(None, "synchronous", "FULL")?;
                while popped.fetch_add(1, Ordering::SeqCst) < BASELINE_POPS.min(depth) {
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let (id, _body): (i64, Vec<u8>) = tx.query_row(
                        "SELECT id, body FROM queue WHERE taken = 0 ORDER BY id LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    tx.execute("UPDATE queue SET taken = 1 WHERE id = ?1", [id])?;
                    tx.commit()?;
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("baseline thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(BASELINE_POPS.min(depth) as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let depths = [1_000, if quick { 10_000 } else { 100_000 }];
    let vhost = Vhost::create("bench-p3b").context("RabbitMQ vhost (scripts/rabbitmq start)")?;
    let mut first_gap = None;
    for depth in depths {
        let mut rates = Vec::new();
        let mut gaps = Vec::new();
        for _ in 0..rounds(depth) {
            let (rate, g) = dispatch(&vhost.url(), depth).await?;
            rates.push(rate);
            gaps.extend(g);
        }
        let rate = percentile(&mut rates, 50.0);
        let (p50, p99) = (percentile(&mut gaps, 50.0), percentile(&mut gaps, 99.0));
        let root2 = root.to_path_buf();
        let base = tokio::task::spawn_blocking(move || sqlite_baseline(&root2, depth)).await??;
        progress!("P3b {depth}: {rate:.0} jobs/s, drains {rates:.0?} (gap p50 {p50:.2} ms p99 {p99:.2} ms), SQLite {base:.0}/s");
        Row::abs_goal(
            "P3b",
            match rates.len() {
                1 => format!("dispatch, 4 consumers, {depth} queued (one drain)"),
                n => format!("dispatch, 4 consumers, {depth} queued (median of {n} drains)"),
            },
            "jobs/s",
            rate,
            base,
            2000.0,
            Better::Higher,
            BASELINE_RATE,
        )
        .emit();
        let (b50, b99) = *first_gap.get_or_insert((p50, p99));
        Row::ratio_goal(
            "P3b",
            format!("delivery gap p50, {depth} queued"),
            "ms",
            p50,
            b50,
            1.25,
            Better::Lower,
            BASELINE_LAT,
        )
        .emit();
        Row::ratio_goal(
            "P3b",
            format!("delivery gap p99, {depth} queued"),
            "ms",
            p99,
            b99,
            1.25,
            Better::Lower,
            BASELINE_LAT,
        )
        .emit();
    }
    Ok(())
}
