//! Scenario helpers for the `decisions_*` tests: a real coordinator in-process (own RabbitMQ
//! vhost, temporary data dir, a policy trusting builder keys generated here) and fake builders
//! that upload artifacts, a clearsigned `.buildinfo` and a signed statement exactly as
//! `agent/src/worker.rs` does, over HTTP. No Docker builds: the bytes are made by the test.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

use lockstep_coordinator::{Config, Server};
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::signing::SigningKey;
use lockstep_proto::v1::{
    AttestationUpload, BuilderRef, FileRef, ImageRef, Job, Recipe, Statement, STATEMENT_SCHEMA,
};
use lockstep_tests::Vhost;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A builder identity: its key and the name the policy gives it.
pub struct Builder {
    pub name: String,
    pub key: SigningKey,
}

impl Builder {
    pub fn new(name: &str) -> Builder {
        Builder {
            name: name.into(),
            key: SigningKey::generate(&format!("{name} <{name}@lockstep.invalid>"))
                .expect("Ed25519 key generation does not fail"),
        }
    }
    pub fn fpr(&self) -> String {
        self.key.fingerprint()
    }
}

/// A running coordinator and the files around it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub http: reqwest::Client,
    pub policy_path: PathBuf,
    pub service: std::sync::Arc<lockstep_coordinator::service::Service>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _vhost: Vhost,
}

/// The policy text trusting `builders` (key files `keys/<name>.asc`) with default threshold `k`.
pub fn policy_text(builders: &[(&str, &str)], k: usize, extra: &str) -> String {
    let mut s = format!("default_threshold = {k}\n{extra}\n");
    for (name, file) in builders {
        s.push_str(&format!(
            "[[builders]]\nname = \"{name}\"\nkey = \"keys/{file}\"\n"
        ));
    }
    s
}

impl Fixture {
    /// Starts a coordinator trusting `builders` with threshold `k`.
    pub async fn start(test: &str, builders: &[&Builder], k: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("keys")).expect("mkdir keys");
        for b in builders {
            std::fs::write(
                dir.path().join(format!("keys/{}.asc", b.name)),
                b.key.public_armored().expect("armor"),
            )
            .expect("write key");
        }
        let names: Vec<(String, String)> = builders
            .iter()
            .map(|b| (b.name.clone(), format!("{}.asc", b.name)))
            .collect();
        let refs: Vec<(&str, &str)> = names
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy_text(&refs, k, "")).expect("write policy");
        Self::start_with_policy(test, dir, policy_path).await
    }

    pub async fn start_with_policy(
        test: &str,
        dir: tempfile::TempDir,
        policy_path: PathBuf,
    ) -> Fixture {
        Self::start_configured(test, dir, policy_path, |_| {}).await
    }

    /// Like [`Self::start_with_policy`], with `configure` applied to the config before start.
    pub async fn start_configured(
        test: &str,
        dir: tempfile::TempDir,
        policy_path: PathBuf,
        configure: impl FnOnce(&mut Config),
    ) -> Fixture {
        let vhost = Vhost::create(test).expect("RabbitMQ vhost (scripts/rabbitmq start)");
        let mut cfg = Config::for_data_dir(&dir.path().join("data"), &vhost.url());
        cfg.policy = policy_path.clone();
        configure(&mut cfg);
        let server = Server::build(cfg).await.expect("coordinator starts");
        let url = server.url();
        let service = server.service.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        Fixture {
            dir,
            url,
            http: reqwest::Client::new(),
            policy_path,
            service,
            stop,
            task: Some(task),
            _vhost: vhost,
        }
    }

    /// Stops the coordinator and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server ran cleanly");
        }
    }

    pub async fn put_blob(&self, bytes: &[u8]) -> Sha256Digest {
        let d = Sha256Digest::of(bytes);
        let r = self
            .http
            .put(format!("{}/api/v1/blobs/{d}", self.url))
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT blob");
        assert!(r.status().is_success(), "PUT blob: {}", r.status());
        d
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("POST");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Enqueues a hand-written 3.0 (native) source package; returns its job.
    pub async fn enqueue(&self, source: &str, version: &str) -> Job {
        self.enqueue_opts(source, version, false).await
    }

    /// Like [`Self::enqueue`]; `rebuild` makes a second job for the same package.
    pub async fn enqueue_opts(&self, source: &str, version: &str, rebuild: bool) -> Job {
        let tarball = format!("{source}_{version}.tar.xz");
        let content = format!("source of {source} {version}").into_bytes();
        let sha = self.put_blob(&content).await;
        let dsc = format!(
            "Format: 3.0 (native)\nSource: {source}\nBinary: {source}\nArchitecture: any\n\
             Version: {version}\nMaintainer: Test <t@lockstep.invalid>\n\
             Checksums-Sha256:\n {} {} {tarball}\n",
            sha.to_hex(),
            content.len()
        );
        let dsc_sha = self.put_blob(dsc.as_bytes()).await;
        let (s, v) = self
            .post_json(
                "/api/v1/jobs/dsc",
                &serde_json::json!({ "dsc_sha256": dsc_sha, "rebuild": rebuild }),
            )
            .await;
        assert_eq!(s, 200, "enqueue: {v}");
        let id = v["jobs"][0]["job_id"].as_str().expect("a job").to_string();
        let (s, j) = self.get_json(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(s, 200);
        serde_json::from_value(j["job"].clone()).expect("job decodes")
    }

    /// Uploads artifacts and the signed .buildinfo; returns the signed statement, unposted.
    pub async fn prepare(
        &self,
        b: &Builder,
        job: &Job,
        artifacts: &[(&str, &[u8])],
    ) -> (Statement, AttestationUpload) {
        let mut refs = Vec::new();
        for (name, bytes) in artifacts {
            let sha = self.put_blob(bytes).await;
            refs.push(FileRef {
                name: name.to_string(),
                sha256: sha,
                size: bytes.len() as u64,
            });
        }
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        let bi = format!(
            "Format: 1.0\nSource: {}\nVersion: {}\nArchitecture: {}\nBuild-Origin: test\n",
            job.source, job.version, job.arch
        );
        let signed_bi = b.key.clearsign(bi.as_bytes()).expect("clearsign");
        let signed_buildinfo = self.put_blob(&signed_bi).await;
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
                digest: "sha256:test".into(),
            },
            recipe: Recipe {
                command: "test".into(),
                build_path: "/build".into(),
                user: "builder".into(),
                environment: vec![],
            },
            builder: BuilderRef {
                fingerprint: b.fpr(),
                name: b.name.clone(),
            },
            artifacts: refs,
            buildinfo: FileRef {
                name: format!("{}_{}_{}.buildinfo", job.source, job.version, job.arch),
                sha256: Sha256Digest::of(bi.as_bytes()),
                size: bi.len() as u64,
            },
            built_at: chrono::Utc::now(),
        };
        let text = String::from_utf8(st.canonical_bytes()).expect("JSON is UTF-8");
        let signature = b.key.sign_detached(text.as_bytes()).expect("sign");
        let up = AttestationUpload {
            statement: text,
            signature,
            signed_buildinfo,
            build_log: None,
        };
        (st, up)
    }

    pub async fn post_attestation(&self, up: &AttestationUpload) -> (u16, Value) {
        self.post_json(
            "/api/v1/attestations",
            &serde_json::to_value(up).expect("json"),
        )
        .await
    }

    /// A builder attests `artifacts` for `job`; returns the HTTP status and answer.
    pub async fn attest(
        &self,
        b: &Builder,
        job: &Job,
        artifacts: &[(&str, &[u8])],
    ) -> (u16, Value) {
        let (_, up) = self.prepare(b, job, artifacts).await;
        self.post_attestation(&up).await
    }

    /// Status row of one source (`state`, `builders`, ...).
    pub async fn status(&self, source: &str) -> Value {
        let (s, v) = self
            .get_json(&format!("/api/v1/status?source={source}"))
            .await;
        assert_eq!(s, 200);
        v[0].clone()
    }

    /// Every decision of one key, oldest first.
    pub async fn decisions(&self, job: &Job) -> Vec<Value> {
        let (s, v) = self
            .get_json(&format!(
                "/api/v1/decisions/{}/{}/{}",
                job.source, job.version, job.arch
            ))
            .await;
        assert_eq!(s, 200);
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn reload_policy(&self) -> (u16, Value) {
        self.post_json("/api/v1/policy/reload", &serde_json::json!({}))
            .await
    }
}

/// Builds a real `.deb` with `dpkg-deb --build`: package `name` version `version`, with
/// `/usr/bin/<name>` a shell script printing `message`.
pub fn build_deb(work: &Path, name: &str, version: &str, message: &str) -> Vec<u8> {
    let root = work.join(format!(
        "{name}-{version}-{}",
        Sha256Digest::of(message.as_bytes()).to_hex()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir");
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: Test <t@lockstep.invalid>\nDescription: Lockstep test package\n \
             prints {message:?}\n"
        ),
    )
    .expect("control");
    let bin = root.join(format!("usr/bin/{name}"));
    std::fs::write(&bin, format!("#!/bin/sh\necho '{message}'\n")).expect("script");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(root.join("DEBIAN"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let out = work.join(format!("{name}.deb"));
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("dpkg-deb runs");
    assert!(
        st.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(&out).expect("read deb")
}

/// Re-serialises an upload's statement after `edit` (the signature is left as it was).
pub fn restate(up: &AttestationUpload, edit: impl FnOnce(&mut Statement)) -> AttestationUpload {
    let mut st: Statement = serde_json::from_str(&up.statement).expect("statement decodes");
    edit(&mut st);
    let mut out = up.clone();
    out.statement = String::from_utf8(st.canonical_bytes()).expect("UTF-8");
    out
}

/// A detached armored signature by an explicit key, with an optional hash algorithm and creation
/// time: for signatures our own [`SigningKey`] refuses to make (SHA-1, backdated, non-signing keys).
pub fn sign_raw(
    key: &sequoia_openpgp::packet::Key<
        sequoia_openpgp::packet::key::SecretParts,
        sequoia_openpgp::packet::key::UnspecifiedRole,
    >,
    data: &[u8],
    hash: Option<sequoia_openpgp::types::HashAlgorithm>,
    at: Option<std::time::SystemTime>,
) -> String {
    use sequoia_openpgp::armor;
    use sequoia_openpgp::serialize::stream::{Armorer, Message, Signer};
    use std::io::Write;
    let keypair = key.clone().into_keypair().expect("unencrypted secret");
    let mut sink = Vec::new();
    {
        let m = Message::new(&mut sink);
        let m = Armorer::new(m)
            .kind(armor::Kind::Signature)
            .build()
            .expect("armorer");
        let mut signer = Signer::new(m, keypair).expect("signer");
        if let Some(h) = hash {
            signer = signer
                .hash_algo(h)
                .expect("hash algorithm accepted by the builder");
        }
        if let Some(t) = at {
            signer = signer.creation_time(t);
        }
        let mut w = signer.detached().build().expect("detached signer");
        w.write_all(data).expect("write");
        w.finalize().expect("finalize");
    }
    String::from_utf8(sink).expect("armored text")
}

/// Writes a certificate (public part) to `keys/<file>` of the fixture dir.
pub fn write_cert(dir: &Path, file: &str, cert: &sequoia_openpgp::Cert) {
    use sequoia_openpgp::serialize::SerializeInto;
    std::fs::create_dir_all(dir.join("keys")).expect("mkdir");
    std::fs::write(
        dir.join("keys").join(file),
        cert.clone()
            .strip_secret_key_material()
            .armored()
            .to_vec()
            .expect("armor"),
    )
    .expect("write cert");
}

/// A [`SigningKey`] for a sequoia certificate with secrets (used for the `.buildinfo`).
pub fn signing_key_of(cert: &sequoia_openpgp::Cert) -> SigningKey {
    use sequoia_openpgp::serialize::SerializeInto;
    SigningKey::from_bytes(&cert.as_tsk().armored().to_vec().expect("armor")).expect("TSK loads")
}
