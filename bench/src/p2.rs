//! P2: a full rebuild of `hello` through the real pipeline, beside a bare `docker run` of the same
//! steps in the same image from the same source files.
//!
//! Lockstep: the integration suite's [`Cluster`] (an in-process coordinator on its own RabbitMQ
//! vhost, one in-process agent building in Docker with the pinned image `lockstep-build:bookworm`,
//! threshold 1). The clock starts at `POST /api/v1/jobs {"packages":["hello"]}` — the coordinator
//! fetches the source from the machine's apt sources, archives it and dispatches the job; the agent
//! downloads it, installs the build dependencies in one container, commits it, builds in a second
//! hardened container, hashes, signs and uploads — and stops when the attestation record is stored.
//!
//! Baseline: one `docker run --rm` of the same image, as root: `apt-get update`, `apt-get
//! build-dep` of the same `.dsc` (the files the coordinator's apt configuration downloads), then —
//! as the build user through `setpriv` (the image's `builder` has no usable password, so no `su`) —
//! `dpkg-source -x` and `dpkg-buildpackage` with the agent's flag, environment and umask
//! (`agent/src/runtime/spec.rs`). Its outputs land on the host and their SHA-256s are compared
//! with the attested ones.
//!
//! The private apt indices are refreshed once before any clock starts (steady state: the
//! coordinator refreshes them every `apt_refresh_secs`, not per job). So is the agent's apt
//! lists cache (default `apt_lists_max_age_secs` 900: one `apt-get update` container per agent
//! every 15 minutes, mounted read-only into every deps container meanwhile, so a busy agent's
//! deps step skips `apt-get update`); the bare baseline runs its own `apt-get update`, as a bare
//! `docker run` has no cache. Rounds run in ABBA order
//! (baseline, Lockstep, Lockstep, baseline) so a mirror or page cache warming up favours neither.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::v1::{EnqueueResponse, Statement};
use lockstep_tests::{Cluster, ClusterOptions};

use crate::row::{Better, Row};
use crate::util::{progress, scratch};

const ID: &str = "P2";
const FIGURE: &str = "full rebuild of hello, enqueue -> attestation stored (1 agent)";
const IMAGE: &str = "lockstep-build:bookworm";
const PACKAGE: &str = "hello";
const GOAL: f64 = 1.05;
/// Longest a single build may take before the benchmark gives up.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

const BASELINE: &str =
    "one bare `docker run --rm` of lockstep-build:bookworm from the same source \
     files: apt-get update + apt-get build-dep as root, then dpkg-source -x + dpkg-buildpackage \
     (the agent's flag, environment and umask) as the build user via setpriv; Lockstep's deps \
     step instead mounts the agent's apt lists cache read-only (default max age 900 s, refreshed \
     before the clock, as on a busy agent) and unpacks with dpkg --force-unsafe-io (its container \
     is thrown away)";

/// The baseline's script. `$1` the `.dsc` (mounted read-only), `$2` the unpack directory, `$3`
/// `-B`/`-A`, `$4` apt-get build-dep's matching selection. The commands an operator would run by
/// hand, in one container: the agent's deps and build scripts (`agent/src/runtime/spec.rs`) less
/// their optimisations (the apt lists cache and dpkg's `--force-unsafe-io`).
const BARE_SCRIPT: &str = r#"set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update --error-on=any
apt-get build-dep --yes --no-install-recommends "$4" "$1"
install -d -o 1000 -g 1000 /build/reproducible-path
exec setpriv --reuid=1000 --regid=1000 --clear-groups --inh-caps=-all \
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME=/nonexistent TZ=UTC HOSTNAME=lockstep-build \
  /bin/sh -c 'set -eu; umask 022; cd /build/reproducible-path; dpkg-source -x "$1" "$2"; cd "$2"; exec dpkg-buildpackage "$3" -us -uc -rfakeroot' \
  lockstep-build "$1" "$2" "$3"
"#;

pub async fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    if quick {
        progress!("P2: skipped (--quick); run scripts/bench without --quick or scripts/bench p2");
        Row::skipped(
            ID,
            FIGURE,
            "s",
            GOAL,
            "not measured: --quick skips P2 (two hello builds each side, several minutes)",
            BASELINE,
        )
        .emit();
        return Ok(());
    }
    let inspect = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running docker (is the Docker engine up?)")?;
    anyhow::ensure!(
        inspect.success(),
        "the build image {IMAGE} is missing: run scripts/setup (or containers/build-image)"
    );

    let cluster = Cluster::start(
        "bench-p2",
        ClusterOptions {
            agents: 1,
            threshold: 1,
            ..Default::default()
        },
    )
    .await
    .context("starting a coordinator and one agent (scripts/rabbitmq start, Docker)")?;
    let result = measure(root, &cluster).await;
    cluster.stop().await;
    let (ours, base) = result?;
    let ratio = ours / base;
    progress!("P2: Lockstep {ours:.1} s, bare docker run {base:.1} s, {ratio:.3}x");
    Row::ratio_goal(ID, FIGURE, "s", ours, base, GOAL, Better::Lower, BASELINE).emit();
    Ok(())
}

/// Mean seconds of (Lockstep, baseline) over two rounds each, ABBA.
async fn measure(root: &Path, cluster: &Cluster) -> anyhow::Result<(f64, f64)> {
    let svc = cluster.coordinator.clone();
    let fpr = cluster.agents[0].fingerprint.clone();
    let work = scratch(root, "p2-")?;

    // The source as the coordinator fetches it (this also refreshes the private apt indices,
    // outside the clock).
    progress!("P2: fetching {PACKAGE} through the coordinator's apt configuration");
    let fetched = svc
        .apt
        .fetch_source(PACKAGE, work.path())
        .await
        .context("fetching the source through the coordinator's apt")?;
    // The agent's apt lists cache (default settings), as a busy agent has it.
    progress!("P2: refreshing the agent's apt lists cache");
    cluster.runtimes[0]
        .warm_apt_lists()
        .await
        .context("refreshing the agent's apt lists cache")?;
    let dsc_bytes = std::fs::read(&fetched.dsc_path)?;
    let dsc = lockstep_proto::dsc::parse(&dsc_bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", fetched.dsc_path.display()))?;
    let targets = lockstep_proto::dsc::build_jobs(&dsc.architecture, &svc.host_arch);
    let (_, kind) = targets
        .into_iter()
        .next()
        .context("hello builds nothing on this architecture")?;
    let dsc_name = fetched
        .dsc_path
        .file_name()
        .and_then(|n| n.to_str())
        .context(".dsc name")?
        .to_string();
    let unpack = format!(
        "{}-{}",
        dsc.source,
        lockstep_agent::runtime::upstream_version(&dsc.version)
    );
    let bare = Bare {
        source_dir: fetched.dir.path().to_path_buf(),
        dsc_name,
        unpack,
        flag: kind.dpkg_flag(),
        deps_flag: match kind.dpkg_flag() {
            "-A" => "--indep-only",
            _ => "--arch-only",
        },
    };

    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut attested: Vec<(String, Sha256Digest)> = Vec::new();
    for (round, lockstep_side) in [false, true, true, false].into_iter().enumerate() {
        if lockstep_side {
            let (secs, artifacts) = pipeline(cluster, &fpr, !ours.is_empty()).await?;
            progress!("P2 round {}: Lockstep {secs:.1} s", round + 1);
            ours.push(secs);
            attested = artifacts;
        } else {
            let out = scratch(work.path(), "bare-")?;
            let (secs, debs) = bare.run(out.path()).await?;
            progress!("P2 round {}: bare docker run {secs:.1} s", round + 1);
            base.push(secs);
            if !attested.is_empty() {
                let same =
                    debs.iter().all(|d| attested.contains(d)) && debs.len() == attested.len();
                progress!(
                    "P2: the bare build's .debs are {} the attested ones",
                    if same {
                        "identical to"
                    } else {
                        "NOT identical to"
                    }
                );
            }
        }
    }
    drop(fetched);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok((mean(&ours), mean(&base)))
}

/// One enqueue of `hello` through the HTTP API until the agent's attestation is stored; returns
/// the seconds and the attested artifacts (name, SHA-256).
async fn pipeline(
    cluster: &Cluster,
    fpr: &str,
    rebuild: bool,
) -> anyhow::Result<(f64, Vec<(String, Sha256Digest)>)> {
    let svc = cluster.coordinator.clone();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let resp = http
        .post(format!("{}/api/v1/jobs", cluster.url))
        .json(&serde_json::json!({ "packages": [PACKAGE], "rebuild": rebuild }))
        .send()
        .await
        .context("POST /api/v1/jobs")?;
    anyhow::ensure!(resp.status().is_success(), "enqueue: {}", resp.status());
    let resp: EnqueueResponse = resp.json().await.context("enqueue response")?;
    anyhow::ensure!(resp.errors.is_empty(), "enqueue: {:?}", resp.errors);
    let job = resp.jobs.first().context("enqueue made no job")?;
    anyhow::ensure!(job.created, "enqueue did not create a new job");
    let job_id = job.job_id.clone();
    loop {
        let (s, j, f) = (svc.clone(), job_id.clone(), fpr.to_string());
        let stored = tokio::task::spawn_blocking(move || s.has_attestation(&j, &f))
            .await?
            .map_err(|e| anyhow::anyhow!("has_attestation: {e}"))?;
        if stored {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < BUILD_TIMEOUT,
            "no attestation for job {job_id} after {BUILD_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let rec = svc
        .archive
        .records_for(&job.source, &job.version, &job.arch, Some("attestation"))?
        .into_iter()
        .find(|r| r.job_id.as_deref() == Some(job_id.as_str()))
        .context("the attestation record")?;
    let st: Statement = serde_json::from_slice(&rec.body).context("stored statement")?;
    let artifacts = st
        .artifacts
        .into_iter()
        .map(|a| (a.name, a.sha256))
        .collect();
    Ok((secs, artifacts))
}

/// The baseline's inputs.
struct Bare {
    source_dir: std::path::PathBuf,
    dsc_name: String,
    unpack: String,
    flag: &'static str,
    deps_flag: &'static str,
}

impl Bare {
    /// Runs the bare build with its outputs under `out`; returns the seconds and the `.deb`s.
    async fn run(&self, out: &Path) -> anyhow::Result<(f64, Vec<(String, Sha256Digest)>)> {
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(["run", "--rm", "--hostname", "lockstep-build"])
            .args(["--domainname", "lockstep"])
            .arg("-v")
            .arg(format!(
                "{}:/tmp/lockstep-source:ro",
                self.source_dir.display()
            ))
            .arg("-v")
            .arg(format!("{}:/build", out.display()))
            .args([IMAGE, "/bin/sh", "-c", BARE_SCRIPT, "lockstep-bare"])
            .arg(format!("/tmp/lockstep-source/{}", self.dsc_name))
            .args([self.unpack.as_str(), self.flag, self.deps_flag])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let output = tokio::time::timeout(BUILD_TIMEOUT, cmd.output())
            .await
            .context("the bare docker run timed out")?
            .context("running docker run")?;
        let secs = started.elapsed().as_secs_f64();
        if !output.status.success() {
            let err = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = err.lines().rev().take(20).collect();
            anyhow::bail!(
                "the bare docker run failed ({}):\n{}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let mut debs = Vec::new();
        for e in std::fs::read_dir(out.join("reproducible-path"))? {
            let p = e?.path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.ends_with(".deb") || name.ends_with(".udeb") || name.ends_with(".ddeb") {
                debs.push((name, Sha256Digest::of(&std::fs::read(&p)?)));
            }
        }
        anyhow::ensure!(!debs.is_empty(), "the bare docker run built no .deb");
        Ok((secs, debs))
    }
}
