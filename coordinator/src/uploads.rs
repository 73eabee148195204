//! Developer uploads: a developer-clearsigned `.changes` (as `debsign` makes it) with the `.deb`s
//! and `.buildinfo` it lists, sent as blobs first (`POST /api/v1/blobs` as one batch, as
//! `lockstep upload` does, or `PUT /api/v1/blobs/{sha256}` one by one), then announced
//! with `POST /api/v1/uploads {"changes_sha256": …}`.
//!
//! The coordinator verifies the signature against the policy's developer keyring, checks every
//! file the signed `Checksums-Sha256` lists against the stored blobs (digest by content address,
//! size by the stored file), and archives one `developer-upload` record per binary architecture
//! the upload carries, linking the `.changes`, the `.buildinfo`s and that architecture's
//! packages. The record is this uploader's copy even when the bytes deduplicate with a builder's.
//!
//! Developer binaries are evidence, never shipped. When the trusted builders agree on bytes that
//! differ from a developer's file of the same name, [`apply`] flags it (`developer_mismatch` in
//! the status and decision); `developer_mismatch = "hold"` in the policy turns that into HOLD.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use deb822_fast::Deb822;
use lockstep_archive::{BlobLink, NewRecord, Record};
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::dsc;
use lockstep_proto::policy::Policy;
use lockstep_proto::quorum::Outcome;
use lockstep_proto::signing::SigningError;
use lockstep_proto::v1::State;
use serde::{Deserialize, Serialize};

use crate::service::{Service, ServiceError};

/// Record kind of a developer upload.
pub const KIND: &str = "developer-upload";

/// Largest `.changes` read into memory.
const MAX_CHANGES: u64 = 4 * 1024 * 1024;

/// One file a `.changes` lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesFile {
    pub name: String,
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// The fields of a `.changes` this module uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    pub source: String,
    pub version: String,
    pub files: Vec<ChangesFile>,
}

/// Parses the (already verified, signature-stripped) text of a `.changes`.
pub fn parse_changes(text: &[u8]) -> Result<Changes, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the .changes is not UTF-8".to_string())?;
    let doc: Deb822 = dsc::strip_cleartext(text)
        .parse()
        .map_err(|e| format!("the .changes is not deb822: {e}"))?;
    let para = doc.iter().next().ok_or("the .changes is empty")?;
    let field = |name: &str| -> Result<String, String> {
        para.get(name)
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("the .changes has no {name} field"))
    };
    // "Source: hello (2.10-3)" for binNMUs: the name is the first word.
    let source = field("Source")?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let version = field("Version")?;
    dsc::check_name_version(&source, &version).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for line in field("Checksums-Sha256")?.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [sum, size, name] = parts[..] else {
            return Err(format!("bad Checksums-Sha256 line {line:?}"));
        };
        dsc::check_file_name(name).map_err(|e| e.to_string())?;
        files.push(ChangesFile {
            name: name.to_string(),
            sha256: sum
                .parse()
                .map_err(|e| format!("bad checksum in {line:?}: {e}"))?,
            size: size.parse().map_err(|_| format!("bad size in {line:?}"))?,
        });
    }
    if files.is_empty() {
        return Err("Checksums-Sha256 lists no files".into());
    }
    Ok(Changes {
        source,
        version,
        files,
    })
}

/// The architecture of a binary package file name `name_version_arch.deb`, if it is one.
fn deb_arch(name: &str) -> Option<&str> {
    let stem = [".deb", ".udeb", ".ddeb"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))?;
    stem.rsplit_once('_').map(|(_, arch)| arch)
}

fn role_of(name: &str) -> &'static str {
    if deb_arch(name).is_some() {
        "deb"
    } else if name.ends_with(".buildinfo") {
        "buildinfo"
    } else {
        "file"
    }
}

/// What `POST /api/v1/uploads` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct UploadAccepted {
    pub source: String,
    pub version: String,
    /// Primary fingerprint of the developer key that signed the `.changes`.
    pub signer: String,
    pub records: Vec<UploadRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UploadRecord {
    pub arch: String,
    pub record_id: i64,
    pub leaf_index: u64,
    /// False when this exact upload was already archived.
    pub created: bool,
    pub state: State,
}

impl Service {
    /// Verifies and archives a developer upload whose `.changes` and files are stored blobs.
    pub fn developer_upload(
        &self,
        changes_sha256: Sha256Digest,
    ) -> Result<UploadAccepted, ServiceError> {
        let path = self.archive.blob_path(&changes_sha256).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no blob {changes_sha256}: upload the .changes (and every file it lists) with \
                 POST /api/v1/blobs (or PUT /api/v1/blobs/<sha256>) first"
            ))
        })?;
        let size = self.archive.blob_size(&changes_sha256).unwrap_or(0);
        if size > MAX_CHANGES {
            return Err(ServiceError::TooLarge(format!(
                "the .changes is {size} bytes; the limit is {MAX_CHANGES}"
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| {
            ServiceError::Internal(anyhow::anyhow!("reading {changes_sha256}: {e}"))
        })?;
        let policy = self.policy();
        let (verified, text) = policy
            .developer_keyring
            .verify_clearsigned(&bytes)
            .map_err(|e| {
                tracing::warn!(changes = %changes_sha256, error = %e, "refused a developer upload");
                match e {
                    SigningError::UnknownKey(k) => ServiceError::Forbidden(format!(
                        "the .changes is signed by a key that is not a known developer ({k}); \
                         list the developer's certificate under [[developers]] in the policy"
                    )),
                    other => ServiceError::Forbidden(format!(
                        "the .changes signature is refused: {other}; re-sign it (debsign) with a \
                         developer key listed in the policy"
                    )),
                }
            })?;
        let changes = parse_changes(&text).map_err(ServiceError::BadRequest)?;
        let mut problems = Vec::new();
        for f in &changes.files {
            match self.archive.blob_size(&f.sha256) {
                Some(s) if s == f.size => {}
                Some(s) => problems.push(format!(
                    "{}: the .changes says {} bytes but the stored blob {} has {s}",
                    f.name, f.size, f.sha256
                )),
                None => problems.push(format!(
                    "{} ({}) is not uploaded, or its bytes differ from the .changes checksum",
                    f.name, f.sha256
                )),
            }
        }
        if !problems.is_empty() {
            return Err(ServiceError::Unprocessable(format!(
                "the upload does not match its .changes: {}; upload the files the .changes \
                 lists, unmodified",
                problems.join("; ")
            )));
        }

        let link = |f: &ChangesFile| BlobLink {
            role: role_of(&f.name).into(),
            name: f.name.clone(),
            sha256: f.sha256,
            size: f.size,
        };
        let changes_link = BlobLink {
            role: "changes".into(),
            name: format!(
                "{}_{}.changes",
                changes.source,
                changes
                    .version
                    .split_once(':')
                    .map_or(changes.version.as_str(), |(_, v)| v)
            ),
            sha256: changes_sha256,
            size,
        };
        let shared: Vec<BlobLink> = changes
            .files
            .iter()
            .filter(|f| deb_arch(&f.name).is_none())
            .map(link)
            .collect();
        let mut by_arch: BTreeMap<String, Vec<BlobLink>> = BTreeMap::new();
        for f in &changes.files {
            if let Some(arch) = deb_arch(&f.name) {
                by_arch.entry(arch.to_string()).or_default().push(link(f));
            }
        }
        if by_arch.is_empty() {
            by_arch.insert("source".into(), Vec::new());
        }
        let recs: Vec<(String, NewRecord)> = by_arch
            .into_iter()
            .map(|(arch, debs)| {
                let mut blobs = vec![changes_link.clone()];
                blobs.extend(shared.iter().cloned());
                blobs.extend(debs);
                let rec = NewRecord {
                    kind: KIND.into(),
                    source: changes.source.clone(),
                    version: changes.version.clone(),
                    arch: arch.clone(),
                    job_id: None,
                    signer: Some(verified.fingerprint.clone()),
                    dedup_key: Some(format!(
                        "{KIND}:{changes_sha256}:{}:{arch}",
                        verified.fingerprint
                    )),
                    // The clearsigned .changes as uploaded: it carries its own signature.
                    body: bytes.clone(),
                    signature: None,
                    blobs,
                };
                (arch, rec)
            })
            .collect();
        let refs = self
            .archive
            .append_records(&recs.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>())?;
        self.archive.checkpoint()?;
        let mut out = UploadAccepted {
            source: changes.source.clone(),
            version: changes.version.clone(),
            signer: verified.fingerprint.clone(),
            records: Vec::new(),
        };
        for ((arch, _), r) in recs.into_iter().zip(refs) {
            let outcome = self.evaluate(&changes.source, &changes.version, &arch)?;
            tracing::info!(source = %changes.source, version = %changes.version, %arch, developer = %verified.fingerprint, record = r.id, created = r.created, "developer upload archived");
            out.records.push(UploadRecord {
                arch,
                record_id: r.id,
                leaf_index: r.leaf_index,
                created: r.created,
                state: outcome.state,
            });
        }
        Ok(out)
    }
}

/// Compares developer uploads among `records` with the builders' agreed artifacts of a ship
/// `outcome`. Returns the outcome (held if the policy says so) and one line per differing file.
pub fn apply(policy: &Policy, records: &[Record], mut outcome: Outcome) -> (Outcome, Vec<String>) {
    if outcome.state != State::Ship {
        return (outcome, Vec::new());
    }
    let mut mismatches = Vec::new();
    for r in records.iter().filter(|r| r.kind == KIND) {
        for b in r.blobs.iter().filter(|b| b.role == "deb") {
            if let Some(a) = outcome.artifacts.iter().find(|a| a.name == b.name) {
                if a.sha256 != b.sha256 {
                    mismatches.push(format!(
                        "{} uploaded by developer {} (record {}) is {} but the builders agreed \
                         on {}",
                        b.name,
                        r.signer.as_deref().unwrap_or("?"),
                        r.id,
                        b.sha256,
                        a.sha256
                    ));
                }
            }
        }
    }
    if !mismatches.is_empty() {
        if policy.developer_mismatch_holds {
            outcome.state = State::Hold;
            outcome.reason = format!(
                "developer upload differs from the builders' agreed bytes ({} file(s)) and the \
                 policy says developer_mismatch = \"hold\"; compare the files before shipping",
                mismatches.len()
            );
            outcome.artifacts.clear();
        } else {
            outcome.reason = format!(
                "{}; flagged: a developer upload differs from the agreed bytes ({} file(s))",
                outcome.reason,
                mismatches.len()
            );
        }
    }
    (outcome, mismatches)
}

#[derive(Deserialize)]
struct UploadRequest {
    changes_sha256: Sha256Digest,
}

/// Routes of this module, merged into the API router.
pub fn routes() -> Router<Arc<Service>> {
    Router::new().route("/api/v1/uploads", post(post_upload))
}

async fn post_upload(
    AxState(svc): AxState<Arc<Service>>,
    Json(req): Json<UploadRequest>,
) -> Result<Response, crate::api::ApiError> {
    let acc = crate::api::blocking(move || svc.developer_upload(req.changes_sha256)).await?;
    let status = if acc.records.iter().any(|r| r.created) {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(acc)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_changes_file_and_its_checksums() {
        let text = "Format: 1.8\nSource: hello (2.10-3)\nVersion: 2.10-3+b1\nArchitecture: amd64\n\
Checksums-Sha256:\n 0000000000000000000000000000000000000000000000000000000000000000 10 hello_2.10-3+b1_amd64.deb\n \
1111111111111111111111111111111111111111111111111111111111111111 20 hello_2.10-3+b1_amd64.buildinfo\n";
        let c = parse_changes(text.as_bytes()).expect("parses");
        assert_eq!(c.source, "hello");
        assert_eq!(c.version, "2.10-3+b1");
        assert_eq!(c.files.len(), 2);
        assert_eq!(deb_arch(&c.files[0].name), Some("amd64"));
        assert_eq!(role_of(&c.files[1].name), "buildinfo");
        assert!(parse_changes(b"Source: x\nVersion: 1\n").is_err());
        let bad = text.replace(" 10 ", " ten ");
        assert!(parse_changes(bad.as_bytes()).is_err());
        let traversal = text.replace("hello_2.10-3+b1_amd64.deb", "../evil.deb");
        assert!(parse_changes(traversal.as_bytes()).is_err());
    }
}
