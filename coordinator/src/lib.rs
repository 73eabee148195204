//! # lockstep-coordinator
//!
//! Takes operators' rebuild jobs, fetches and archives the source, dispatches jobs over AMQP to
//! every builder identity, receives attestations into the write-once archive, evaluates quorum and
//! records signed decisions; serves all of it over HTTP.
//!
//! Layout:
//! - [`config`]: raw file + environment configuration and its validated form.
//! - [`apt`]: private apt configuration; fetching source packages from the machine's sources.
//! - [`jobs`]: the job table (dispatch outbox).
//! - [`amqp`]: broker topology, confirmed dispatch, decision publishing, reconnection.
//! - [`service`]: the logic — enqueue, attestation checks, quorum, decisions, status.
//! - [`api`]: the HTTP API.
//! - [`server`]: wiring: `build(config)` → `Server::run(shutdown)`.

pub mod amqp;
pub mod api;
pub mod apt;
pub mod config;
pub mod jobs;
pub mod server;
pub mod service;

pub use config::{Config, RawConfig};
pub use server::Server;
