//! An in-process coordinator [`Service`] on a scratch data directory, trusting builder keys made
//! here, plus synthetic source packages (enqueued through the service, as `lockstep enqueue --dsc`
//! does) and attestations signed exactly as `agent/src/worker.rs` signs them. No Docker, no HTTP:
//! the benchmarks call the service the way the HTTP handlers do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use lockstep_coordinator::service::Service;
use lockstep_coordinator::Config;
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::signing::SigningKey;
use lockstep_proto::v1::{
    AttestationUpload, BuilderRef, FileRef, ImageRef, Job, Recipe, Statement, STATEMENT_SCHEMA,
};

/// A builder identity.
pub struct Builder {
    pub name: String,
    pub key: SigningKey,
}

impl Builder {
    pub fn new(name: &str) -> anyhow::Result<Builder> {
        Ok(Builder {
            name: name.into(),
            key: SigningKey::generate(&format!("{name} <{name}@lockstep.invalid>"))
                .context("generating a builder key")?,
        })
    }
}

/// Writes `keys/<name>.asc` and `policy.toml` trusting `builders` with threshold `k`.
pub fn write_policy(dir: &Path, builders: &[Builder], k: usize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("keys"))?;
    let mut text = format!("default_threshold = {k}\n");
    for b in builders {
        std::fs::write(
            dir.join(format!("keys/{}.asc", b.name)),
            b.key.public_armored().context("armoring a key")?,
        )?;
        text.push_str(&format!(
            "[[builders]]\nname = \"{0}\"\nkey = \"keys/{0}.asc\"\n",
            b.name
        ));
    }
    let p = dir.join("policy.toml");
    std::fs::write(&p, text)?;
    Ok(p)
}

/// The coordinator's configuration for a data dir under `dir`.
pub fn config(dir: &Path, amqp_url: &str, policy: &Path) -> Config {
    let mut cfg = Config::for_data_dir(&dir.join("data"), amqp_url);
    cfg.policy = policy.to_path_buf();
    cfg
}

/// Opens a service (no dispatcher: nothing is published).
pub fn service(dir: &Path, policy: &Path) -> anyhow::Result<Arc<Service>> {
    // The URL is never used without a dispatcher.
    let cfg = config(dir, "amqp://127.0.0.1:1/unused", policy);
    Ok(Arc::new(Service::open(cfg)?))
}

/// Enqueues a hand-written 3.0 (native) source package through the service.
pub fn enqueue(svc: &Service, source: &str, version: &str) -> anyhow::Result<Job> {
    let tarball = format!("{source}_{version}.tar.xz");
    let content = format!("source of {source} {version}").into_bytes();
    let sha = svc.archive.put_blob(None, &content[..], u64::MAX)?.digest;
    let dsc = format!(
        "Format: 3.0 (native)\nSource: {source}\nBinary: {source}\nArchitecture: any\n\
         Version: {version}\nMaintainer: Bench <b@lockstep.invalid>\n\
         Checksums-Sha256:\n {} {} {tarball}\n",
        sha.to_hex(),
        content.len()
    );
    let dsc_sha = svc.archive.put_blob(None, dsc.as_bytes(), u64::MAX)?.digest;
    let resp = svc
        .enqueue_dsc(dsc_sha, false)
        .map_err(|e| anyhow::anyhow!("enqueue {source}: {e}"))?;
    let id = &resp.jobs.first().context("enqueue made no job")?.job_id;
    Ok(svc.jobs.get(id)?.context("job row")?.job)
}

/// A real, minimal `.deb` (built once with `dpkg-deb`), made unique per `n` by a trailing ar
/// member that dpkg and Lockstep's reader skip.
pub struct Debs {
    template: Vec<u8>,
}

impl Debs {
    pub fn new(work: &Path) -> anyhow::Result<Debs> {
        let root = work.join("debroot");
        std::fs::create_dir_all(root.join("DEBIAN"))?;
        std::fs::create_dir_all(root.join("usr/share/doc/bench"))?;
        std::fs::write(
            root.join("DEBIAN/control"),
            "Package: bench\nVersion: 1\nArchitecture: all\nMaintainer: Bench <b@lockstep.invalid>\n\
             Description: benchmark package\n",
        )?;
        std::fs::write(root.join("usr/share/doc/bench/README"), "bench\n")?;
        let out = work.join("bench.deb");
        let st = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&root)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running dpkg-deb")?;
        anyhow::ensure!(st.success(), "dpkg-deb --build failed");
        Ok(Debs {
            template: std::fs::read(&out)?,
        })
    }

    pub fn nth(&self, n: u64) -> Vec<u8> {
        let mut d = self.template.clone();
        if d.len() % 2 == 1 {
            d.push(b'\n');
        }
        let body = format!("{n:016}");
        // ar member header: name(16) mtime(12) uid(6) gid(6) mode(8) size(10) "`\n".
        d.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "zbench",
                0,
                0,
                0,
                644,
                body.len()
            )
            .as_bytes(),
        );
        d.extend_from_slice(body.as_bytes());
        d
    }
}

/// Stores `deb` and a clearsigned `.buildinfo` and returns the signed attestation, unposted.
pub fn prepare(
    svc: &Service,
    b: &Builder,
    job: &Job,
    deb: &[u8],
) -> anyhow::Result<AttestationUpload> {
    let deb_sha = svc.archive.put_blob(None, deb, u64::MAX)?.digest;
    let bi = format!(
        "Format: 1.0\nSource: {}\nVersion: {}\nArchitecture: {}\nBuild-Origin: bench\n",
        job.source, job.version, job.arch
    );
    let signed_bi = b.key.clearsign(bi.as_bytes()).context("clearsign")?;
    let signed_buildinfo = svc.archive.put_blob(None, &signed_bi[..], u64::MAX)?.digest;
    let st = Statement {
        schema: STATEMENT_SCHEMA.into(),
        job_id: job.job_id.clone(),
        source: job.source.clone(),
        version: job.version.clone(),
        arch: job.arch.clone(),
        dsc_sha256: job.dsc.sha256,
        source_files: job.files.clone(),
        source_origin: job.origin.clone(),
        image: ImageRef {
            name: "lockstep-build:bookworm".into(),
            digest: "sha256:bench".into(),
        },
        recipe: Recipe {
            command: "bench".into(),
            build_path: "/build".into(),
            user: "builder".into(),
            environment: vec![],
        },
        builder: BuilderRef {
            fingerprint: b.key.fingerprint(),
            name: b.name.clone(),
        },
        artifacts: vec![FileRef {
            name: format!("{}_{}_{}.deb", job.source, job.version, job.arch),
            sha256: deb_sha,
            size: deb.len() as u64,
        }],
        buildinfo: FileRef {
            name: format!("{}_{}_{}.buildinfo", job.source, job.version, job.arch),
            sha256: Sha256Digest::of(bi.as_bytes()),
            size: bi.len() as u64,
        },
        built_at: chrono::Utc::now(),
    };
    let text = String::from_utf8(st.canonical_bytes()).context("statement is UTF-8")?;
    let signature = b.key.sign_detached(text.as_bytes()).context("sign")?;
    Ok(AttestationUpload {
        statement: text,
        signature,
        signed_buildinfo,
        build_log: None,
    })
}

/// `n` packages `bench-<i>` version 1, each with one job and one attestation per builder,
/// interleaved (builder 0 of package 0, builder 1 of package 0, …). Prepared by a few threads at
/// once: every blob put is fsynced, and the disk overlaps them.
pub fn prepare_many(
    svc: &Service,
    builders: &[Builder],
    debs: &Debs,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Vec<(Job, Vec<AttestationUpload>)>> {
    const THREADS: usize = 8;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        let job = enqueue(svc, &format!("{prefix}{i}"), "1")?;
                        let deb = debs.nth(i as u64);
                        let ups = builders
                            .iter()
                            .map(|b| prepare(svc, b, &job, &deb))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        done.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, job, ups));
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow::anyhow!("a preparing thread panicked"))?
        })
    })?;
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|(i, _, _)| *i);
    Ok(done.into_iter().map(|(_, job, ups)| (job, ups)).collect())
}
