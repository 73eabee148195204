//! Version 1 of the wire contract between coordinator, agents and the command line.
//!
//! Everything here is serialised as JSON. The [`Statement`] is what a builder signs; its canonical
//! bytes are `serde_json::to_vec` of the struct (field order as declared, no whitespace), and the
//! coordinator refuses a statement whose bytes are not canonical, so that one statement has exactly
//! one byte form and one digest.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// AMQP topic exchange that jobs are published to. Routing key: `job.<arch>.<source>`.
pub const JOBS_EXCHANGE: &str = "lockstep.jobs";
/// Dead-letter exchange for jobs a builder could not process after the delivery limit.
pub const DEAD_LETTER_EXCHANGE: &str = "lockstep.dead";
/// Queue that collects dead-lettered jobs for operators to inspect.
pub const DEAD_LETTER_QUEUE: &str = "lockstep.dead";
/// Topic exchange where decisions are published. Routing key: `<state>.<arch>.<source>`.
pub const DECISIONS_EXCHANGE: &str = "lockstep.decisions";
/// Topic exchange for agent heartbeats and phase changes. Routing key: `agent.<fingerprint>`.
pub const EVENTS_EXCHANGE: &str = "lockstep.events";
/// Schema tag inside every statement.
pub const STATEMENT_SCHEMA: &str = "lockstep.statement/v1";

/// Most bytes a client sends in one `POST /api/v1/blobs` request. The coordinator stages a
/// whole batch in its archive's temp directory before it syncs and links any of it, and a failed
/// request is sent again whole: 256 MiB keeps both bounded while an attestation's or an upload's
/// blobs usually go in one request.
pub const BLOB_BATCH_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Most blobs a client sends in one `POST /api/v1/blobs` request: every file of a request is open
/// until it is sent, so this bounds a client's open files (the coordinator takes up to 10,000).
pub const BLOB_BATCH_MAX_PARTS: usize = 256;

/// Cuts blobs of `sizes` bytes, in order, into the requests of `POST /api/v1/blobs`: groups of at
/// most [`BLOB_BATCH_MAX_BYTES`] and [`BLOB_BATCH_MAX_PARTS`]; a larger blob goes alone.
pub fn blob_batches(sizes: &[u64]) -> Vec<std::ops::Range<usize>> {
    batches(sizes, BLOB_BATCH_MAX_BYTES, BLOB_BATCH_MAX_PARTS)
}

fn batches(sizes: &[u64], max_bytes: u64, max_parts: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (bytes.saturating_add(size) > max_bytes || i - start == max_parts) {
            groups.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(size);
    }
    if start < sizes.len() {
        groups.push(start..sizes.len());
    }
    groups
}

/// The durable quorum queue of one builder identity. Agents that share an identity share it.
pub fn builder_queue(identity: &str) -> String {
    format!("lockstep.build.{identity}")
}

/// Routing key of a job message.
pub fn job_routing_key(arch: &str, source: &str) -> String {
    format!("job.{arch}.{source}")
}

/// One file of a source package, named by its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// Which binary packages a job builds: `-B` (architecture-dependent) or `-A` (`Architecture: all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    /// `dpkg-buildpackage -B`
    Any,
    /// `dpkg-buildpackage -A`
    All,
}

impl BuildKind {
    pub fn dpkg_flag(self) -> &'static str {
        match self {
            BuildKind::Any => "-B",
            BuildKind::All => "-A",
        }
    }
}

/// A rebuild job, as published to every builder. It carries digests, never bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub source: String,
    pub version: String,
    /// Debian architecture name of the build (`amd64`, …, or `all`).
    pub arch: String,
    pub kind: BuildKind,
    /// The `.dsc`; also listed in `files`.
    pub dsc: FileRef,
    /// Every file of the source package including the `.dsc`.
    pub files: Vec<FileRef>,
    /// Where the source came from (apt source line and suite, or a local upload).
    pub origin: String,
    pub enqueued_at: DateTime<Utc>,
}

/// The build image a statement was made in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Local tag, e.g. `lockstep-build:bookworm`.
    pub name: String,
    /// Digest of the image's root filesystem layer (`sha256:…`): equal for equal recipes.
    pub digest: String,
}

/// How the build was made; recorded so that differing results can be explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// e.g. `dpkg-buildpackage -B -us -uc` run under fakeroot as a non-root user.
    pub command: String,
    pub build_path: String,
    pub user: String,
    pub environment: Vec<String>,
}

/// The builder that signed a statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderRef {
    /// OpenPGP fingerprint of the signing certificate's primary key, upper-case hex.
    pub fingerprint: String,
    pub name: String,
}

/// What a builder signs after a successful build. Quorum counts these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub schema: String,
    pub job_id: String,
    pub source: String,
    pub version: String,
    pub arch: String,
    pub dsc_sha256: Sha256Digest,
    pub source_files: Vec<FileRef>,
    pub source_origin: String,
    pub image: ImageRef,
    pub recipe: Recipe,
    pub builder: BuilderRef,
    /// Binary packages produced, sorted by name.
    pub artifacts: Vec<FileRef>,
    /// Debian's `.buildinfo` as produced by the build (unsigned bytes).
    pub buildinfo: FileRef,
    pub built_at: DateTime<Utc>,
}

impl Statement {
    /// The one byte form that is signed and stored.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and vectors cannot fail.
        serde_json::to_vec(self).expect("statement serialises")
    }

    /// The set agreement is judged on: (artifact name, SHA-256), sorted.
    pub fn artifact_set(&self) -> Vec<(String, Sha256Digest)> {
        let mut v: Vec<_> = self
            .artifacts
            .iter()
            .map(|a| (a.name.clone(), a.sha256))
            .collect();
        v.sort();
        v
    }
}

/// Body of `POST /api/v1/attestations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestationUpload {
    /// Canonical statement bytes, as UTF-8 JSON text.
    pub statement: String,
    /// ASCII-armored detached OpenPGP signature over `statement`.
    pub signature: String,
    /// Digest of the clearsigned `.buildinfo`, uploaded as a blob beforehand.
    pub signed_buildinfo: Sha256Digest,
    /// Digest of the (capped) build log, uploaded as a blob beforehand.
    pub build_log: Option<Sha256Digest>,
}

/// A builder's report that a job could not be built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    pub job_id: String,
    pub builder: BuilderRef,
    /// `build` (the package failed to build), `timeout`, `infrastructure`, `source` (bad input).
    pub kind: String,
    pub reason: String,
    /// Last lines of the build log.
    pub log_tail: String,
    pub build_log: Option<Sha256Digest>,
    pub at: DateTime<Utc>,
}

/// Body of `POST /api/v1/failures`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailureUpload {
    /// Canonical JSON of a [`FailureReport`].
    pub report: String,
    /// Detached armored signature over `report`.
    pub signature: String,
}

/// Body of `POST /api/v1/jobs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EnqueueRequest {
    /// `hello` or `hello=2.10-3`.
    pub packages: Vec<String>,
    /// Build again even when a job for the same (source, version, arch) exists.
    #[serde(default)]
    pub rebuild: bool,
}

/// One job created (or found) by an enqueue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnqueuedJob {
    pub job_id: String,
    pub source: String,
    pub version: String,
    pub arch: String,
    /// `false` when the job already existed and was not created again.
    pub created: bool,
}

/// Answer to an enqueue: jobs created and per-package errors.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EnqueueResponse {
    pub jobs: Vec<EnqueuedJob>,
    pub errors: Vec<EnqueueError>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnqueueError {
    pub package: String,
    pub error: String,
}

/// Quorum state of one (source, version, arch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Ship,
    Hold,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Ship => "ship",
            State::Hold => "hold",
            State::Failed => "failed",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An artifact name and digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArtifactDigest {
    pub name: String,
    pub sha256: Sha256Digest,
}

/// A decision: a new record each time the state of a (source, version, arch) changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub schema: String,
    pub source: String,
    pub version: String,
    pub arch: String,
    pub state: State,
    pub reason: String,
    /// Threshold in force.
    pub threshold: usize,
    /// Fingerprints of the builders whose attestations were counted.
    pub counted: Vec<String>,
    /// Digests of the counted statements (canonical bytes).
    pub attestations: Vec<Sha256Digest>,
    /// The agreed artifacts (empty unless ship).
    pub artifacts: Vec<ArtifactDigest>,
    /// Builders whose artifacts differ from the others, when held for disagreement.
    pub dissenters: Vec<String>,
    /// Developer uploads whose binaries differ from the builders' agreed bytes (flagged; they
    /// hold the package under `developer_mismatch = "hold"`). Omitted when empty, so decisions
    /// recorded before this field existed keep their canonical bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub developer_mismatch: Vec<String>,
    /// How the agreed bytes compare with the distribution's published binaries, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub official: Option<OfficialComparison>,
    /// The decision this one supersedes, by digest of its canonical bytes.
    pub supersedes: Option<Sha256Digest>,
    pub decided_at: DateTime<Utc>,
}

impl Decision {
    pub const SCHEMA: &'static str = "lockstep.decision/v1";
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("decision serialises")
    }
}

/// One row of `lockstep status --json` (contract in BRIEF.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    pub source: String,
    pub version: String,
    pub arch: String,
    pub state: State,
    pub reason: String,
    pub threshold: usize,
    /// Fingerprints that attested.
    pub builders: Vec<String>,
    /// Agreed artifacts when shipped; otherwise every distinct artifact seen.
    pub artifacts: Vec<ArtifactDigest>,
    pub job_ids: Vec<String>,
    pub failures: Vec<FailureSummary>,
    pub decided_at: Option<DateTime<Utc>>,
    /// Developer uploads whose binaries differ from the builders' agreed bytes, one line each.
    #[serde(default)]
    pub developer_mismatch: Vec<String>,
    /// How the rebuilt bytes compare with the distribution's published binaries, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub official: Option<OfficialComparison>,
}

/// The verdict on a package against the distribution's own binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfficialVerdict {
    /// The builders agree and every published binary is byte-for-byte what they built.
    Reproduces,
    /// The builders agree but at least one published binary differs.
    OfficialDiffers,
    /// The builders disagree among themselves.
    BuildersDisagree,
    /// Not enough builders have attested yet.
    Pending,
}

impl OfficialVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            OfficialVerdict::Reproduces => "reproduces the official bytes",
            OfficialVerdict::OfficialDiffers => "official bytes differ",
            OfficialVerdict::BuildersDisagree => "builders disagree",
            OfficialVerdict::Pending => "pending",
        }
    }
}

/// One published binary against the rebuilt one of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficialArtifact {
    pub name: String,
    /// What the distribution published (None: it publishes no file of this name, e.g. dbgsym).
    pub official: Option<Sha256Digest>,
    /// What the agreeing builders produced (None: they did not produce it).
    pub rebuilt: Option<Sha256Digest>,
    /// `identical`, `differs`, `not-published` or `not-rebuilt`.
    pub result: String,
}

/// The comparison with the distribution's published binaries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficialComparison {
    pub verdict: OfficialVerdict,
    pub artifacts: Vec<OfficialArtifact>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureSummary {
    pub builder: String,
    pub kind: String,
    pub reason: String,
    pub log_tail: String,
}

/// Agent phases, published as events and shown by `enqueue --wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Fetching,
    Preparing,
    Building,
    Hashing,
    Signing,
    Uploading,
    Done,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fetching => "fetching",
            Phase::Preparing => "preparing",
            Phase::Building => "building",
            Phase::Hashing => "hashing",
            Phase::Signing => "signing",
            Phase::Uploading => "uploading",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }

    /// Whether the job is over for this agent.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's heartbeat or phase change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentEvent {
    pub agent: String,
    pub fingerprint: String,
    pub job_id: Option<String>,
    pub source: Option<String>,
    pub phase: Option<Phase>,
    pub at: DateTime<Utc>,
    /// Debian architectures this agent builds (e.g. `amd64`, `all`); empty from older agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// The agent's heartbeat interval in seconds: the coordinator calls an agent stale after
    /// three missed heartbeats. Absent from older agents (the default interval is assumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    /// Why the agent takes no new jobs right now (`scratch disk full`); absent while it takes
    /// them, and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

/// The last known phase of one job on one agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobPhase {
    pub job_id: String,
    pub source: Option<String>,
    pub phase: Phase,
    /// When this phase began.
    pub phase_since: DateTime<Utc>,
    /// When the agent started the job (its first event for it).
    pub started_at: DateTime<Utc>,
}

/// One agent as operators see it (`GET /api/v1/agents`, `lockstep agents --json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentView {
    pub name: String,
    pub fingerprint: String,
    pub architectures: Vec<String>,
    pub first_seen: DateTime<Utc>,
    /// Time of the last event of any kind.
    pub last_heartbeat: DateTime<Utc>,
    pub heartbeat_secs: u64,
    /// True after three (the coordinator's `MISSED_HEARTBEATS`) intervals without an event.
    pub stale: bool,
    /// Why the agent takes no new jobs, as its last event said (`None`: it takes them).
    #[serde(default)]
    pub paused: Option<String>,
    /// The job the agent is working on, or held when it went silent.
    pub current: Option<JobPhase>,
    /// Recent jobs, newest last, with their last phase.
    pub recent: Vec<JobPhase>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_batches_respect_the_byte_and_part_limits_and_keep_order() {
        assert!(batches(&[], 10, 3).is_empty());
        assert_eq!(batches(&[4, 4, 2, 1], 10, 3), vec![0..3, 3..4]);
        assert_eq!(batches(&[4, 4, 3], 10, 8), vec![0..2, 2..3]);
        // A blob larger than the byte limit goes alone, wherever it is.
        assert_eq!(batches(&[1, 30, 1, 1], 10, 8), vec![0..1, 1..2, 2..4]);
        assert_eq!(batches(&[30], 10, 8), vec![0..1]);
        assert_eq!(batches(&[0; 5], 10, 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(
            blob_batches(&[BLOB_BATCH_MAX_BYTES, 1, 1]),
            vec![0..1, 1..3]
        );
    }
}
