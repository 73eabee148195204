//! One job, start to finish: fetch the source by digest, build in the runtime, hash (done by the
//! runtime on the host side), sign, upload, and say whether the delivery is acked or requeued.
//!
//! The signing key lives in the agent's state dir and is only used here, in this process; nothing
//! of it is ever mounted into a container.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use lockstep_proto::dsc::check_file_name;
use lockstep_proto::signing::SigningKey;
use lockstep_proto::v1::{
    AttestationUpload, BuilderRef, FailureReport, FailureUpload, FileRef, ImageRef, Job, Phase,
    Statement, STATEMENT_SCHEMA,
};
use lockstep_proto::Sha256Digest;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::client::{BlobSource, Client, ClientError};
use crate::config::{Config, MAX_BACKOFF, UPLOAD_ATTEMPTS};
use crate::runtime::{BuildOutcome, BuildRequest, BuildStatus, Runtime, RuntimeError};

/// Lines of build log quoted in a failure report.
const LOG_TAIL_LINES: usize = 40;

/// What to do with the delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done: evidence stored (attestation or failure report).
    Ack,
    /// Not done for reasons outside the package (infrastructure, shutdown): give it back.
    Requeue(String),
    /// The coordinator refuses this job's evidence for good: dead-letter it with the reason.
    Reject(String),
}

pub struct Worker {
    pub cfg: Config,
    pub key: SigningKey,
    pub runtime: Arc<Runtime>,
    pub client: Client,
    image: OnceCell<ImageRef>,
    /// Heartbeats and phase changes (best effort, never blocks).
    pub events: crate::events::EventSink,
}

impl Worker {
    pub fn new(cfg: Config, key: SigningKey, runtime: Arc<Runtime>) -> anyhow::Result<Worker> {
        let client = Client::new(&cfg.coordinator_url)?;
        let events = crate::events::EventSink::new(&cfg.name, &key.fingerprint());
        Ok(Worker {
            events,
            cfg,
            key,
            runtime,
            client,
            image: OnceCell::new(),
        })
    }

    fn builder(&self) -> BuilderRef {
        BuilderRef {
            fingerprint: self.key.fingerprint(),
            name: self.cfg.name.clone(),
        }
    }

    /// The pinned build image, built from the recipe on first use if missing.
    pub async fn image(&self) -> Result<ImageRef, RuntimeError> {
        self.image
            .get_or_try_init(|| self.runtime.ensure_image())
            .await
            .cloned()
    }

    fn phase(&self, job: &Job, phase: Phase, started: Instant) {
        tracing::info!(job = %job.job_id, source = %job.source, ?phase, elapsed_ms = started.elapsed().as_millis() as u64, "phase");
        self.events.phase(job, phase);
    }

    /// Handles one job. Never panics on bad input; every outcome maps to a disposition.
    pub async fn handle(&self, job: &Job, cancel: CancellationToken) -> Disposition {
        use tracing::Instrument;
        let span = tracing::info_span!("job", job = %job.job_id, source = %job.source, version = %job.version, arch = %job.arch);
        self.handle_in_span(job, cancel).instrument(span).await
    }

    async fn handle_in_span(&self, job: &Job, cancel: CancellationToken) -> Disposition {
        // A redelivery after a crash between upload and ack: the evidence is already stored.
        match self
            .client
            .has_attestation(&job.job_id, &self.key.fingerprint())
            .await
        {
            Ok(true) => {
                tracing::info!(job = %job.job_id, "attestation already stored; acking the redelivery without rebuilding");
                return Disposition::Ack;
            }
            Ok(false) => {}
            Err(e) => return Disposition::Requeue(format!("{e}")),
        }
        let work = self.cfg.work_root().join(&job.job_id);
        let result = self.run(job, &work, cancel).await;
        if let Err(e) = remove_tree(&work).await {
            tracing::warn!(dir = %work.display(), error = %format!("{e:#}"), "could not clean the work dir");
        }
        result
    }

    async fn run(&self, job: &Job, work: &Path, cancel: CancellationToken) -> Disposition {
        let started = Instant::now();
        // ---- fetching
        self.phase(job, Phase::Fetching, started);
        let src = work.join("src");
        if let Err(e) = prepare_dir(work, &src).await {
            return Disposition::Requeue(format!("preparing {}: {e:#}", work.display()));
        }
        for f in &job.files {
            if let Err(e) = check_file_name(&f.name) {
                return self
                    .fail(
                        job,
                        "source",
                        &format!("job names an unsafe source file: {e}"),
                        b"",
                    )
                    .await;
            }
            if let Err(e) = self
                .client
                .download(&f.sha256, f.size, &src.join(&f.name))
                .await
            {
                let msg = format!("{e:#}");
                return if msg.contains("refusing corrupt source") || msg.contains("HTTP 404") {
                    self.fail(job, "source", &msg, b"").await
                } else {
                    Disposition::Requeue(msg)
                };
            }
        }
        // ---- preparing
        self.phase(job, Phase::Preparing, started);
        let image = match self.image().await {
            Ok(i) => i,
            Err(e) => return Disposition::Requeue(format!("{e}")),
        };
        // ---- building
        self.phase(job, Phase::Building, started);
        let req = BuildRequest {
            job_id: job.job_id.clone(),
            source: job.source.clone(),
            version: job.version.clone(),
            kind: job.kind,
            dsc_name: job.dsc.name.clone(),
            source_dir: src.clone(),
            work_dir: work.join("rt"),
            image: image.clone(),
        };
        if let Err(e) = tokio::fs::create_dir_all(&req.work_dir).await {
            return Disposition::Requeue(format!("creating {}: {e}", req.work_dir.display()));
        }
        let outcome = match self.runtime.build(&req, cancel).await {
            Ok(o) => o,
            Err(RuntimeError::BadOutput(m)) => {
                return self.fail(job, "hostile-output", &m, b"").await;
            }
            Err(RuntimeError::InvalidRequest(m)) => {
                return self.fail(job, "source", &m, b"").await;
            }
            Err(e) => return Disposition::Requeue(format!("{e}")),
        };
        for (phase, d) in &outcome.timings {
            tracing::info!(job = %job.job_id, %phase, secs = d.as_secs_f64(), "build step timing");
        }
        match &outcome.status {
            BuildStatus::Succeeded => self.attest(job, &image, &outcome, started).await,
            BuildStatus::Failed { exit_code, reason } => {
                let msg = format!("{reason} (exit code {exit_code})");
                self.fail(job, "build", &msg, &outcome.log).await
            }
            BuildStatus::TimedOut => {
                let msg = format!(
                    "build exceeded the maximum build time of {}s and was stopped",
                    self.cfg.runtime.max_build_time.as_secs()
                );
                self.fail(job, "timeout", &msg, &outcome.log).await
            }
        }
    }

    async fn attest(
        &self,
        job: &Job,
        image: &ImageRef,
        out: &BuildOutcome,
        started: Instant,
    ) -> Disposition {
        let Some(bi) = &out.buildinfo else {
            return self
                .fail(job, "build", "the build produced no .buildinfo", &out.log)
                .await;
        };
        if out.artifacts.is_empty() {
            return self
                .fail(
                    job,
                    "build",
                    "the build produced no binary packages",
                    &out.log,
                )
                .await;
        }
        // ---- signing
        self.phase(job, Phase::Signing, started);
        let bi_bytes = match tokio::fs::read(&bi.path).await {
            Ok(b) => b,
            Err(e) => return Disposition::Requeue(format!("reading {}: {e}", bi.path.display())),
        };
        let bi_ref = FileRef {
            name: bi.name.clone(),
            sha256: Sha256Digest::of(&bi_bytes),
            size: bi_bytes.len() as u64,
        };
        let statement = Statement {
            schema: STATEMENT_SCHEMA.into(),
            job_id: job.job_id.clone(),
            source: job.source.clone(),
            version: job.version.clone(),
            arch: job.arch.clone(),
            dsc_sha256: job.dsc.sha256,
            source_files: job.files.clone(),
            source_origin: job.origin.clone(),
            image: image.clone(),
            recipe: out.recipe.clone(),
            builder: self.builder(),
            artifacts: out
                .artifacts
                .iter()
                .map(|a| FileRef {
                    name: a.name.clone(),
                    sha256: a.sha256,
                    size: a.size,
                })
                .collect(),
            buildinfo: bi_ref,
            built_at: Utc::now(),
        };
        let key = self.key.clone();
        let st_bytes = statement.canonical_bytes();
        let signed = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u8>, String)> {
            Ok((key.clearsign(&bi_bytes)?, key.sign_detached(&st_bytes)?))
        })
        .await;
        let (signed_bi, signature) = match signed {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Disposition::Requeue(format!("signing: {e:#}")),
            Err(e) => return Disposition::Requeue(format!("signing task: {e}")),
        };
        // ---- uploading
        self.phase(job, Phase::Uploading, started);
        let statement_text =
            String::from_utf8(statement.canonical_bytes()).expect("serde_json output is UTF-8");
        match retry(UPLOAD_ATTEMPTS, || {
            self.upload_once(out, &signed_bi, &statement_text, &signature)
        })
        .await
        {
            Ok(v) => {
                // T02: a crash here, after the coordinator stored the evidence and before the
                // ack, makes the broker redeliver; `handle` then finds the attestation.
                #[cfg(feature = "failpoints")]
                failpoint("after-upload");
                self.phase(job, Phase::Done, started);
                tracing::info!(job = %job.job_id, artifacts = out.artifacts.len(), response = %v, "attestation stored by the coordinator");
                Disposition::Ack
            }
            Err(ClientError::Refused(m)) => {
                tracing::error!(job = %job.job_id, error = %m, "the coordinator refused the attestation");
                Disposition::Reject(m)
            }
            Err(ClientError::Transient(m)) => Disposition::Requeue(m),
        }
    }

    async fn upload_once(
        &self,
        out: &BuildOutcome,
        signed_bi: &[u8],
        statement: &str,
        signature: &str,
    ) -> Result<serde_json::Value, ClientError> {
        // Every blob the attestation names, in one batch (one request, one archive commit).
        let signed_buildinfo = Sha256Digest::of(signed_bi);
        let build_log = Sha256Digest::of(&out.log);
        let mut blobs: Vec<(Sha256Digest, BlobSource)> = out
            .artifacts
            .iter()
            .map(|a| (a.sha256, BlobSource::File(a.path.clone())))
            .collect();
        blobs.push((
            signed_buildinfo,
            BlobSource::Bytes(bytes::Bytes::copy_from_slice(signed_bi)),
        ));
        blobs.push((
            build_log,
            BlobSource::Bytes(bytes::Bytes::from(out.log.clone())),
        ));
        self.client.upload_batch(&blobs).await?;
        let up = AttestationUpload {
            statement: statement.to_string(),
            signature: signature.to_string(),
            signed_buildinfo,
            build_log: Some(build_log),
        };
        self.client.attest(&up).await
    }

    async fn send_failure(
        &self,
        job: &Job,
        kind: &str,
        reason: &str,
        log: &[u8],
        tail: &str,
    ) -> Result<(), ClientError> {
        let build_log = if log.is_empty() {
            None
        } else {
            Some(self.client.upload_bytes(log.to_vec()).await?)
        };
        let report = FailureReport {
            job_id: job.job_id.clone(),
            builder: self.builder(),
            kind: kind.into(),
            reason: reason.into(),
            log_tail: tail.to_string(),
            build_log,
            at: Utc::now(),
        };
        let text = serde_json::to_string(&report).expect("failure report serialises");
        let signature = self
            .key
            .sign_detached(text.as_bytes())
            .map_err(|e| ClientError::Transient(format!("signing: {e}")))?;
        self.client
            .report_failure(&FailureUpload {
                report: text,
                signature,
            })
            .await
    }

    /// Signs and sends a failure report; the job then ends failed for this builder.
    async fn fail(&self, job: &Job, kind: &str, reason: &str, log: &[u8]) -> Disposition {
        tracing::warn!(job = %job.job_id, %kind, %reason, "job failed");
        self.events.phase(job, Phase::Failed);
        let tail = log_tail(log, LOG_TAIL_LINES);
        match retry(UPLOAD_ATTEMPTS, || {
            self.send_failure(job, kind, reason, log, &tail)
        })
        .await
        {
            Ok(()) => Disposition::Ack,
            Err(ClientError::Refused(m)) => Disposition::Reject(m),
            Err(ClientError::Transient(m)) => Disposition::Requeue(m),
        }
    }
}

/// Crash injection for the fault suite: aborts the process (no unwinding, no ack, no cleanup,
/// like `kill -9`) when `LOCKSTEP_FAILPOINT` names this point.
#[cfg(feature = "failpoints")]
fn failpoint(name: &str) {
    if std::env::var("LOCKSTEP_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("lockstep-agent: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Retries transient failures with exponential backoff; refusals return at once.
async fn retry<T, F, Fut>(attempts: u32, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(500);
    let mut last = None;
    for i in 0..attempts {
        match f().await {
            Ok(v) => return Ok(v),
            Err(ClientError::Refused(m)) => return Err(ClientError::Refused(m)),
            Err(ClientError::Transient(m)) => {
                tracing::warn!(attempt = i + 1, error = %m, retry_in = ?delay, "coordinator call failed; retrying");
                last = Some(m);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
    Err(ClientError::Transient(last.unwrap_or_default()))
}

/// The last `n` lines of a log, lossily decoded.
pub fn log_tail(log: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn prepare_dir(work: &Path, src: &Path) -> anyhow::Result<()> {
    if tokio::fs::try_exists(work).await.unwrap_or(false) {
        remove_tree(work).await?;
    }
    tokio::fs::create_dir_all(src)
        .await
        .with_context(|| format!("creating {}", src.display()))
}

/// Removes a work tree; files a build left read-only are made writable first.
async fn remove_tree(path: &Path) -> anyhow::Result<()> {
    let p: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if !p.exists() {
            return Ok(());
        }
        if std::fs::remove_dir_all(&p).is_ok() {
            return Ok(());
        }
        // Make directories writable (never following symlinks) and try again.
        fn chmod_dirs(p: &Path) {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::symlink_metadata(p) {
                if m.is_dir() {
                    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                    if let Ok(rd) = std::fs::read_dir(p) {
                        for e in rd.flatten() {
                            chmod_dirs(&e.path());
                        }
                    }
                }
            }
        }
        chmod_dirs(&p);
        std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))
    })
    .await
    .context("cleanup task")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let log = b"a\nb\nc\nd\n";
        assert_eq!(log_tail(log, 2), "c\nd");
        assert_eq!(log_tail(b"", 3), "");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_on_refusal_and_retries_transient() {
        let mut calls = 0;
        let r: Result<(), _> = retry(5, || {
            calls += 1;
            async { Err(ClientError::Refused("no".into())) }
        })
        .await;
        assert!(matches!(r, Err(ClientError::Refused(_))));
        assert_eq!(calls, 1);
        let mut calls = 0;
        let r: Result<(), _> = retry(3, || {
            calls += 1;
            async { Err(ClientError::Transient("down".into())) }
        })
        .await;
        assert!(matches!(r, Err(ClientError::Transient(_))));
        assert_eq!(calls, 3);
    }
}
