//! P7: resident memory of a real `lockstep-coordinator` process (the release binary next to this
//! one) tracking many (source, version, arch) keys: after start-up, and at its peak while
//! answering `GET /api/v1/status` for all of them. The baseline is the same binary on an empty
//! data directory, through the same steps.
//!
//! Setup writes the keys in bulk: one job per key in the job table (marked confirmed, so the
//! dispatcher has nothing to publish) and one `job` record per key in the archive through
//! `Archive::append_records`. It does not go through `enqueue` (100,000 enqueues would take most
//! of an hour of fsyncs); what the coordinator holds and reads is the same.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lockstep_archive::{Archive, BlobLink, NewRecord};
use lockstep_tests::Vhost;

use crate::fixture::{self, Builder};
use crate::row::{Better, Row};
use crate::util::{proc_status_kib, progress, scratch};

const BASELINE: &str = "the same coordinator binary and steps on an empty data directory \
     (peak VmHWM)";

struct Coordinator {
    child: Child,
    url: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start(dir: &Path, policy: &Path, amqp: &str) -> anyhow::Result<Coordinator> {
    let exe = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("lockstep-coordinator");
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: scripts/bench builds it (cargo build --release -p lockstep-coordinator)",
        exe.display()
    );
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("coordinator.log"))?;
    let child = Command::new(&exe)
        .env("LOCKSTEP__DATA_DIR", dir.join("data"))
        .env("LOCKSTEP__LISTEN", format!("127.0.0.1:{port}"))
        .env("LOCKSTEP__AMQP_URL", amqp)
        .env("LOCKSTEP__POLICY", policy)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let c = Coordinator {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{}/api/v1/health", c.url)).send().await {
            if r.status().is_success() {
                return Ok(c);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "coordinator did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a coordinator on `dir`, settles, queries status; returns (idle RSS, peak HWM) in MiB
/// and the number of status rows.
async fn measure(dir: &Path, policy: &Path, amqp: &str) -> anyhow::Result<(f64, f64, usize)> {
    let c = start(dir, policy, amqp).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = c.child.id();
    let idle = proc_status_kib(pid, "VmRSS")? as f64 / 1024.0;
    let t = Instant::now();
    let body = reqwest::get(format!("{}/api/v1/status", c.url))
        .await
        .context("GET /api/v1/status")?
        .bytes()
        .await?;
    let rows = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
        .context("status is a JSON array")?
        .len();
    progress!(
        "P7: status of {rows} keys in {:.1}s ({} bytes)",
        t.elapsed().as_secs_f64(),
        body.len()
    );
    let peak = proc_status_kib(pid, "VmHWM")? as f64 / 1024.0;
    Ok((idle, peak, rows))
}

/// Writes `n` keys into the data dir (see the module documentation).
fn populate(dir: &Path, policy: &Path, n: usize) -> anyhow::Result<()> {
    let template = {
        let svc = fixture::service(dir, policy)?;
        fixture::enqueue(&svc, "template", "1")?
    };
    let data = dir.join("data");
    let origin = fixture::config(dir, "amqp://127.0.0.1:1/unused", policy).log_origin;
    let archive = Archive::open(&data.join("archive"), &origin)?;
    let mut conn = rusqlite::Connection::open(data.join("jobs.sqlite"))?;
    let now = chrono::Utc::now().to_rfc3339();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let tx = conn.transaction()?;
        let mut recs = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let mut job = template.clone();
            job.job_id = format!("00000000-0000-4000-8000-{i:012}");
            job.source = format!("pkg{i}");
            job.version = format!("1.{}-1", i % 7);
            let body = serde_json::to_string(&job)?;
            tx.execute(
                "INSERT INTO jobs (job_id, source, version, arch, job_json, created_at, confirmed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                rusqlite::params![job.job_id, job.source, job.version, job.arch, body, now],
            )?;
            recs.push(NewRecord {
                kind: "job".into(),
                source: job.source.clone(),
                version: job.version.clone(),
                arch: job.arch.clone(),
                job_id: Some(job.job_id.clone()),
                signer: None,
                dedup_key: Some(format!("job:{}", job.job_id)),
                body: body.into_bytes(),
                signature: None,
                blobs: job
                    .files
                    .iter()
                    .map(|f| BlobLink {
                        role: "source".into(),
                        name: f.name.clone(),
                        sha256: f.sha256,
                        size: f.size,
                    })
                    .collect(),
            });
        }
        tx.commit()?;
        archive.append_records(&recs)?;
    }
    archive.checkpoint()?;
    Ok(())
}

pub async fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let n = if quick { 10_000 } else { 100_000 };
    let vhost = Vhost::create("bench-p7").context("RabbitMQ vhost (scripts/rabbitmq start)")?;
    let builders = vec![Builder::new("b1")?, Builder::new("b2")?];

    let empty = scratch(root, "p7-empty-")?;
    let policy_e = fixture::write_policy(empty.path(), &builders, 2)?;
    let (_, base_peak, _) = measure(empty.path(), &policy_e, &vhost.url()).await?;

    let full = scratch(root, "p7-full-")?;
    let policy_f = fixture::write_policy(full.path(), &builders, 2)?;
    progress!("P7: writing {n} keys");
    {
        let (dir, policy) = (full.path().to_path_buf(), policy_f.clone());
        tokio::task::spawn_blocking(move || populate(&dir, &policy, n)).await??;
    }
    let (idle, peak, rows) = measure(full.path(), &policy_f, &vhost.url()).await?;
    anyhow::ensure!(rows > n, "status listed {rows} keys, expected {}", n + 1);
    progress!("P7: idle {idle:.0} MiB, peak {peak:.0} MiB (empty: {base_peak:.0} MiB)");
    Row::abs_goal(
        "P7",
        format!("coordinator RSS after start, {n} keys"),
        "MiB",
        idle,
        base_peak,
        256.0,
        Better::Lower,
        BASELINE,
    )
    .emit();
    Row::abs_goal(
        "P7",
        format!("coordinator peak RSS incl. status of {n} keys"),
        "MiB",
        peak,
        base_peak,
        256.0,
        Better::Lower,
        BASELINE,
    )
    .emit();
    Ok(())
}
