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
//! - [`official`]: the distribution's own binaries, chain-checked, as evidence.
//! - [`service`]: the logic — enqueue, attestation checks, quorum, decisions, status.
//! - [`suite`]: whole-suite enqueues and the reproducibility summary.
//! - [`api`]: the HTTP API.
//! - [`blob_batch`]: `POST /api/v1/blobs`, several blobs in one request, stored as one batch.
//! - [`server`]: wiring: `build(config)` → `Server::run(shutdown)`.
//! - [`debfile`]: bounded reading of `.deb` members, files and control fields.
//! - [`diff`]: mismatch evidence between builders (per-file `.deb` diff, archived diffoscope).
//! - [`aptrepo`]: the signed apt repository of exactly what shipped.
//! - [`audit`]: the server-side archive audit (`POST /api/v1/audit`).
//! - [`uploads`]: developer uploads (signed `.changes`) and the developer-mismatch flag.
//! - [`witness`]: witness cosignatures of checkpoints and the `require_witness` hold.
//! - [`lookup`]: lookups by blob digest and signer; provable key history (`policy` records).
//! - [`events`]: agent heartbeats and phases from `lockstep.events`; `/api/v1/agents`.
//! - [`metrics`]: `/metrics` in the Prometheus text format; operational counters.
//! - [`web`]: the server-rendered web page (`/`, `/packages/…`).

pub mod amqp;
pub mod api;
pub mod apt;
pub mod aptrepo;
pub mod audit;
pub mod blob_batch;
pub mod config;
pub mod debfile;
pub mod diff;
pub mod events;
pub mod failpoint;
pub mod jobs;
pub mod lookup;
pub mod metrics;
pub mod official;
pub mod server;
pub mod service;
pub mod srcdate;
pub mod suite;
pub mod uploads;
pub mod web;
pub mod witness;

pub use config::{Config, RawConfig};
pub use server::Server;
