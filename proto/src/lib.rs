//! # lockstep-proto — the contract every Lockstep part shares
//!
//! Layout:
//! - [`digest`]: SHA-256 newtype and constant-memory hashing.
//! - [`v1`]: versioned wire types: jobs, statements, attestations, decisions, status rows.
//! - [`signing`]: OpenPGP keys, detached and clearsigned signatures (sequoia), verification
//!   against a keyring with sequoia's StandardPolicy.
//! - [`dsc`]: reading `.dsc` files (deb822) and their checksums.
//! - [`policy`]: the quorum policy file (trusted builders, thresholds).
//! - [`quorum`]: pure evaluation of attestations into pending / ship / hold / failed.
//! - [`broker`]: broker URLs (one node or a cluster's nodes): validation, redaction, failover order.
//!
//! Heavy dependencies (database, Docker, AMQP) stay out of this crate so the CLI does not build them.

pub mod broker;
mod cleartext;
pub mod digest;
pub mod dsc;
pub mod policy;
pub mod quorum;
pub mod signing;
pub mod v1;

pub use digest::Sha256Digest;
