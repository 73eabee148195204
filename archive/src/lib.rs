//! # lockstep-archive — the write-once archive
//!
//! Content-addressed blobs, immutable records and a C2SP tlog-tiles transparency log over those
//! records, in one directory:
//!
//! ```text
//! <dir>/blobs/ab/cd/<sha256 hex>   blob files, mode 0444, never replaced
//! <dir>/blobs/tmp/                 in-flight uploads (cleared on open)
//! <dir>/archive.sqlite             records, blob links, log leaves + stored hashes, checkpoints,
//!                                  alarms — every table append-only, enforced by triggers
//! <dir>/log-key                    the log's Ed25519 seed (0600)
//! ```
//!
//! Layout:
//! - [`archive`]: the [`Archive`] handle; the only module that combines the others.
//! - [`blobs`]: streaming, fsynced, link-never-replace blob writes, single or in batches.
//! - `db`: SQLite settings (WAL, `synchronous=FULL`), schema and immutability triggers.
//! - `group`: group commit — concurrent appends share one transaction, checkpoint and fsync.
//! - [`records`]: record, blob-link and alarm types and their SQL.
//! - [`leaf`]: the canonical leaf data that binds a record into the log.
//! - [`log`]: stored hashes, tiles, proofs, the log key and signed checkpoints.
//! - [`proof`]: verification for clients and auditors (inclusion, consistency, checkpoints).
//! - [`cosign`]: witness cosignatures (C2SP tlog-cosignature v1): signing and verification.
//! - [`stats`]: cheap size and deduplication figures for metrics and the web page.
//! - [`verify`]: the full audit.
//! - [`error`]: the [`ArchiveError`] type callers branch on.
//!
//! There is deliberately no delete or overwrite operation anywhere in this crate.

#![forbid(unsafe_code)]

pub mod archive;
pub mod blobs;
pub mod cosign;
mod db;
pub mod error;
mod group;
pub mod leaf;
pub mod log;
pub mod proof;
pub mod records;
pub mod stats;
pub mod verify;

pub use archive::{AppendTicket, Archive};
pub use blobs::{BlobPut, PutBlobsError};
pub use error::ArchiveError;
pub use proof::{CheckpointInfo, ProofError};
pub use records::{Alarm, BlobLink, NewRecord, Record, RecordRef};
pub use verify::{verify_dir, VerifyReport};
