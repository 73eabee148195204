//! # lockstep-agent
//!
//! One agent per build machine (or per identity): consumes jobs from its identity's quorum queue,
//! fetches the source by digest, rebuilds in a hardened container, hashes on the host, signs and
//! uploads, then acks.
//!
//! Layout:
//! - [`config`]: raw file + environment configuration and its validated form.
//! - [`runtime`]: the build image and the hardened build containers (bollard).
//! - [`client`]: the coordinator's HTTP API.
//! - [`worker`]: one job from fetch to signed upload, and its ack/requeue disposition.
//! - [`consumer`]: the AMQP loop: prefetch, manual acks, reconnection, graceful shutdown.
//! - [`scratch`]: whether the scratch disk has room to take jobs (the consumer pauses if not).
//! - [`events`]: heartbeats and phase changes on `lockstep.events`, best effort.
//! - [`agent`]: wiring: `Agent::build(config)` → `run(shutdown)`.

pub mod agent;
pub mod client;
pub mod config;
pub mod consumer;
pub mod events;
pub mod runtime;
pub mod scratch;
pub mod worker;

pub use agent::Agent;
pub use config::{Config, RawConfig};
