//! The coordinator's logic, independent of HTTP: enqueue, ingest sources, accept attestations and
//! failure reports, evaluate quorum, record and sign decisions, answer status queries.
//!
//! This is the one module that touches more than one layer (archive, job table, apt, policy,
//! dispatcher). Its methods are synchronous where they only do CPU and disk work, so HTTP handlers
//! run them in `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use anyhow::Context;
use chrono::Utc;
use lockstep_archive::{
    AppendTicket, Archive, ArchiveError, BlobLink, NewRecord, Record, RecordRef,
};
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::dsc;
use lockstep_proto::policy::Policy;
use lockstep_proto::quorum::{self, Failure, Outcome, Vote};
use lockstep_proto::signing::{SigningError, SigningKey};
use lockstep_proto::v1::{
    ArtifactDigest, AttestationUpload, Decision, EnqueueError, EnqueueResponse, EnqueuedJob,
    FailureReport, FailureSummary, FailureUpload, FileRef, Job, State, Statement, StatusEntry,
    STATEMENT_SCHEMA,
};

use crate::amqp::Dispatcher;
use crate::apt::Apt;
use crate::config::Config;
use crate::jobs::JobStore;

/// Record kinds in the archive.
pub mod kind {
    pub const JOB: &str = "job";
    pub const ATTESTATION: &str = "attestation";
    pub const FAILURE: &str = "failure";
    pub const DECISION: &str = "decision";
}

/// Largest signed document (.buildinfo, statement) read into memory.
const MAX_SIGNED_DOC: u64 = 16 * 1024 * 1024;

/// Stripes of the decision lock (see `Service::decide_locks`). A decision holds its stripe
/// across its commit, so another package hashed to the same stripe waits that long: with 64
/// stripes and 32 concurrent uploads about one in four decisions met such a stranger (issue 7,
/// P3). A stripe costs two empty mutexes.
const DECIDE_STRIPES: usize = 1024;

/// Errors the HTTP layer maps to status codes.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for ServiceError {
    fn from(e: anyhow::Error) -> Self {
        ServiceError::Internal(e)
    }
}

impl From<ArchiveError> for ServiceError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::DigestMismatch { .. } => ServiceError::Unprocessable(e.to_string()),
            ArchiveError::Collision { .. } | ArchiveError::Conflict { .. } => {
                ServiceError::Conflict(e.to_string())
            }
            ArchiveError::TooLarge { .. } => ServiceError::TooLarge(e.to_string()),
            ArchiveError::NotFound(_) => ServiceError::NotFound(e.to_string()),
            ArchiveError::BadRequest(_) => ServiceError::BadRequest(e.to_string()),
            other => ServiceError::Internal(anyhow::Error::new(other)),
        }
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// An attestation checked and ready to store, and the vote it casts.
struct PendingVote {
    record: NewRecord,
    vote: Vote,
}

/// An attestation that changed no decision, queued in the archive's group commit and not yet
/// known to be stored. Its vote already counts for the next evaluation of its key: it commits
/// before anything appended later, and a decision counting it is stored only if it is
/// ([`Archive::append_records_after`]).
struct InFlight {
    key: (String, String, String),
    dedup_key: Option<String>,
    vote: Vote,
    ticket: AppendTicket,
}

impl InFlight {
    fn is_for(&self, source: &str, version: &str, arch: &str) -> bool {
        self.key.0 == source && self.key.1 == version && self.key.2 == arch
    }
}

/// One stripe of the decision lock, and the attestations of its keys still in flight. Entries
/// are added only under `decide` and taken out, once answered, under `in_flight` alone: an
/// attestation's caller is not held up by a decision about its key being committed.
#[derive(Default)]
struct Stripe {
    decide: Mutex<()>,
    in_flight: Mutex<Vec<Arc<InFlight>>>,
}

impl Stripe {
    fn in_flight(&self) -> MutexGuard<'_, Vec<Arc<InFlight>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes an attestation out of its stripe's in-flight list when dropped (answered or not).
struct Unregister<'a> {
    stripe: &'a Stripe,
    entry: Option<Arc<InFlight>>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.stripe.in_flight().retain(|f| !Arc::ptr_eq(f, &entry));
        }
    }
}

/// Outcome of an accepted attestation.
#[derive(Debug, serde::Serialize)]
pub struct Accepted {
    pub record_id: i64,
    pub leaf_index: u64,
    /// False when the same attestation was already stored (a redelivery).
    pub created: bool,
    pub state: State,
}

/// The coordinator's shared state.
pub struct Service {
    pub cfg: Config,
    pub archive: Arc<Archive>,
    pub jobs: Arc<JobStore>,
    pub apt: Arc<Apt>,
    /// The signed apt repository of what shipped, regenerated after every decision.
    pub aptrepo: crate::aptrepo::AptRepo,
    policy: RwLock<Arc<Policy>>,
    pub key: SigningKey,
    pub host_arch: String,
    dispatcher: RwLock<Option<Dispatcher>>,
    /// Serialise quorum evaluation and decision recording per (source, version, arch): one lock
    /// stripe per key hash, so decisions about different packages run (and commit) at once. A
    /// stripe holds its keys' attestations in flight (see [`Service::decide`]).
    decide_locks: Box<[Stripe]>,
    scratch: PathBuf,
    /// Witness cosignatures of checkpoints (see [`crate::witness`]).
    pub cosignatures: crate::witness::Cosignatures,
    /// Agent liveness and counters for the web page and `/metrics` (not evidence).
    pub ops: crate::metrics::Ops,
}

impl Service {
    /// Opens the archive, job table, keys and policy under the config's data dir.
    pub fn open(cfg: Config) -> anyhow::Result<Service> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let archive = Archive::open(&cfg.data_dir.join("archive"), &cfg.log_origin)
            .context("opening the archive")?;
        let jobs = JobStore::open(&cfg.data_dir.join("jobs.sqlite"))?;
        let (key, created) = SigningKey::load_or_generate(
            &cfg.data_dir.join("coordinator-key.asc"),
            "Lockstep coordinator <coordinator@lockstep.invalid>",
        )
        .context("loading the coordinator's signing key")?;
        if created {
            tracing::info!(fingerprint = %key.fingerprint(), "generated the coordinator's signing key");
        }
        let policy = load_policy(&cfg.policy)?;
        let aptrepo = crate::aptrepo::AptRepo::new(&cfg.data_dir.join("aptrepo"))?;
        let apt = Apt::new(&cfg.data_dir.join("apt"), &cfg.apt_sources, cfg.apt_refresh)
            .context("preparing the private apt configuration")?;
        let host_arch = match &cfg.host_arch {
            Some(a) => a.clone(),
            None => host_arch().context("finding the host architecture")?,
        };
        let scratch = cfg.data_dir.join("scratch");
        std::fs::create_dir_all(&scratch).context("creating the scratch dir")?;
        let cosignatures = crate::witness::Cosignatures::open(&cfg.data_dir.join("witness.sqlite"))
            .context("opening the witness cosignature store")?;
        let service = Service {
            archive: Arc::new(archive),
            jobs: Arc::new(jobs),
            apt: Arc::new(apt),
            aptrepo,
            policy: RwLock::new(Arc::new(policy)),
            key,
            host_arch,
            dispatcher: RwLock::new(None),
            decide_locks: (0..DECIDE_STRIPES).map(|_| Stripe::default()).collect(),
            scratch,
            cosignatures,
            ops: Default::default(),
            cfg,
        };
        service
            .record_policy(&service.policy())
            .map_err(|e| anyhow::anyhow!("recording the policy's trusted set: {e}"))?;
        // A signed checkpoint exists from the start (size 0 on a new archive), and signing one
        // re-checks that the stored tree still reproduces the previous checkpoint.
        service
            .archive
            .checkpoint()
            .context("signing a checkpoint of the log at startup")?;
        Ok(service)
    }

    pub fn set_dispatcher(&self, d: Dispatcher) {
        *self.dispatcher.write().unwrap_or_else(|p| p.into_inner()) = Some(d);
    }

    pub(crate) fn dispatcher(&self) -> Option<Dispatcher> {
        self.dispatcher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the policy file. A broken file is refused and the previous policy stays in force.
    /// Every known package is re-evaluated under the new policy.
    pub fn reload_policy(&self) -> Result<Arc<Policy>> {
        let p = Arc::new(
            load_policy(&self.cfg.policy)
                .map_err(|e| ServiceError::Unprocessable(format!("{e:#}")))?,
        );
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = p.clone();
        tracing::info!(builders = p.builders.len(), "policy reloaded");
        self.record_policy(&p)?;
        for (s, v, a) in self.jobs.keys(None)? {
            self.evaluate(&s, &v, &a)?;
        }
        if let Some(d) = self.dispatcher() {
            d.wake();
        }
        Ok(p)
    }

    /// Fingerprints of trusted builders (their queues are declared by the dispatcher).
    pub fn builder_fingerprints(&self) -> Vec<String> {
        self.policy()
            .builders
            .iter()
            .map(|b| b.fingerprint.clone())
            .collect()
    }

    // ------------------------------------------------------------------ enqueue

    /// Enqueues packages (`name` or `name=version`) from the configured apt sources.
    pub async fn enqueue(&self, packages: &[String], rebuild: bool) -> EnqueueResponse {
        let mut resp = EnqueueResponse::default();
        for spec in packages {
            match self.enqueue_one(spec, rebuild).await {
                Ok(jobs) => resp.jobs.extend(jobs),
                Err(e) => resp.errors.push(EnqueueError {
                    package: spec.clone(),
                    error: format!("{e:#}"),
                }),
            }
        }
        if let Some(d) = self.dispatcher() {
            d.wake();
        }
        resp
    }

    async fn enqueue_one(&self, spec: &str, rebuild: bool) -> anyhow::Result<Vec<EnqueuedJob>> {
        let fetched = self.apt.fetch_source(spec, &self.scratch).await?;
        let dir = fetched.dir.path().to_path_buf();
        let dsc_path = fetched.dsc_path.clone();
        let origin = fetched.origin.clone();
        // Hashing and storing the source files is blocking disk work.
        let archive = self.archive.clone();
        let max = self.cfg.max_blob_bytes;
        let (parsed, files) = tokio::task::spawn_blocking(move || {
            let r = ingest_source_files(&archive, &dsc_path, &dir, max);
            drop(fetched);
            r
        })
        .await
        .context("source ingest task")??;
        self.create_jobs(&parsed, files, &origin, rebuild)
    }

    /// Enqueues a local source package whose `.dsc` and files were uploaded as blobs.
    pub fn enqueue_dsc(&self, dsc_sha256: Sha256Digest, rebuild: bool) -> Result<EnqueueResponse> {
        let path = self.archive.blob_path(&dsc_sha256).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no blob {dsc_sha256}: upload the .dsc and its files first"
            ))
        })?;
        let bytes = read_capped(&path, dsc::MAX_DSC_BYTES as u64)?;
        let parsed = dsc::parse(&bytes)
            .map_err(|e| ServiceError::BadRequest(format!("not a source package: {e}")))?;
        let mut files = Vec::new();
        for f in &parsed.files {
            match self.archive.blob_size(&f.sha256) {
                Some(size) if size == f.size => files.push(FileRef {
                    name: f.name.clone(),
                    sha256: f.sha256,
                    size,
                }),
                Some(size) => {
                    return Err(ServiceError::Unprocessable(format!(
                        "{}: the .dsc says {} bytes but the uploaded file has {size}",
                        f.name, f.size
                    )))
                }
                None => {
                    return Err(ServiceError::Unprocessable(format!(
                        "{} ({}) listed in the .dsc was not uploaded",
                        f.name, f.sha256
                    )))
                }
            }
        }
        let no_epoch = parsed
            .version
            .split_once(':')
            .map_or(parsed.version.as_str(), |(_, v)| v);
        let dsc_name = format!("{}_{}.dsc", parsed.source, no_epoch);
        let dsc_ref = FileRef {
            name: dsc_name,
            sha256: dsc_sha256,
            size: bytes.len() as u64,
        };
        files.insert(0, dsc_ref);
        let jobs = self.create_jobs(
            &parsed,
            files,
            "local upload (lockstep enqueue --dsc)",
            rebuild,
        )?;
        if let Some(d) = self.dispatcher() {
            d.wake();
        }
        Ok(EnqueueResponse {
            jobs,
            errors: Vec::new(),
        })
    }

    /// Creates one job per (source, version, arch) unless one exists (or `rebuild`).
    fn create_jobs(
        &self,
        parsed: &dsc::Dsc,
        files: Vec<FileRef>,
        origin: &str,
        rebuild: bool,
    ) -> anyhow::Result<Vec<EnqueuedJob>> {
        let dsc_ref = files
            .iter()
            .find(|f| f.name.ends_with(".dsc"))
            .cloned()
            .context("no .dsc among the source files")?;
        let targets = dsc::build_jobs(&parsed.architecture, &self.host_arch);
        if targets.is_empty() {
            anyhow::bail!(
                "{} {} builds no binaries for {} (Architecture: {})",
                parsed.source,
                parsed.version,
                self.host_arch,
                parsed.architecture.join(" ")
            );
        }
        let mut out = Vec::new();
        for (arch, kind) in targets {
            let existing = self.jobs.for_key(&parsed.source, &parsed.version, &arch)?;
            if let Some(last) = existing.last() {
                if !rebuild && last.job.dsc.sha256 == dsc_ref.sha256 {
                    out.push(EnqueuedJob {
                        job_id: last.job.job_id.clone(),
                        source: parsed.source.clone(),
                        version: parsed.version.clone(),
                        arch,
                        created: false,
                    });
                    continue;
                }
            }
            let job = Job {
                job_id: uuid::Uuid::new_v4().to_string(),
                source: parsed.source.clone(),
                version: parsed.version.clone(),
                arch: arch.clone(),
                kind,
                dsc: dsc_ref.clone(),
                files: files.clone(),
                origin: origin.to_string(),
                enqueued_at: Utc::now(),
            };
            // Evidence first: the job (with its source digests) becomes a log record.
            let body = serde_json::to_vec(&job)?;
            self.archive.append_record(NewRecord {
                kind: kind::JOB.into(),
                source: job.source.clone(),
                version: job.version.clone(),
                arch: job.arch.clone(),
                job_id: Some(job.job_id.clone()),
                signer: None,
                dedup_key: Some(format!("job:{}", job.job_id)),
                body,
                signature: Some(
                    self.key
                        .sign_detached(&serde_json::to_vec(&job)?)?
                        .into_bytes(),
                ),
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
            })?;
            self.archive.checkpoint()?;
            self.jobs.insert(&job)?;
            tracing::info!(job = %job.job_id, source = %job.source, version = %job.version, arch = %job.arch, "job created");
            out.push(EnqueuedJob {
                job_id: job.job_id,
                source: job.source,
                version: job.version,
                arch,
                created: true,
            });
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ attestations

    /// Verifies and stores an attestation, then re-evaluates the quorum.
    /// Refusals are counted for `/metrics` (`lockstep_attestation_refusals_total`).
    pub fn attest(&self, up: &AttestationUpload) -> Result<Accepted> {
        let r = self.attest_checked(up);
        if let Err(e) = &r {
            self.ops.refusals.count(e);
        }
        r
    }

    fn attest_checked(&self, up: &AttestationUpload) -> Result<Accepted> {
        let policy = self.policy();
        let bytes = up.statement.as_bytes();
        if bytes.len() as u64 > MAX_SIGNED_DOC {
            return Err(ServiceError::TooLarge("statement too large".into()));
        }
        let st: Statement = serde_json::from_slice(bytes)
            .map_err(|e| ServiceError::BadRequest(format!("statement is not valid JSON: {e}")))?;
        if st.canonical_bytes() != bytes {
            return Err(ServiceError::BadRequest(
                "statement is not in canonical form (serde_json compact, declared field order)"
                    .into(),
            ));
        }
        if st.schema != STATEMENT_SCHEMA {
            return Err(ServiceError::BadRequest(format!(
                "unknown statement schema {:?}; expected {STATEMENT_SCHEMA}",
                st.schema
            )));
        }
        // Revoked or expired keys are refused before verification, with a reason (sequoia would
        // only judge them at the signature's self-chosen creation time). Judged by our clock.
        if let Some(claimed) = policy.builder(&st.builder.fingerprint) {
            refuse_invalid_key(claimed, Utc::now())?;
        }
        let verified = policy
            .builder_keyring
            .verify_detached(bytes, up.signature.as_bytes())
            .map_err(|e| refuse_signature("statement", &st.builder.fingerprint, e))?;
        let builder = policy.builder(&verified.fingerprint).ok_or_else(|| {
            ServiceError::Forbidden(format!(
                "{} is not a trusted builder in the policy",
                verified.fingerprint
            ))
        })?;
        refuse_invalid_key(builder, Utc::now())?;
        if !st
            .builder
            .fingerprint
            .eq_ignore_ascii_case(&verified.fingerprint)
        {
            return Err(ServiceError::Forbidden(format!(
                "statement names builder {} but was signed by {}",
                st.builder.fingerprint, verified.fingerprint
            )));
        }
        let job = self
            .jobs
            .get(&st.job_id)?
            .ok_or_else(|| ServiceError::NotFound(format!("unknown job {}", st.job_id)))?
            .job;
        check_statement_matches_job(&st, &job)?;
        check_artifacts(&self.archive, &st)?;

        // The clearsigned .buildinfo: same signer, and its text is the one the statement names.
        let bi_path = self
            .archive
            .blob_path(&up.signed_buildinfo)
            .ok_or_else(|| {
                ServiceError::Unprocessable(format!(
                    "signed .buildinfo {} was not uploaded",
                    up.signed_buildinfo
                ))
            })?;
        let signed_bi = read_capped(&bi_path, MAX_SIGNED_DOC)?;
        let (bi_signer, bi_text) = policy
            .builder_keyring
            .verify_clearsigned(&signed_bi)
            .map_err(|e| refuse_signature(".buildinfo", &st.builder.fingerprint, e))?;
        if bi_signer.fingerprint != verified.fingerprint {
            return Err(ServiceError::Forbidden(
                "the .buildinfo and the statement were signed by different keys".into(),
            ));
        }
        if Sha256Digest::of(&bi_text) != st.buildinfo.sha256
            || bi_text.len() as u64 != st.buildinfo.size
        {
            return Err(ServiceError::Unprocessable(
                "the signed .buildinfo's text does not match the statement's buildinfo digest"
                    .into(),
            ));
        }
        let mut blobs: Vec<BlobLink> = st
            .artifacts
            .iter()
            .map(|a| BlobLink {
                role: "artifact".into(),
                name: a.name.clone(),
                sha256: a.sha256,
                size: a.size,
            })
            .collect();
        blobs.push(BlobLink {
            role: "buildinfo".into(),
            name: format!("{}.asc", st.buildinfo.name),
            sha256: up.signed_buildinfo,
            size: signed_bi.len() as u64,
        });
        if let Some(log) = up.build_log {
            let size = self.archive.blob_size(&log).ok_or_else(|| {
                ServiceError::Unprocessable(format!("build log {log} was not uploaded"))
            })?;
            blobs.push(BlobLink {
                role: "log".into(),
                name: format!("{}_{}_{}.build", st.source, st.version, st.arch),
                sha256: log,
                size,
            });
        }
        let record = NewRecord {
            kind: kind::ATTESTATION.into(),
            source: st.source.clone(),
            version: st.version.clone(),
            arch: st.arch.clone(),
            job_id: Some(st.job_id.clone()),
            signer: Some(verified.fingerprint.clone()),
            dedup_key: Some(format!(
                "attestation:{}:{}",
                st.job_id, verified.fingerprint
            )),
            body: bytes.to_vec(),
            signature: Some(up.signature.as_bytes().to_vec()),
            blobs,
        };
        // The vote exactly as `evidence` reads it back once stored (the archive's clock is read
        // again at commit, a moment later; the key was just checked valid at this time).
        let vote = Vote {
            fingerprint: verified.fingerprint.clone(),
            statement: Sha256Digest::of(bytes),
            artifacts: artifact_digests(&st),
            recorded_at: Utc::now(),
        };
        // Stored together with the decision it causes, if any: when this returns, both are
        // durable and under a signed checkpoint.
        let (rec, outcome) = self.decide(
            &st.source,
            &st.version,
            &st.arch,
            Some(PendingVote { record, vote }),
        )?;
        let rec = rec.ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!("the attestation was not stored"))
        })?;
        if rec.created {
            tracing::info!(job = %st.job_id, builder = %builder.name, fingerprint = %verified.fingerprint, leaf = rec.leaf_index, "attestation accepted");
        } else {
            tracing::info!(job = %st.job_id, builder = %builder.name, "attestation already stored (redelivery)");
        }
        Ok(Accepted {
            record_id: rec.id,
            leaf_index: rec.leaf_index,
            created: rec.created,
            state: outcome.state,
        })
    }

    /// Verifies and stores a builder's failure report.
    pub fn report_failure(&self, up: &FailureUpload) -> Result<State> {
        let policy = self.policy();
        let bytes = up.report.as_bytes();
        let report: FailureReport = serde_json::from_slice(bytes).map_err(|e| {
            ServiceError::BadRequest(format!("failure report is not valid JSON: {e}"))
        })?;
        let verified = policy
            .builder_keyring
            .verify_detached(bytes, up.signature.as_bytes())
            .map_err(|e| refuse_signature("failure report", &report.builder.fingerprint, e))?;
        if !report
            .builder
            .fingerprint
            .eq_ignore_ascii_case(&verified.fingerprint)
        {
            return Err(ServiceError::Forbidden(
                "failure report names another builder than its signer".into(),
            ));
        }
        let job = self
            .jobs
            .get(&report.job_id)?
            .ok_or_else(|| ServiceError::NotFound(format!("unknown job {}", report.job_id)))?
            .job;
        let mut blobs = Vec::new();
        if let Some(log) = report.build_log {
            if let Some(size) = self.archive.blob_size(&log) {
                blobs.push(BlobLink {
                    role: "log".into(),
                    name: format!("{}_{}_{}.build", job.source, job.version, job.arch),
                    sha256: log,
                    size,
                });
            }
        }
        self.archive.append_record(NewRecord {
            kind: kind::FAILURE.into(),
            source: job.source.clone(),
            version: job.version.clone(),
            arch: job.arch.clone(),
            job_id: Some(job.job_id.clone()),
            signer: Some(verified.fingerprint.clone()),
            dedup_key: Some(format!("failure:{}:{}", job.job_id, verified.fingerprint)),
            body: bytes.to_vec(),
            signature: Some(up.signature.as_bytes().to_vec()),
            blobs,
        })?;
        tracing::warn!(job = %job.job_id, builder = %verified.fingerprint, kind = %report.kind, reason = %report.reason, "builder reported a failure");
        Ok(self.evaluate(&job.source, &job.version, &job.arch)?.state)
    }

    // ------------------------------------------------------------------ quorum and decisions

    fn evidence(
        &self,
        source: &str,
        version: &str,
        arch: &str,
    ) -> Result<(Vec<Record>, Vec<Vote>, Vec<Failure>)> {
        let records = self.archive.records_for(source, version, arch, None)?;
        let mut votes = Vec::new();
        let mut failures = Vec::new();
        for r in &records {
            match r.kind.as_str() {
                kind::ATTESTATION => {
                    let st: Statement =
                        serde_json::from_slice(&r.body).context("decoding a stored statement")?;
                    votes.push(Vote {
                        fingerprint: r.signer.clone().unwrap_or_default(),
                        statement: r.body_sha256,
                        artifacts: artifact_digests(&st),
                        recorded_at: r.created_at,
                    });
                }
                kind::FAILURE => {
                    let f: FailureReport = serde_json::from_slice(&r.body)
                        .context("decoding a stored failure report")?;
                    failures.push(Failure {
                        fingerprint: r.signer.clone().unwrap_or_default(),
                        kind: f.kind,
                        reason: f.reason,
                    });
                }
                _ => {}
            }
        }
        Ok((records, votes, failures))
    }

    /// The decision lock stripe of one (source, version, arch).
    fn decide_stripe(&self, source: &str, version: &str, arch: &str) -> &Stripe {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (source, version, arch).hash(&mut h);
        &self.decide_locks[(h.finish() % DECIDE_STRIPES as u64) as usize]
    }

    /// Evaluates the quorum and records a new signed decision when the outcome changed.
    pub fn evaluate(&self, source: &str, version: &str, arch: &str) -> Result<Outcome> {
        Ok(self.decide(source, version, arch, None)?.1)
    }

    /// [`Service::evaluate`], counting `pending` — an attestation checked but not yet stored — as
    /// if it were. The attestation and the decision it causes are appended together (all or
    /// none, one group commit), so a deciding attestation costs one commit, not two. Returns
    /// where the attestation was stored.
    ///
    /// Evaluations of one key are serialised by its lock stripe. A decision is recorded while
    /// holding it, but an attestation that changes no decision (the first of a quorum, usually)
    /// lets go of it as soon as it is queued for the group commit and waits for durability
    /// alone: it stays in the stripe's in-flight list until answered, and later evaluations of
    /// the key count its vote, making any decision they record depend on it being stored. So the
    /// attestations of one package that arrive together share a commit instead of queueing for
    /// one each (issue 7, P3).
    fn decide(
        &self,
        source: &str,
        version: &str,
        arch: &str,
        mut pending: Option<PendingVote>,
    ) -> Result<(Option<RecordRef>, Outcome)> {
        let stripe = self.decide_stripe(source, version, arch);
        let guard = stripe.decide.lock().unwrap_or_else(|p| p.into_inner());
        // This key's attestations in flight, taken before the stored evidence is read: none is
        // added while this lock is held, and one taken out meanwhile was stored first.
        let in_flight: Vec<Arc<InFlight>> = stripe
            .in_flight()
            .iter()
            .filter(|f| f.is_for(source, version, arch))
            .cloned()
            .collect();
        // An earlier delivery of the same attestation still in flight: let it settle, so that the
        // stored evidence tells a redelivery from a conflict. (Its caller is in the group commit
        // already and needs no lock to be answered.)
        if let Some(p) = &pending {
            for f in in_flight
                .iter()
                .filter(|f| f.dedup_key == p.record.dedup_key)
            {
                f.ticket.wait();
            }
        }
        let policy = self.policy();
        let (records, mut votes, failures) = self.evidence(source, version, arch)?;
        // Attestations in flight count (unless already refused); a decision counting them is
        // stored only if they are. One that committed since is among the stored votes already.
        let mut after = Vec::new();
        for f in in_flight
            .iter()
            .filter(|f| f.ticket.committed() != Some(false))
        {
            if !votes.iter().any(|v| v.statement == f.vote.statement) {
                votes.push(f.vote.clone());
            }
            after.push(f.ticket.clone());
        }
        let mut stored = None;
        // Its key is already taken (every attestation of this key is stored under this lock): a
        // redelivery, answered `created: false`, or other bytes, a conflict and an alarm. Either
        // way it is appended alone and the stored evidence decides.
        if let Some(p) = pending.take_if(|p| {
            records
                .iter()
                .any(|r| r.dedup_key.is_some() && r.dedup_key == p.record.dedup_key)
        }) {
            stored = Some(self.archive.append_record(p.record)?);
        }
        if let Some(p) = &pending {
            votes.push(p.vote.clone());
        }
        let (outcome, developer_mismatch, official) =
            judge(&policy, source, &records, &votes, &failures);
        let last = records
            .iter()
            .rev()
            .find(|r| r.kind == kind::DECISION)
            .map(|r| -> anyhow::Result<(Decision, Sha256Digest)> {
                Ok((
                    serde_json::from_slice(&r.body).context("decoding a stored decision")?,
                    r.body_sha256,
                ))
            })
            .transpose()?;
        let changed = match &last {
            None => outcome.state != State::Pending,
            Some((d, _)) => {
                d.state != outcome.state
                    || d.counted != outcome.counted
                    || d.artifacts != outcome.artifacts
                    || d.dissenters != outcome.dissenters
                    || d.developer_mismatch != developer_mismatch
                    || d.official != official
            }
        };
        if !changed {
            if let Some(p) = pending {
                stored = Some(self.append_in_flight(stripe, guard, (source, version, arch), p)?);
            }
            return Ok((stored, outcome));
        }
        let decision = Decision {
            schema: Decision::SCHEMA.into(),
            source: source.into(),
            version: version.into(),
            arch: arch.into(),
            state: outcome.state,
            reason: outcome.reason.clone(),
            threshold: outcome.threshold,
            counted: outcome.counted.clone(),
            attestations: outcome.attestations.clone(),
            artifacts: outcome.artifacts.clone(),
            dissenters: outcome.dissenters.clone(),
            developer_mismatch,
            official,
            supersedes: last.as_ref().map(|(_, d)| *d),
            decided_at: Utc::now(),
        };
        let body = decision.canonical_bytes();
        let signature = self
            .key
            .sign_detached(&body)
            .map_err(|e| anyhow::anyhow!(e))?;
        let decision_record = NewRecord {
            kind: kind::DECISION.into(),
            source: source.into(),
            version: version.into(),
            arch: arch.into(),
            job_id: None,
            signer: Some(self.key.fingerprint()),
            dedup_key: None,
            body,
            signature: Some(signature.into_bytes()),
            blobs: Vec::new(),
        };
        let decision_ref = match pending {
            Some(p) => {
                let refs = self
                    .archive
                    .append_records_after(vec![p.record, decision_record], &after)?;
                stored = refs.first().copied();
                *refs
                    .last()
                    .context("append_records returns one ref per record")?
            }
            None => *self
                .archive
                .append_records_after(vec![decision_record], &after)?
                .first()
                .context("append_records returns one ref per record")?,
        };
        // The append committed the decision under a signed checkpoint (the archive's group
        // commit), so it is provable before it is published.
        tracing::info!(%source, %version, %arch, state = %decision.state, reason = %decision.reason, "decision recorded");
        // The apt repository follows every decision; failing to publish it never loses the
        // decision (it is recorded), and the next decision or a restart publishes again.
        self.publish_apt();
        // Under require_witness a ship is published once a witness cosigned a checkpoint
        // covering this decision (crate::witness).
        if let Some(d) = self
            .dispatcher()
            .filter(|_| !self.awaits_witness(&policy, decision.state, decision_ref.leaf_index))
        {
            d.publish_decision(decision);
        }
        Ok((stored, outcome))
    }

    /// Stores an attestation that changed no decision, letting go of its key's lock (`guard`)
    /// once it is queued (see [`Service::decide`]).
    fn append_in_flight(
        &self,
        stripe: &Stripe,
        guard: MutexGuard<'_, ()>,
        (source, version, arch): (&str, &str, &str),
        p: PendingVote,
    ) -> Result<RecordRef> {
        let mut unregister = Unregister {
            stripe,
            entry: None,
        };
        let dedup_key = p.record.dedup_key.clone();
        let appended = self
            .archive
            .append_records_then(vec![p.record], &[], |ticket| {
                let entry = Arc::new(InFlight {
                    key: (source.into(), version.into(), arch.into()),
                    dedup_key,
                    vote: p.vote,
                    ticket,
                });
                stripe.in_flight().push(entry.clone());
                unregister.entry = Some(entry);
                drop(guard);
            });
        drop(unregister);
        match appended {
            Ok(refs) => Ok(*refs
                .first()
                .context("append_records returns one ref per record")?),
            Err(e) => {
                // Its vote may have been counted while in flight: any decision that did so was
                // refused with it. Judge what is stored again.
                if let Err(again) = self.evaluate(source, version, arch) {
                    tracing::warn!(%source, %version, %arch, error = %again, "re-evaluating after a failed append");
                }
                Err(e.into())
            }
        }
    }

    /// Marks the apt repository stale after a decision; it is regenerated off this path.
    pub fn publish_apt(&self) {
        self.aptrepo.mark_stale();
    }

    /// Regenerates the apt repository of shipped packages if a decision changed it.
    pub fn refresh_apt(&self) -> anyhow::Result<()> {
        self.aptrepo.refresh_if_stale(|| {
            let policy = self.policy();
            let awaiting = |leaf: u64| self.awaits_witness(&policy, State::Ship, leaf);
            self.aptrepo
                .regenerate(&self.archive, &self.key, &self.host_arch, &awaiting)
        })
    }

    /// Status rows (BRIEF.md contract), optionally for one source.
    pub fn status(&self, source: Option<&str>) -> Result<Vec<StatusEntry>> {
        let mut out = Vec::new();
        self.status_each(source, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// The (source, version, arch) keys the status covers, in status order.
    pub fn status_keys(&self, source: Option<&str>) -> Result<Vec<(String, String, String)>> {
        Ok(self.jobs.keys(source)?)
    }

    /// Status rows one at a time, in the order of [`Service::status`], without holding them all:
    /// `each` sees every row and may stop the walk with an error (a closed HTTP stream, say).
    pub fn status_each(
        &self,
        source: Option<&str>,
        each: impl FnMut(StatusEntry) -> Result<()>,
    ) -> Result<()> {
        self.status_of_keys(self.status_keys(source)?, each)
    }

    /// Status rows of `keys` (from [`Service::status_keys`]), one at a time.
    pub fn status_of_keys(
        &self,
        keys: Vec<(String, String, String)>,
        mut each: impl FnMut(StatusEntry) -> Result<()>,
    ) -> Result<()> {
        let policy = self.policy();
        for (s, v, a) in keys {
            let (records, votes, failures) = self.evidence(&s, &v, &a)?;
            let (outcome, developer_mismatch, official) =
                judge(&policy, &s, &records, &votes, &failures);
            let outcome = self.witness_gate(&policy, &records, outcome);
            let mut builders: Vec<String> = votes.iter().map(|v| v.fingerprint.clone()).collect();
            builders.sort();
            builders.dedup();
            let artifacts = if outcome.state == State::Ship {
                outcome.artifacts.clone()
            } else {
                let mut all: Vec<ArtifactDigest> =
                    votes.iter().flat_map(|v| v.artifacts.clone()).collect();
                all.sort();
                all.dedup();
                all
            };
            let failures = records
                .iter()
                .filter(|r| r.kind == kind::FAILURE)
                .filter_map(|r| serde_json::from_slice::<FailureReport>(&r.body).ok())
                .map(|f| FailureSummary {
                    builder: f.builder.fingerprint,
                    kind: f.kind,
                    reason: f.reason,
                    log_tail: f.log_tail,
                })
                .collect();
            let decided_at = records
                .iter()
                .rev()
                .find(|r| r.kind == kind::DECISION)
                .map(|r| r.created_at);
            each(StatusEntry {
                job_ids: self
                    .jobs
                    .for_key(&s, &v, &a)?
                    .into_iter()
                    .map(|j| j.job.job_id)
                    .collect(),
                source: s,
                version: v,
                arch: a,
                state: outcome.state,
                reason: outcome.reason,
                threshold: outcome.threshold,
                builders,
                artifacts,
                failures,
                decided_at,
                developer_mismatch,
                official,
            })?;
        }
        Ok(())
    }

    /// Whether `fingerprint` already has an attestation stored for `job_id`.
    pub fn has_attestation(&self, job_id: &str, fingerprint: &str) -> Result<bool> {
        let Some(row) = self.jobs.get(job_id)? else {
            return Err(ServiceError::NotFound(format!("unknown job {job_id}")));
        };
        let j = row.job;
        Ok(self
            .archive
            .records_for(&j.source, &j.version, &j.arch, Some(kind::ATTESTATION))?
            .iter()
            .any(|r| {
                r.job_id.as_deref() == Some(job_id)
                    && r.signer
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case(fingerprint))
            }))
    }

    /// Every decision for a (source, version, arch), oldest first, with its signature.
    pub fn decisions(
        &self,
        source: &str,
        version: &str,
        arch: &str,
    ) -> Result<Vec<(Decision, String)>> {
        let mut out = Vec::new();
        for r in self
            .archive
            .records_for(source, version, arch, Some(kind::DECISION))?
        {
            let d: Decision =
                serde_json::from_slice(&r.body).context("decoding a stored decision")?;
            let sig =
                String::from_utf8_lossy(r.signature.as_deref().unwrap_or_default()).to_string();
            out.push((d, sig));
        }
        Ok(out)
    }
}

/// Refuses a vote from a builder whose key is revoked or expired at `now` (the log's clock).
fn refuse_invalid_key(
    builder: &lockstep_proto::policy::TrustedBuilder,
    now: chrono::DateTime<Utc>,
) -> Result<()> {
    builder.check_at(now).map_err(|why| {
        tracing::warn!(builder = %builder.name, fingerprint = %builder.fingerprint, %why, "refused a vote from an invalid key");
        ServiceError::Forbidden(format!(
            "builder {} ({}) cannot vote: {why}; its attestations are refused — give the builder a new key and list it in the policy",
            builder.name, builder.fingerprint
        ))
    })
}

/// The outcome for one (source, version, arch) from its evidence: the builders' quorum, then
/// developer uploads and the distribution's binaries compared with the agreed bytes (each may
/// flag, or hold when the policy says so). Recording decisions and serving status share it, so
/// what is shown is what is decided.
fn judge(
    policy: &Policy,
    source: &str,
    records: &[Record],
    votes: &[Vote],
    failures: &[Failure],
) -> (
    Outcome,
    Vec<String>,
    Option<lockstep_proto::v1::OfficialComparison>,
) {
    let outcome = quorum::evaluate(policy, source, votes, failures);
    let (outcome, developer_mismatch) = crate::uploads::apply(policy, records, outcome);
    let (outcome, official) = crate::official::apply(policy, records, outcome);
    (outcome, developer_mismatch, official)
}

/// Maps a signature failure to a refusal that says what was wrong.
fn refuse_signature(what: &str, claimed: &str, e: SigningError) -> ServiceError {
    tracing::warn!(%what, claimed_builder = %claimed, error = %e, "refused an upload with a bad signature");
    match e {
        SigningError::UnknownKey(k) => ServiceError::Forbidden(format!(
            "{what} is signed by a key that is not a trusted builder ({k}); add its certificate to the policy"
        )),
        other => ServiceError::Forbidden(format!("{what} signature refused: {other}")),
    }
}

fn check_statement_matches_job(st: &Statement, job: &Job) -> Result<()> {
    let mut bad = Vec::new();
    if st.source != job.source {
        bad.push("source");
    }
    if st.version != job.version {
        bad.push("version");
    }
    if st.arch != job.arch {
        bad.push("arch");
    }
    if st.dsc_sha256 != job.dsc.sha256 {
        bad.push("dsc_sha256");
    }
    if st.source_files != job.files {
        bad.push("source_files");
    }
    if st.source_origin != job.origin {
        bad.push("source_origin");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Unprocessable(format!(
            "statement does not match job {}: {} differ",
            job.job_id,
            bad.join(", ")
        )))
    }
}

fn check_artifacts(archive: &Archive, st: &Statement) -> Result<()> {
    if st.artifacts.is_empty() {
        return Err(ServiceError::Unprocessable(
            "statement lists no artifacts".into(),
        ));
    }
    let mut names: Vec<&str> = st.artifacts.iter().map(|a| a.name.as_str()).collect();
    let sorted = names.windows(2).all(|w| w[0] < w[1]);
    names.dedup();
    if !sorted || names.len() != st.artifacts.len() {
        return Err(ServiceError::Unprocessable(
            "artifacts must be sorted by name and unique".into(),
        ));
    }
    for a in &st.artifacts {
        dsc::check_file_name(&a.name)
            .map_err(|e| ServiceError::Unprocessable(format!("artifact name: {e}")))?;
        if ![".deb", ".udeb", ".ddeb"]
            .iter()
            .any(|s| a.name.ends_with(s))
        {
            return Err(ServiceError::Unprocessable(format!(
                "artifact {} is not a binary package",
                a.name
            )));
        }
        match archive.blob_size(&a.sha256) {
            Some(s) if s == a.size => {}
            Some(s) => {
                return Err(ServiceError::Unprocessable(format!(
                    "artifact {}: statement says {} bytes, stored blob has {s}",
                    a.name, a.size
                )))
            }
            None => {
                return Err(ServiceError::Unprocessable(format!(
                    "artifact {} ({}) was not uploaded",
                    a.name, a.sha256
                )))
            }
        }
    }
    dsc::check_file_name(&st.buildinfo.name)
        .map_err(|e| ServiceError::Unprocessable(format!("buildinfo name: {e}")))?;
    Ok(())
}

/// Hashes every file a `.dsc` lists, checks it against the `.dsc`, and stores the `.dsc` and its
/// files in the archive as one batch ([`Archive::put_blobs`]: two file-system syncs and one
/// commit for the whole source package). A file that does not match the `.dsc` fails the batch
/// before anything of it is stored.
fn ingest_source_files(
    archive: &Archive,
    dsc_path: &Path,
    dir: &Path,
    max: u64,
) -> anyhow::Result<(dsc::Dsc, Vec<FileRef>)> {
    let bytes =
        std::fs::read(dsc_path).with_context(|| format!("reading {}", dsc_path.display()))?;
    let parsed = dsc::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", dsc_path.display()))?;
    let dsc_name = dsc_path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the .dsc has no file name")?
        .to_string();
    // Item 0 is the .dsc, item i > 0 is parsed.files[i - 1]. A .dsc lists a handful of files, so
    // they are all opened up front.
    let mut items: Vec<(Option<Sha256Digest>, Box<dyn std::io::Read + '_>)> =
        Vec::with_capacity(1 + parsed.files.len());
    items.push((None, Box::new(&bytes[..])));
    for f in &parsed.files {
        let path = dir.join(&f.name);
        let file = std::fs::File::open(&path).with_context(|| {
            format!("{} lists {} but it is missing", dsc_path.display(), f.name)
        })?;
        items.push((Some(f.sha256), Box::new(file)));
    }
    let puts = archive.put_blobs(items, max).map_err(|e| match e.item {
        Some(0) => anyhow::Error::new(e.error).context("storing the .dsc"),
        Some(i) => {
            let f = &parsed.files[i - 1];
            match e.error {
                ArchiveError::DigestMismatch { .. } => anyhow::anyhow!(
                    "{}: checksum does not match the .dsc ({}); the source is corrupt or tampered with",
                    f.name,
                    e.error
                ),
                other => anyhow::Error::new(other).context(format!("storing {}", f.name)),
            }
        }
        None => anyhow::Error::new(e.error).context(format!("storing {dsc_name} and its files")),
    })?;
    let mut files = Vec::with_capacity(puts.len());
    files.push(FileRef {
        name: dsc_name,
        sha256: puts[0].digest,
        size: puts[0].size,
    });
    for (f, put) in parsed.files.iter().zip(&puts[1..]) {
        if put.size != f.size {
            anyhow::bail!(
                "{}: size {} differs from the .dsc's {}",
                f.name,
                put.size,
                f.size
            );
        }
        files.push(FileRef {
            name: f.name.clone(),
            sha256: put.digest,
            size: put.size,
        });
    }
    Ok((parsed, files))
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.len() > max {
        return Err(ServiceError::TooLarge(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
}

fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    if !path.exists() {
        tracing::warn!(policy = %path.display(), "no policy file: no builder is trusted, nothing can ship");
        return Policy::resolve(Default::default(), Path::new("."), "built-in empty policy")
            .map_err(anyhow::Error::new);
    }
    Policy::load(path).map_err(anyhow::Error::new)
}

/// `dpkg --print-architecture`.
pub fn host_arch() -> anyhow::Result<String> {
    let out = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    anyhow::ensure!(out.status.success(), "dpkg --print-architecture failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The (name, digest) pairs a statement votes for, as the quorum compares them.
fn artifact_digests(st: &Statement) -> Vec<ArtifactDigest> {
    st.artifacts
        .iter()
        .map(|a| ArtifactDigest {
            name: a.name.clone(),
            sha256: a.sha256,
        })
        .collect()
}
