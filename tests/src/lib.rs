//! Fixtures for Lockstep's integration suite: a real coordinator and real agents, in-process, on
//! a real RabbitMQ (its own virtual host per test, so tests never see each other's jobs) and the
//! real Docker engine.
//!
//! - [`Cluster::start`]: coordinator on a free loopback port with a temporary data dir, N agents
//!   with their own keys and state dirs, a policy trusting them.
//! - [`Vhost`]: a RabbitMQ virtual host made with `rabbitmqctl`, deleted on drop.
//! - [`lockstep_bin`]: the path of a workspace binary (built by `scripts/test` before the tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lockstep_proto::v1::{State, StatusEntry};
use tokio_util::sync::CancellationToken;

/// The RabbitMQ node the test scripts start (`scripts/rabbitmq`).
pub fn rabbit_node() -> String {
    std::env::var("LOCKSTEP_TEST_RABBIT_NODE").unwrap_or_else(|_| "lockstep@localhost".into())
}

/// The broker's AMQP port.
pub fn rabbit_port() -> u16 {
    std::env::var("LOCKSTEP_TEST_RABBIT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5672)
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let node = rabbit_node();
    let out = Command::new("rabbitmqctl")
        .arg("-n")
        .arg(&node)
        .args(args)
        .output()
        .context("running rabbitmqctl (is rabbitmq-server installed? run scripts/setup)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {} failed: {} (is the node running? scripts/rabbitmq start)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A RabbitMQ virtual host of one test.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create(prefix: &str) -> anyhow::Result<Vhost> {
        let name = format!("test-{prefix}-{}", std::process::id() as u64 * 1000 + rand_suffix());
        rabbitmqctl(&["add_vhost", &name])?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])?;
        Ok(Vhost { name })
    }

    /// AMQP URL of this vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{}", rabbit_port(), self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % 1000)
        .unwrap_or(0)
}

/// Path of a workspace binary next to the test executable (`target/<profile>/<name>`).
pub fn lockstep_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, done by scripts/test)",
        p.display()
    );
    p
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// One agent of a cluster.
pub struct AgentInfo {
    pub name: String,
    pub fingerprint: String,
    pub state_dir: PathBuf,
    /// Armored public certificate.
    pub public_key: PathBuf,
}

/// A coordinator and agents running in this process.
pub struct Cluster {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub agents: Vec<AgentInfo>,
    pub vhost: Vhost,
    pub coordinator: std::sync::Arc<lockstep_coordinator::service::Service>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Options of a test cluster.
pub struct ClusterOptions {
    pub agents: usize,
    pub threshold: usize,
    /// Maximum build time of each agent.
    pub max_build: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            agents: 2,
            threshold: 2,
            max_build: Duration::from_secs(1800),
        }
    }
}

impl Cluster {
    pub async fn start(name: &str, opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lockstep-{name}-"))
            .tempdir()
            .context("creating the test dir")?;
        let vhost = Vhost::create(name)?;
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(coord_dir.join("keys"))?;
        let mut agents = Vec::new();
        let mut policy = format!("default_threshold = {}\n", opts.threshold);
        let mut agent_cfgs = Vec::new();
        for i in 1..=opts.agents {
            let name = format!("agent-{i}");
            let cfg = lockstep_agent::RawConfig {
                name: Some(name.clone()),
                state_dir: Some(dir.path().join(&name)),
                amqp_url: Some(vhost.url()),
                image_recipe: Some(repo_root().join("containers/build-image")),
                max_build_secs: Some(opts.max_build.as_secs()),
                ..Default::default()
            };
            agent_cfgs.push(cfg);
            let resolved = agent_cfgs[i - 1].clone().resolve()?;
            let (key, _) = lockstep_agent::agent::load_key(&resolved)?;
            let public_key = coord_dir.join(format!("keys/{name}.asc"));
            std::fs::write(&public_key, key.public_armored()?)?;
            policy.push_str(&format!(
                "\n[[builders]]\nname = \"{name}\"\nkey = \"keys/{name}.asc\"\n"
            ));
            agents.push(AgentInfo {
                name,
                fingerprint: key.fingerprint(),
                state_dir: resolved.state_dir.clone(),
                public_key,
            });
        }
        std::fs::write(coord_dir.join("policy.toml"), policy)?;
        let cfg = lockstep_coordinator::Config::for_data_dir(&coord_dir, &vhost.url());
        let server = lockstep_coordinator::Server::build(cfg).await?;
        let url = server.url();
        let coordinator = server.service.clone();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.run(s).await {
                eprintln!("coordinator: {e:#}");
            }
        }));
        for mut cfg in agent_cfgs {
            cfg.coordinator_url = Some(url.clone());
            let cfg = cfg.resolve()?;
            let s = shutdown.clone();
            let agent = lockstep_agent::Agent::build(cfg, &s)
                .await?
                .context("agent build cancelled")?;
            tasks.push(tokio::spawn(async move {
                if let Err(e) = agent.run(s).await {
                    eprintln!("agent: {e:#}");
                }
            }));
        }
        Ok(Cluster {
            url,
            dir,
            agents,
            vhost,
            coordinator,
            shutdown,
            tasks,
        })
    }

    /// Stops agents and coordinator and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
    }

    /// Runs the `lockstep` CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(lockstep_bin("lockstep"))
            .args(args)
            .env("LOCKSTEP_COORDINATOR", &self.url)
            .output()
            .expect("the lockstep binary runs")
    }

    /// Polls the status until (source, version, arch) leaves `pending` or `timeout` passes.
    pub async fn wait_decided(
        &self,
        source: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<StatusEntry>> {
        let started = Instant::now();
        loop {
            let rows = self.coordinator.status(Some(source)).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !rows.is_empty() && rows.iter().all(|r| r.state != State::Pending) {
                return Ok(rows);
            }
            if started.elapsed() > timeout {
                bail!("{source} still pending after {timeout:?}: {rows:#?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Writes a tiny native source package and builds its `.dsc` with `dpkg-source -b`.
///
/// `rules_build` is the shell body of the `override_dh_auto_build`-free `build` target: the
/// package installs `/usr/share/<name>/hello.txt` unless the body fails or misbehaves.
pub fn synthetic_package(
    dir: &Path,
    name: &str,
    version: &str,
    build_body: &str,
) -> anyhow::Result<PathBuf> {
    let src = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(src.join("debian/source"))?;
    std::fs::write(src.join("debian/source/format"), "3.0 (native)\n")?;
    std::fs::write(
        src.join("debian/control"),
        format!(
            "Source: {name}\nSection: misc\nPriority: optional\nMaintainer: Lockstep Tests <tests@lockstep.invalid>\n\
             Build-Depends:\nStandards-Version: 4.6.2\nRules-Requires-Root: no\n\n\
             Package: {name}\nArchitecture: any\nDescription: Lockstep test package\n a tiny package made by the test suite\n"
        ),
    )?;
    std::fs::write(
        src.join("debian/changelog"),
        format!(
            "{name} ({version}) unstable; urgency=medium\n\n  * Test package.\n\n -- Lockstep Tests <tests@lockstep.invalid>  Wed, 25 Nov 2026 12:00:00 +0000\n"
        ),
    )?;
    let rules = format!(
        "#!/usr/bin/make -f\n\
         build build-arch build-indep:\n\
         \t{build_body}\n\
         clean:\n\
         \trm -rf debian/tmp debian/files\n\
         binary binary-arch binary-indep: build\n\
         \tmkdir -p debian/tmp/DEBIAN debian/tmp/usr/share/{name}\n\
         \techo 'hello from {name}' > debian/tmp/usr/share/{name}/hello.txt\n\
         \tdpkg-gencontrol -P debian/tmp\n\
         \tdpkg-deb --root-owner-group --build debian/tmp ..\n"
    );
    std::fs::write(src.join("debian/rules"), rules)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            src.join("debian/rules"),
            std::fs::Permissions::from_mode(0o755),
        )?;
    }
    let out = Command::new("dpkg-source")
        .arg("-b")
        .arg(src.file_name().expect("has a name"))
        .current_dir(dir)
        .output()
        .context("running dpkg-source (install dpkg-dev)")?;
    if !out.status.success() {
        bail!(
            "dpkg-source -b failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dir.join(format!("{name}_{version}.dsc")))
}
