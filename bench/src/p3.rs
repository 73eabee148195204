//! P3: attestations verified + archived + logged + quorum-evaluated per second, through
//! `Service::attest` (what `POST /api/v1/attestations` runs), on statements signed beforehand.
//! Two trusted builders, threshold 2: every second attestation of a package ships it, so half of
//! the calls also sign and log a decision and republish the apt repository.

use std::path::Path;

use anyhow::Context;

use crate::fixture::{self, Builder, Debs};
use crate::row::{Better, Row};
use crate::util::{progress, scratch, timed};

const BASELINE: &str = "bare OpenPGP verification of the same statements' detached signatures \
     (Keyring::verify_detached, one thread), per second";

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let packages = if quick { 100 } else { 1000 };
    let dir = scratch(root, "p3-")?;
    let builders = vec![Builder::new("b1")?, Builder::new("b2")?];
    let policy = fixture::write_policy(dir.path(), &builders, 2)?;
    let svc = fixture::service(dir.path(), &policy)?;
    let debs = Debs::new(dir.path())?;
    progress!("P3: preparing {packages} packages x 2 signed attestations");
    let prepared = fixture::prepare_many(&svc, &builders, &debs, packages, "bench-")?;
    let uploads: Vec<_> = prepared.iter().flat_map(|(_, u)| u.iter()).collect();
    let n = uploads.len() as f64;

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

    let (res, ours) = timed(|| -> anyhow::Result<usize> {
        let mut shipped = 0;
        for up in &uploads {
            let a = svc.attest(up).map_err(|e| anyhow::anyhow!("attest: {e}"))?;
            anyhow::ensure!(a.created, "attestation was not new");
            shipped += usize::from(a.state == lockstep_proto::v1::State::Ship);
        }
        Ok(shipped)
    });
    let shipped = res?;
    anyhow::ensure!(
        shipped == packages,
        "expected {packages} ships, got {shipped}"
    );
    let ours_rate = n / ours.as_secs_f64();
    let base_rate = n / base.as_secs_f64();
    progress!("P3: {ours_rate:.0}/s through attest, {base_rate:.0}/s bare verification");
    Row::abs_goal(
        "P3",
        format!("attestations/s ({} attestations, {packages} ships)", n),
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
