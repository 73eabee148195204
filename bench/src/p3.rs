//! P3: attestations verified + archived + logged + quorum-evaluated per second, through
//! `Service::attest` (what `POST /api/v1/attestations` runs), on statements signed beforehand.
//! Two trusted builders, threshold 2: every package ships once both of its attestations are in,
//! so half of the calls also sign and log a decision.
//!
//! The calls come from [`CLIENTS`] threads at once, as the HTTP server runs concurrent uploads
//! (one blocking task each): a durable answer costs an fsync, so throughput on one disk comes
//! from many uploads sharing one (the archive's group commit), not from one client's loop.
//! The figure is the median of [`ROUNDS`] rounds, each on packages of its own (the archive grows
//! from round to round); its label also gives the range and the rate of one client alone,
//! calling one after another. The baseline runs on packages of its own too, never attested (see
//! `run`).

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

const BASELINE: &str = "bare OpenPGP verification of the detached signatures of statements \
     prepared alike but never attested (Keyring::verify_detached, one thread), per second";

/// Rounds of the 32-client measurement, each on packages of its own; the figure is their median
/// (one round lasts about a second, so a single one is at the mercy of whatever else the machine
/// does in that second).
const ROUNDS: usize = 3;

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let packages = if quick { 300 } else { 2000 };
    let dir = scratch(root, "p3-")?;
    let builders = vec![Builder::new("b1")?, Builder::new("b2")?];
    let policy = fixture::write_policy(dir.path(), &builders, 2)?;
    let svc = fixture::service(dir.path(), &policy)?;
    let debs = Debs::new(dir.path())?;
    progress!("P3: preparing {ROUNDS} x {packages} packages x 2 signed attestations");
    let prepared = fixture::prepare_many(&svc, &builders, &debs, packages * ROUNDS, "bench-")?;
    let uploads: Vec<_> = prepared.iter().flat_map(|(_, u)| u.iter()).collect();
    let per_round = packages * 2;
    let first = &uploads[..per_round];
    // The baseline verifies statements of its own. sequoia remembers every signature it has
    // verified (a process-wide cache), so a baseline run over the statements the rounds then
    // attest would spare those attestations their signature checks: the first round measured
    // that way ran 20-30 % faster than the others.
    let bare_set = fixture::prepare_many(&svc, &builders, &debs, packages / 2, "bench-bare-")?;
    let bare: Vec<_> = bare_set.iter().flat_map(|(_, u)| u.iter()).collect();

    let policy = svc.policy();
    let keyring = &policy.builder_keyring;
    let (res, base) = timed(|| -> anyhow::Result<()> {
        for up in &bare {
            keyring
                .verify_detached(up.statement.as_bytes(), up.signature.as_bytes())
                .context("bare verification")?;
        }
        Ok(())
    });
    res?;
    // For the profile: the other signature every attestation carries (the clearsigned .buildinfo).
    let buildinfos = bare
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
        bare.len() as f64 / base.as_secs_f64(),
        bare.len() as f64 / clearsigned.as_secs_f64()
    );

    // One client alone first (a tenth of the first round's packages), then CLIENTS at once on the
    // rest of that round and on each further round.
    progress!("P3: attesting");
    let alone = (packages / 10).max(1) * 2;
    let (res, single) = timed(|| attest_all(&svc, &first[..alone], 1));
    res?;
    let single_rate = alone as f64 / single.as_secs_f64();
    progress!("P3: one client alone {single_rate:.0}/s");
    let clients = clients();
    let mut rates = Vec::with_capacity(ROUNDS);
    let (mut n, mut wall, mut user, mut system) = (0.0, 0.0, 0.0, 0.0);
    for (round, ups) in uploads.chunks(per_round).enumerate() {
        let ups = if round == 0 { &ups[alone..] } else { ups };
        let cpu0 = cpu_seconds()?;
        let commits0 = svc.archive.commit_stats();
        let (res, took) = timed(|| attest_all(&svc, ups, clients));
        res?;
        let cpu1 = cpu_seconds()?;
        let commits = svc.archive.commit_stats().since(&commits0);
        let rate = ups.len() as f64 / took.as_secs_f64();
        progress!(
            "P3: round {}: {} attestations, {rate:.0}/s, {:.2} cores busy; {} commits of {:.1} \
             appends, {:.2} ms each, committing {:.0} % of the time",
            round + 1,
            ups.len(),
            (cpu1.0 - cpu0.0 + cpu1.1 - cpu0.1) / took.as_secs_f64(),
            commits.commits,
            commits.appends_per_commit(),
            commits.busy.as_secs_f64() * 1e3 / commits.commits.max(1) as f64,
            commits.busy.as_secs_f64() / took.as_secs_f64() * 100.0
        );
        rates.push(rate);
        n += ups.len() as f64;
        wall += took.as_secs_f64();
        user += cpu1.0 - cpu0.0;
        system += cpu1.1 - cpu0.1;
    }
    let decisions = svc
        .archive
        .records_by_kind("decision")
        .context("reading decisions")?;
    let shipped = decisions
        .iter()
        .filter_map(|r| serde_json::from_slice::<lockstep_proto::v1::Decision>(&r.body).ok())
        .filter(|d| d.state == lockstep_proto::v1::State::Ship)
        .count();
    let total = packages * ROUNDS;
    anyhow::ensure!(
        shipped == total && decisions.len() == total,
        "expected {total} ship decisions, got {shipped} of {}",
        decisions.len()
    );
    progress!(
        "P3: {clients} clients: {:.0} us user + {:.0} us system CPU per attestation, {:.2} cores busy",
        user / n * 1e6,
        system / n * 1e6,
        (user + system) / wall
    );
    rates.sort_by(f64::total_cmp);
    let ours_rate = rates[rates.len() / 2];
    let base_rate = bare.len() as f64 / base.as_secs_f64();
    progress!("P3: {ours_rate:.0}/s through attest (median of {ROUNDS} rounds), {base_rate:.0}/s bare verification");
    Row::abs_goal(
        "P3",
        format!(
            "attestations/s, {clients} clients, median of {ROUNDS} rounds of up to {per_round} \
             ({}-{}/s; 1 client alone: {single_rate:.0}/s)",
            rates[0].round(),
            rates[rates.len() - 1].round()
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
