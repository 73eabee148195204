//! P3: attestations verified + archived + logged + quorum-evaluated per second, through
//! `Service::attest` (what `POST /api/v1/attestations` runs), on statements signed beforehand.
//! Two trusted builders, threshold 2: every package ships once both of its attestations are in,
//! so half of the calls also sign and log a decision.
//!
//! The calls come from [`CLIENTS`] threads at once, as the HTTP server runs concurrent uploads
//! (one blocking task each): a durable answer costs an fsync, so throughput on one disk comes
//! from many uploads sharing one (the archive's group commit), not from one client's loop.
//! The figure also reports the rate of one client alone, calling one after another.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use lockstep_proto::v1::AttestationUpload;

use crate::fixture::{self, Builder, Debs};
use crate::row::{Better, Row};
use crate::util::{cpu_seconds, progress, scratch, timed};

/// Concurrent callers of `attest` (agents uploading at the same time); `LOCKSTEP_BENCH_P3_CLIENTS`
/// overrides it for experiments.
pub const CLIENTS: usize = 32;

fn clients() -> usize {
    std::env::var("LOCKSTEP_BENCH_P3_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(CLIENTS)
}

const BASELINE: &str = "bare OpenPGP verification of the same statements' detached signatures \
     (Keyring::verify_detached, one thread), per second";

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let packages = if quick { 300 } else { 2000 };
    let dir = scratch(root, "p3-")?;
    let builders = vec![Builder::new("b1")?, Builder::new("b2")?];
    let policy = fixture::write_policy(dir.path(), &builders, 2)?;
    let svc = fixture::service(dir.path(), &policy)?;
    let debs = Debs::new(dir.path())?;
    progress!("P3: preparing {packages} packages x 2 signed attestations");
    let prepared = fixture::prepare_many(&svc, &builders, &debs, packages, "bench-")?;
    let uploads: Vec<_> = prepared.iter().flat_map(|(_, u)| u.iter()).collect();

    // Baseline first: it also warms the statements into cache for neither side's benefit.
    let policy = svc.policy();
    let keyring = &policy.builder_keyring;
    let (res, base) = timed(|| -> anyhow::Result<()> {
        for up in &uploads {
            keyring
                .verify_detached(up.statement.as_bytes(), up.signature.as_bytes())
                .context("bare verification")?;
        }
        Ok(())
    });
    res?;
    // For the profile: the other signature every attestation carries (the clearsigned .buildinfo).
    let buildinfos = uploads
        .iter()
        .map(|up| {
            let path = svc
                .archive
                .blob_path(&up.signed_buildinfo)
                .context("a stored .buildinfo")?;
            Ok(std::fs::read(path)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (res, clearsigned) = timed(|| -> anyhow::Result<()> {
        for bi in &buildinfos {
            keyring
                .verify_clearsigned(bi)
                .context("bare verification")?;
        }
        Ok(())
    });
    res?;
    progress!(
        "P3: one thread verifies {:.0} statements/s and {:.0} clearsigned .buildinfo/s",
        uploads.len() as f64 / base.as_secs_f64(),
        uploads.len() as f64 / clearsigned.as_secs_f64()
    );

    // One client alone first (a tenth of the packages), then CLIENTS at once on the rest.
    progress!("P3: attesting");
    let alone = (packages / 10).max(1) * 2;
    let (res, single) = timed(|| attest_all(&svc, &uploads[..alone], 1));
    res?;
    let cpu0 = cpu_seconds()?;
    let clients = clients();
    let (res, ours) = timed(|| attest_all(&svc, &uploads[alone..], clients));
    res?;
    let cpu1 = cpu_seconds()?;
    let decisions = svc
        .archive
        .records_by_kind("decision")
        .context("reading decisions")?;
    let shipped = decisions
        .iter()
        .filter_map(|r| serde_json::from_slice::<lockstep_proto::v1::Decision>(&r.body).ok())
        .filter(|d| d.state == lockstep_proto::v1::State::Ship)
        .count();
    anyhow::ensure!(
        shipped == packages && decisions.len() == packages,
        "expected {packages} ship decisions, got {shipped} of {}",
        decisions.len()
    );
    let single_rate = alone as f64 / single.as_secs_f64();
    progress!("P3: one client alone {single_rate:.0}/s");
    let n = (uploads.len() - alone) as f64;
    progress!(
        "P3: {clients} clients: {:.0} us user + {:.0} us system CPU per attestation, {:.2} cores busy",
        (cpu1.0 - cpu0.0) / n * 1e6,
        (cpu1.1 - cpu0.1) / n * 1e6,
        (cpu1.0 - cpu0.0 + cpu1.1 - cpu0.1) / ours.as_secs_f64()
    );
    let ours_rate = n / ours.as_secs_f64();
    let base_rate = uploads.len() as f64 / base.as_secs_f64();
    progress!("P3: {ours_rate:.0}/s through attest, {base_rate:.0}/s bare verification");
    Row::abs_goal(
        "P3",
        format!(
            "attestations/s, {clients} clients ({n} attestations; 1 client alone: {single_rate:.0}/s)"
        ),
        "/s",
        ours_rate,
        base_rate,
        3000.0,
        Better::Higher,
        BASELINE,
    )
    .emit();
    Ok(())
}

/// Calls `attest` on every upload from `clients` threads, each taking the next one.
fn attest_all(
    svc: &lockstep_coordinator::service::Service,
    uploads: &[&AttestationUpload],
    clients: usize,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    while let Some(up) = uploads.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let a = svc.attest(up).map_err(|e| anyhow::anyhow!("attest: {e}"))?;
                        anyhow::ensure!(a.created, "attestation was not new");
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("a client panicked"))?)
    })
}
