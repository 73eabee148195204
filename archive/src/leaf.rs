//! The canonical leaf data that binds a record into the transparency log.
//!
//! Each record's leaf is one compact JSON object (no trailing newline) with the fields in exactly
//! this order, strings escaped by `serde_json`, digests as lowercase hex:
//!
//! ```text
//! {"v":"lockstep-record/v1","kind":"attestation","source":"hello","version":"2.10-3",
//!  "arch":"amd64","job":"<job id>"|null,"signer":"<fingerprint>"|null,
//!  "dedup_key":"attestation:<job>:<fpr>"|null,"created_at":"2025-01-02T03:04:05.123456Z",
//!  "body_sha256":"<hex>","signature_sha256":"<hex>"|null,
//!  "blobs":[{"role":"deb","name":"hello_2.10-3_amd64.deb","sha256":"<hex>","size":1234}]}
//! ```
//!
//! (shown wrapped; the real leaf is one line). The record body and signature are bound by their
//! SHA-256, so a leaf stays small; the full bytes are served with the record. The leaf hash is the
//! RFC 6962 leaf hash `SHA-256(0x00 || leaf)`. A leaf must fit the tlog-tiles entry bundle's u16
//! length prefix, so it is at most [`MAX_LEAF_LEN`] bytes.

use lockstep_proto::digest::Sha256Digest;
use serde::Serialize;

use crate::records::BlobLink;

/// Format tag at the start of every leaf.
pub const LEAF_FORMAT: &str = "lockstep-record/v1";

/// Entry bundles prefix each entry with a big-endian u16 length.
pub const MAX_LEAF_LEN: usize = u16::MAX as usize;

/// The fields a leaf binds, borrowed from a record.
pub(crate) struct LeafFields<'a> {
    pub kind: &'a str,
    pub source: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub job_id: Option<&'a str>,
    pub signer: Option<&'a str>,
    pub dedup_key: Option<&'a str>,
    pub created_at: &'a str,
    pub body_sha256: Sha256Digest,
    pub signature: Option<&'a [u8]>,
    pub blobs: &'a [BlobLink],
}

#[derive(Serialize)]
struct Leaf<'a> {
    v: &'static str,
    kind: &'a str,
    source: &'a str,
    version: &'a str,
    arch: &'a str,
    job: Option<&'a str>,
    signer: Option<&'a str>,
    dedup_key: Option<&'a str>,
    created_at: &'a str,
    body_sha256: Sha256Digest,
    signature_sha256: Option<Sha256Digest>,
    blobs: Vec<LeafBlob<'a>>,
}

#[derive(Serialize)]
struct LeafBlob<'a> {
    role: &'a str,
    name: &'a str,
    sha256: Sha256Digest,
    size: u64,
}

/// Encodes the leaf data for a record.
pub(crate) fn encode(f: &LeafFields<'_>) -> Vec<u8> {
    let leaf = Leaf {
        v: LEAF_FORMAT,
        kind: f.kind,
        source: f.source,
        version: f.version,
        arch: f.arch,
        job: f.job_id,
        signer: f.signer,
        dedup_key: f.dedup_key,
        created_at: f.created_at,
        body_sha256: f.body_sha256,
        signature_sha256: f.signature.map(Sha256Digest::of),
        blobs: f
            .blobs
            .iter()
            .map(|b| LeafBlob {
                role: &b.role,
                name: &b.name,
                sha256: b.sha256,
                size: b.size,
            })
            .collect(),
    };
    serde_json::to_vec(&leaf).expect("a struct of strings, digests and integers always serialises")
}

/// The leaf data of a stored record, for auditors recomputing the log from records.
pub fn leaf_data(record: &crate::records::Record) -> Vec<u8> {
    let created_at = crate::records::format_time(&record.created_at);
    encode(&LeafFields {
        kind: &record.kind,
        source: &record.source,
        version: &record.version,
        arch: &record.arch,
        job_id: record.job_id.as_deref(),
        signer: record.signer.as_deref(),
        dedup_key: record.dedup_key.as_deref(),
        created_at: &created_at,
        body_sha256: record.body_sha256,
        signature: record.signature.as_deref(),
        blobs: &record.blobs,
    })
}
