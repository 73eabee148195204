//! T11 (issue 6): crash during writes. The real `lockstep-coordinator` binary runs as a child
//! process; the test drives many concurrent writes at it (blob PUTs of random sizes, developer
//! uploads, `.dsc` enqueues), SIGKILLs it at a random moment while writes are in flight, and
//! restarts it — several rounds. Every write the coordinator acknowledged (2xx) is remembered.
//!
//! What must hold, checked after every crash and after the last restart:
//! - the crashed data directory passes `lockstep verify --data-dir` before any restart (a crash
//!   leaves nothing torn under a final name, nothing half-appended in the log);
//! - each restarted coordinator keeps the same log key and its checkpoint extends the previous
//!   round's (`lockstep verify --since`, a consistency proof plus a recomputation from leaves);
//! - at the end every acknowledged blob is served and hashes to its name and size, every
//!   acknowledged record and job is present with the leaf index it was acknowledged with, the
//!   log's signed checkpoint covers every leaf, and both `lockstep verify` modes exit 0.

mod archive_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archive_support::{free_port, text, write_upload};
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::signing::SigningKey;
use lockstep_tests::{CoordinatorProcess, CoordinatorProgram};

/// Kill/restart rounds (`LOCKSTEP_CRASH_ROUNDS` runs more, e.g. for a soak).
const ROUNDS: usize = 8;
/// Concurrent writers during a round.
const WRITERS: usize = 6;
/// A round writes for a random time in this range (ms) before the SIGKILL.
const WRITE_MS: (u64, u64) = (50, 500);
/// How long a (re)started coordinator may take to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-request timeout of the writers (a killed server resets connections at once; this only
/// bounds a request that hangs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// splitmix64: a small seeded generator (the seed is printed, so a failing run can be replayed
/// with `LOCKSTEP_CRASH_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Everything the coordinator acknowledged, for the final checks.
#[derive(Default)]
struct Acked {
    /// (digest, size) of every blob PUT answered 2xx.
    blobs: Vec<(Sha256Digest, u64)>,
    /// (record id, leaf index) of every developer-upload record answered 2xx.
    records: Vec<(i64, u64)>,
    /// Job ids of every enqueue answered 2xx.
    jobs: Vec<String>,
}

#[derive(Default)]
struct Counts {
    attempted: AtomicU64,
    acknowledged: AtomicU64,
}

/// A prepared developer upload: its files and the clearsigned `.changes`.
struct Upload {
    files: Vec<Vec<u8>>,
    changes: Vec<u8>,
}

/// The real `lockstep-coordinator` binary on `data`, healthy.
async fn start_coordinator(data: &Path, amqp: &str, log: &Path) -> CoordinatorProcess {
    let mut c = CoordinatorProcess::start(
        &CoordinatorProgram::Binary,
        data,
        free_port(),
        amqp,
        log,
        &[],
    )
    .expect("start lockstep-coordinator");
    c.wait_healthy(START_TIMEOUT)
        .await
        .expect("the coordinator becomes healthy");
    c
}

fn lockstep(args: &[&str]) -> std::process::Output {
    Command::new(lockstep_tests::lockstep_bin("lockstep"))
        .args(args)
        .output()
        .expect("the lockstep binary runs")
}

async fn put_blob(http: &reqwest::Client, url: &str, bytes: Vec<u8>) -> Option<Sha256Digest> {
    let d = Sha256Digest::of(&bytes);
    let r = http
        .put(format!("{url}/api/v1/blobs/{d}"))
        .body(bytes)
        .send()
        .await
        .ok()?;
    r.status().is_success().then_some(d)
}

/// One writer: random writes until `stop`. Records what was acknowledged.
#[allow(clippy::too_many_arguments)]
async fn writer(
    http: reqwest::Client,
    url: String,
    stop: Arc<AtomicBool>,
    uploads: Arc<Mutex<Vec<Upload>>>,
    dsc: Sha256Digest,
    acked: Arc<Mutex<Acked>>,
    counts: Arc<Counts>,
    mut rng: Rng,
) {
    // Bounded even if `stop` were never set: the round lasts at most 500 ms.
    for _ in 0..100_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let pick = rng.range(0, 9);
        counts.attempted.fetch_add(1, Ordering::SeqCst);
        if pick < 5 {
            // A blob of random size: mostly small, sometimes a few MiB (several write calls).
            let size = if rng.range(0, 9) == 0 {
                rng.range(256 * 1024, 3 * 1024 * 1024)
            } else {
                rng.range(0, 64 * 1024)
            };
            let bytes = rng.bytes(size as usize);
            let len = bytes.len() as u64;
            if let Some(d) = put_blob(&http, &url, bytes).await {
                acked.lock().expect("not poisoned").blobs.push((d, len));
                counts.acknowledged.fetch_add(1, Ordering::SeqCst);
            }
        } else if pick < 8 {
            let Some(up) = uploads.lock().expect("not poisoned").pop() else {
                continue;
            };
            let mut ok = true;
            for f in up.files.into_iter().chain([up.changes.clone()]) {
                let len = f.len() as u64;
                match put_blob(&http, &url, f).await {
                    Some(d) => acked.lock().expect("not poisoned").blobs.push((d, len)),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            let r = http
                .post(format!("{url}/api/v1/uploads"))
                .json(&serde_json::json!({ "changes_sha256": Sha256Digest::of(&up.changes) }))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        let mut a = acked.lock().expect("not poisoned");
                        for rec in v["records"].as_array().into_iter().flatten() {
                            a.records.push((
                                rec["record_id"].as_i64().expect("record_id"),
                                rec["leaf_index"].as_u64().expect("leaf_index"),
                            ));
                        }
                        counts.acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        } else {
            let r = http
                .post(format!("{url}/api/v1/jobs/dsc"))
                .json(&serde_json::json!({ "dsc_sha256": dsc, "rebuild": true }))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        let mut a = acked.lock().expect("not poisoned");
                        for j in v["jobs"].as_array().into_iter().flatten() {
                            a.jobs
                                .push(j["job_id"].as_str().expect("job_id").to_string());
                        }
                        counts.acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// Developer uploads for one round, signed before the round starts so writers only send.
fn prepare_uploads(
    dir: &Path,
    key: &SigningKey,
    round: usize,
    n: usize,
    rng: &mut Rng,
) -> Vec<Upload> {
    (0..n)
        .map(|i| {
            let version = format!("1.{round}.{i}");
            let len = rng.range(1, 32 * 1024) as usize;
            let deb = rng.bytes(len);
            let deb_name = format!("crashpkg_{version}_amd64.deb");
            let bi_name = format!("crashpkg_{version}_amd64.buildinfo");
            let bi = format!("Format: 1.0\nSource: crashpkg\nVersion: {version}\n").into_bytes();
            let changes = write_upload(
                &dir.join(format!("up-{round}-{i}")),
                key,
                "crashpkg",
                &version,
                &[(&deb_name, &deb), (&bi_name, &bi)],
            );
            Upload {
                files: vec![deb, bi],
                changes: std::fs::read(changes).expect("read .changes"),
            }
        })
        .collect()
}

fn verify_local(data_dir: &Path, when: &str) {
    let o = lockstep(&["verify", "--data-dir", data_dir.to_str().expect("utf-8")]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "lockstep verify --data-dir {when}: {}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_at_random_points() {
    let vhost = lockstep_tests::Vhost::create("crash").expect("vhost (scripts/rabbitmq start)");
    let work = tempfile::Builder::new()
        .prefix("lockstep-crash-")
        .tempdir()
        .expect("tempdir");
    let data = work.path().join("data");
    let log = work.path().join("coordinator.log");
    std::fs::create_dir_all(data.join("keys")).expect("mkdir");
    let dev = SigningKey::generate("Dev <dev@lockstep.invalid>").expect("keygen");
    std::fs::write(
        data.join("keys/dev.asc"),
        dev.public_armored().expect("armor"),
    )
    .expect("write key");
    std::fs::write(
        data.join("policy.toml"),
        "default_threshold = 2\n\n[[developers]]\nname = \"dev\"\nkey = \"keys/dev.asc\"\n",
    )
    .expect("policy");
    let pkgs = work.path().join("pkgs");
    std::fs::create_dir_all(&pkgs).expect("mkdir");
    let dsc_path =
        lockstep_tests::synthetic_package(&pkgs, "crashsrc", "1.0", "true").expect("a .dsc");
    let dsc = Sha256Digest::of(&std::fs::read(&dsc_path).expect("read .dsc"));

    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let counts = Arc::new(Counts::default());
    let saved_cp: PathBuf = work.path().join("checkpoint.saved");
    let mut log_key: Option<String> = None;
    let mut kills = 0usize;
    let started = Instant::now();
    let seed = std::env::var("LOCKSTEP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("T11 seed {seed} (replay with LOCKSTEP_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    let rounds = std::env::var("LOCKSTEP_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    for round in 0..rounds {
        let coord = start_coordinator(&data, &vhost.url(), &log).await;
        let url = coord.url.clone();

        // The log key survives every crash, and each checkpoint extends the last one.
        let info: serde_json::Value = http
            .get(format!("{url}/api/v1/log"))
            .send()
            .await
            .expect("GET /api/v1/log")
            .json()
            .await
            .expect("log info json");
        let key = info["verifier_key"]
            .as_str()
            .expect("verifier_key")
            .to_string();
        let pinned = log_key.get_or_insert_with(|| key.clone()).clone();
        assert_eq!(
            key, pinned,
            "round {round}: the log key changed across a crash"
        );
        let saved = saved_cp.to_str().expect("utf-8");
        let mut args = vec![
            "--coordinator",
            &url,
            "verify",
            "--no-audit",
            "--log-key",
            &pinned,
            "--save",
            saved,
        ];
        if saved_cp.exists() {
            args.extend(["--since", saved]);
        }
        let o = lockstep(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "round {round}: the restarted log does not extend the previous checkpoint: {}",
            text(&o)
        );

        if round == 0 {
            // The .dsc and its files, once; writers then enqueue rebuilds of it.
            let jobs = lockstep_tests::enqueue_dsc_http(&url, &dsc_path)
                .await
                .expect("enqueue the .dsc");
            acked.lock().expect("not poisoned").jobs.extend(jobs);
        }

        let uploads = Arc::new(Mutex::new(prepare_uploads(
            work.path(),
            &dev,
            round,
            40,
            &mut rng,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                tokio::spawn(writer(
                    http.clone(),
                    url.clone(),
                    stop.clone(),
                    uploads.clone(),
                    dsc,
                    acked.clone(),
                    counts.clone(),
                    Rng(rng.next()),
                ))
            })
            .collect();
        let ms = rng.range(WRITE_MS.0, WRITE_MS.1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        // Kill while the writers are still sending: some requests are cut mid-flight.
        coord.kill9();
        kills += 1;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            tokio::time::timeout(REQUEST_TIMEOUT * 2, t)
                .await
                .expect("writers stop after the kill")
                .expect("writer task");
        }
        // The state a crash leaves behind is consistent before any recovery runs.
        verify_local(
            &data,
            &format!("right after kill {kills} (round {round}, {ms} ms)"),
        );
    }

    // Final restart and checks.
    let coord = start_coordinator(&data, &vhost.url(), &log).await;
    let url = coord.url.clone();
    let acked = std::mem::take(&mut *acked.lock().expect("not poisoned"));
    let mut lost = Vec::new();

    for (d, size) in &acked.blobs {
        let r = http
            .get(format!("{url}/api/v1/blobs/{d}"))
            .send()
            .await
            .expect("GET blob");
        if !r.status().is_success() {
            lost.push(format!("blob {d}: {}", r.status()));
            continue;
        }
        let body = r.bytes().await.expect("blob body");
        let got = Sha256Digest::of(&body);
        if got != *d || body.len() as u64 != *size {
            lost.push(format!(
                "blob {d}: served {} bytes hashing to {got}, acknowledged {size} bytes",
                body.len()
            ));
        }
    }
    for (id, leaf) in &acked.records {
        let r = http
            .get(format!("{url}/api/v1/records/{id}"))
            .send()
            .await
            .expect("GET record");
        if !r.status().is_success() {
            lost.push(format!("record {id}: {}", r.status()));
            continue;
        }
        let v: serde_json::Value = r.json().await.expect("record json");
        if v["leaf_index"].as_u64() != Some(*leaf) || v["kind"] != "developer-upload" {
            lost.push(format!("record {id}: acknowledged at leaf {leaf}, now {v}"));
        }
    }
    for job in &acked.jobs {
        let r = http
            .get(format!("{url}/api/v1/jobs/{job}"))
            .send()
            .await
            .expect("GET job");
        if !r.status().is_success() {
            lost.push(format!("job {job}: {}", r.status()));
        }
    }

    // The signed checkpoint covers the whole log, including every acknowledged leaf.
    let info: serde_json::Value = http
        .get(format!("{url}/api/v1/log"))
        .send()
        .await
        .expect("GET /api/v1/log")
        .json()
        .await
        .expect("log info json");
    let pinned = log_key.expect("at least one round ran");
    let cp = lockstep_archive::proof::verify_checkpoint(
        info["checkpoint"].as_str().expect("a checkpoint"),
        &pinned,
    )
    .expect("the latest checkpoint verifies with the pinned key");
    let size = info["size"].as_u64().expect("size");
    assert_eq!(cp.size, size, "the last checkpoint does not cover the log");
    for (id, leaf) in &acked.records {
        assert!(
            *leaf < cp.size,
            "record {id} at leaf {leaf} is outside the checkpoint"
        );
    }

    let saved = saved_cp.to_str().expect("utf-8");
    let o = lockstep(&[
        "--coordinator",
        &url,
        "verify",
        "--log-key",
        &pinned,
        "--since",
        saved,
    ]);
    assert_eq!(o.status.code(), Some(0), "remote verify: {}", text(&o));
    verify_local(&data, "after the last restart");
    coord.kill9();

    let attempted = counts.attempted.load(Ordering::SeqCst);
    let acknowledged = counts.acknowledged.load(Ordering::SeqCst);
    println!(
        "T11 crash during writes: rounds {rounds}, writes attempted {attempted}, acknowledged \
         {acknowledged} ({} blobs, {} upload records, {} jobs), kills {kills}, lost {}, log \
         size {size}, {:.1} s",
        acked.blobs.len(),
        acked.records.len(),
        acked.jobs.len(),
        lost.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:#?}");
    assert!(
        acknowledged > rounds as u64,
        "too few writes were acknowledged ({acknowledged}) for the test to mean anything"
    );
}
