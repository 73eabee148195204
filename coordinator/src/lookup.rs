//! Lookups over the archive: which records reference some bytes (`GET /api/v1/lookup/blob/{sha}`),
//! what a builder or developer key signed (`GET /api/v1/lookup/signer/{fpr}`), and which keys the
//! policy trusted when (`GET /api/v1/keys/history`).
//!
//! Key history is provable: every policy load that changes the trusted set (builders,
//! developers, witnesses, thresholds) appends a `policy` record to the archive, so it is in the
//! transparency log like every other record.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use lockstep_archive::{BlobLink, NewRecord, Record};
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::policy::Policy;
use serde::{Deserialize, Serialize};

use crate::service::{Service, ServiceError};

/// Record kind of a trusted-set snapshot.
pub const POLICY_KIND: &str = "policy";

/// Record kinds a key signs.
const SIGNED_KINDS: &[&str] = &["attestation", "failure", crate::uploads::KIND];

/// A record as lookups show it (without its body).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordSummary {
    pub record_id: i64,
    pub leaf_index: u64,
    pub kind: String,
    pub source: String,
    pub version: String,
    pub arch: String,
    pub signer: Option<String>,
    pub job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub blobs: Vec<BlobLink>,
}

impl From<&Record> for RecordSummary {
    fn from(r: &Record) -> Self {
        RecordSummary {
            record_id: r.id,
            leaf_index: r.leaf_index,
            kind: r.kind.clone(),
            source: r.source.clone(),
            version: r.version.clone(),
            arch: r.arch.clone(),
            signer: r.signer.clone(),
            job_id: r.job_id.clone(),
            created_at: r.created_at,
            blobs: r.blobs.clone(),
        }
    }
}

/// The trusted set a policy defines, as recorded in a `policy` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedSet {
    pub default_threshold: usize,
    pub builders: Vec<TrustedKey>,
    pub developers: Vec<String>,
    pub witnesses: Vec<TrustedKey>,
    pub require_witness: bool,
    pub developer_mismatch_holds: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub name: String,
    /// OpenPGP fingerprint (builders) or signed-note verifier key (witnesses).
    pub key: String,
}

impl TrustedSet {
    pub fn of(p: &Policy) -> TrustedSet {
        let mut developers = p.developer_keyring.fingerprints();
        developers.sort();
        TrustedSet {
            default_threshold: p.default_threshold,
            builders: p
                .builders
                .iter()
                .map(|b| TrustedKey {
                    name: b.name.clone(),
                    key: b.fingerprint.clone(),
                })
                .collect(),
            developers,
            witnesses: p
                .witnesses
                .iter()
                .map(|w| TrustedKey {
                    name: w.name.clone(),
                    key: w.key.clone(),
                })
                .collect(),
            require_witness: p.require_witness,
            developer_mismatch_holds: p.developer_mismatch_holds,
        }
    }
}

/// One entry of the key history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyChange {
    pub record_id: i64,
    pub leaf_index: u64,
    /// When the policy took effect (the log's clock).
    pub at: DateTime<Utc>,
    pub trusted: TrustedSet,
}

impl Service {
    /// Appends a `policy` record if `policy`'s trusted set differs from the last recorded one.
    /// An empty trusted set is not recorded before anything was ever trusted.
    pub fn record_policy(&self, policy: &Policy) -> Result<(), ServiceError> {
        let set = TrustedSet::of(policy);
        let last = self.archive.records_by_kind(POLICY_KIND)?.pop();
        let last_set = last
            .as_ref()
            .and_then(|r| serde_json::from_slice::<TrustedSet>(&r.body).ok());
        if last_set.as_ref() == Some(&set) {
            return Ok(());
        }
        if last.is_none()
            && set.builders.is_empty()
            && set.developers.is_empty()
            && set.witnesses.is_empty()
        {
            return Ok(());
        }
        let body = serde_json::to_vec(&set).map_err(anyhow::Error::new)?;
        let signature = self
            .key
            .sign_detached(&body)
            .map_err(|e| anyhow::anyhow!(e))?;
        let r = self.archive.append_record(NewRecord {
            kind: POLICY_KIND.into(),
            source: "-".into(),
            version: "-".into(),
            arch: "-".into(),
            job_id: None,
            signer: Some(self.key.fingerprint()),
            dedup_key: None,
            body,
            signature: Some(signature.into_bytes()),
            blobs: Vec::new(),
        })?;
        self.archive.checkpoint()?;
        tracing::info!(
            record = r.id,
            builders = set.builders.len(),
            "trusted set changed: policy recorded"
        );
        Ok(())
    }

    /// Every recorded trusted set, oldest first.
    pub fn key_history(&self) -> Result<Vec<PolicyChange>, ServiceError> {
        self.archive
            .records_by_kind(POLICY_KIND)?
            .iter()
            .map(|r| {
                Ok(PolicyChange {
                    record_id: r.id,
                    leaf_index: r.leaf_index,
                    at: r.created_at,
                    trusted: serde_json::from_slice(&r.body).map_err(|e| {
                        ServiceError::Internal(anyhow::anyhow!(
                            "policy record {} does not decode: {e}",
                            r.id
                        ))
                    })?,
                })
            })
            .collect()
    }

    /// Records that link the blob `d`.
    pub fn lookup_blob(&self, d: &Sha256Digest) -> Result<serde_json::Value, ServiceError> {
        let records: Vec<RecordSummary> = self
            .archive
            .records_with_blob(d)?
            .iter()
            .map(RecordSummary::from)
            .collect();
        Ok(serde_json::json!({
            "sha256": d,
            "stored": self.archive.has_blob(d),
            "size": self.archive.blob_size(d),
            "records": records,
        }))
    }

    /// Records signed by the key with this primary fingerprint (attestations, failures,
    /// developer uploads).
    pub fn lookup_signer(&self, fpr: &str) -> Result<Vec<RecordSummary>, ServiceError> {
        let mut out = Vec::new();
        for k in SIGNED_KINDS {
            out.extend(
                self.archive
                    .records_by_kind(k)?
                    .iter()
                    .filter(|r| {
                        r.signer
                            .as_deref()
                            .is_some_and(|s| s.eq_ignore_ascii_case(fpr))
                    })
                    .map(RecordSummary::from),
            );
        }
        out.sort_by_key(|r| r.record_id);
        Ok(out)
    }
}

/// Routes of this module, merged into the API router.
pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/api/v1/lookup/blob/{sha256}", get(by_blob))
        .route("/api/v1/lookup/signer/{fingerprint}", get(by_signer))
        .route("/api/v1/keys/history", get(history))
        .route("/api/v1/records/{id}", get(record))
}

async fn record(
    AxState(svc): AxState<Arc<Service>>,
    Path(id): Path<i64>,
) -> Result<Response, crate::api::ApiError> {
    let r = crate::api::blocking(move || {
        svc.archive
            .record(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("no record {id}")))
    })
    .await?;
    Ok(Json(RecordSummary::from(&r)).into_response())
}

async fn by_blob(
    AxState(svc): AxState<Arc<Service>>,
    Path(sha): Path<String>,
) -> Result<Response, crate::api::ApiError> {
    let d: Sha256Digest = sha
        .parse()
        .map_err(|e| ServiceError::BadRequest(format!("{e}")))?;
    let v = crate::api::blocking(move || svc.lookup_blob(&d)).await?;
    Ok(Json(v).into_response())
}

async fn by_signer(
    AxState(svc): AxState<Arc<Service>>,
    Path(fpr): Path<String>,
) -> Result<Response, crate::api::ApiError> {
    let v = crate::api::blocking(move || svc.lookup_signer(&fpr)).await?;
    Ok(Json(v).into_response())
}

async fn history(AxState(svc): AxState<Arc<Service>>) -> Result<Response, crate::api::ApiError> {
    let v = crate::api::blocking(move || svc.key_history()).await?;
    Ok(Json(v).into_response())
}
