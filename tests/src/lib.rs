//! Fixtures for Lockstep's integration suite: a real coordinator and real agents, in-process, on
//! a real RabbitMQ (its own virtual host per test, so tests never see each other's jobs) and the
//! real Docker engine.
//!
//! - [`Cluster::start`]: coordinator on a free loopback port with a temporary data dir, N agents
//!   with their own keys and state dirs, a policy trusting them.
//! - [`Vhost`]: a RabbitMQ virtual host made with `rabbitmqctl`, deleted on drop.
//! - [`rabbit_cluster`]: a RabbitMQ cluster of several local nodes (`scripts/rabbitmq-cluster`), T04.
//! - [`lockstep_bin`]: the path of a workspace binary (built by `scripts/test` before the tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lockstep_proto::v1::{State, StatusEntry};
use tokio_util::sync::CancellationToken;

pub mod rabbit_cluster;

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

fn rabbitmqctl_on(node: &str, args: &[&str]) -> anyhow::Result<()> {
    rabbit_cluster::ctl(node, args)
        .map(|_| ())
        .context("is the node running? scripts/rabbitmq start (after scripts/setup)")
}

/// A RabbitMQ virtual host of one test.
pub struct Vhost {
    pub name: String,
    /// The broker nodes serving it: (Erlang node name, AMQP port). One unless on a cluster.
    nodes: Vec<(String, u16)>,
}

impl Vhost {
    pub fn create(prefix: &str) -> anyhow::Result<Vhost> {
        Vhost::create_on(&[(rabbit_node(), rabbit_port())], prefix)
    }

    /// A vhost on the nodes of a cluster (made through the first one).
    pub fn create_on(nodes: &[(String, u16)], prefix: &str) -> anyhow::Result<Vhost> {
        let name = format!(
            "test-{prefix}-{}",
            std::process::id() as u64 * 1000 + rand_suffix()
        );
        let node = &nodes.first().context("at least one broker node")?.0;
        rabbitmqctl_on(node, &["add_vhost", &name])?;
        rabbitmqctl_on(
            node,
            &["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"],
        )?;
        Ok(Vhost {
            name,
            nodes: nodes.to_vec(),
        })
    }

    /// AMQP URL of this vhost (on the first node).
    pub fn url(&self) -> String {
        self.urls().remove(0)
    }

    /// AMQP URL of this vhost on every node, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(_, port)| format!("amqp://guest:guest@127.0.0.1:{port}/{}", self.name))
            .collect()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        // Through any node that still answers.
        for (node, _) in &self.nodes {
            if rabbitmqctl_on(node, &["delete_vhost", &self.name]).is_ok() {
                return;
            }
        }
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
#[derive(Clone)]
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
    /// Each agent's build runtime, in agent order (for container audits).
    pub runtimes: Vec<std::sync::Arc<lockstep_agent::runtime::Runtime>>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Options of a test cluster.
pub struct ClusterOptions {
    pub agents: usize,
    pub threshold: usize,
    /// Maximum build time of each agent.
    pub max_build: Duration,
    /// Memory limit of each build container (agent default when `None`).
    pub memory_bytes: Option<i64>,
    /// Process limit of each build container (agent default when `None`).
    pub pids_limit: Option<i64>,
    /// Builder queue delivery limit (coordinator default when `None`).
    pub delivery_limit: Option<u32>,
    /// Free scratch space each agent needs to start a build (agent default when `None`).
    pub min_free_bytes: Option<u64>,
    /// Build image tag and the script that makes it when missing (the suite's image and
    /// `containers/build-image` when `None`).
    pub image: Option<String>,
    pub image_recipe: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            agents: 2,
            threshold: 2,
            max_build: Duration::from_secs(1800),
            memory_bytes: None,
            pids_limit: None,
            delivery_limit: None,
            min_free_bytes: None,
            image: None,
            image_recipe: None,
        }
    }
}

impl Cluster {
    /// (job, builder fingerprint) → body digests of the attestation records stored for them.
    pub fn attestations(
        &self,
        source: &str,
        version: &str,
        arch: &str,
    ) -> std::collections::BTreeMap<(String, String), Vec<String>> {
        attestations_in(&self.coordinator.archive, source, version, arch)
    }

    pub async fn start(name: &str, opts: ClusterOptions) -> anyhow::Result<Cluster> {
        Cluster::start_on(name, opts, Vhost::create(name)?).await
    }

    /// Like [`Cluster::start`], on `vhost`: coordinator and agents get every node's URL
    /// (`amqp_urls`), so they fail over when a broker node goes away (T04).
    pub async fn start_on(
        name: &str,
        opts: ClusterOptions,
        vhost: Vhost,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lockstep-{name}-"))
            .tempdir()
            .context("creating the test dir")?;
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(coord_dir.join("keys"))?;
        let agents = prepare_builders(dir.path(), &coord_dir, opts.agents, opts.threshold)?;
        let agent_cfgs: Vec<lockstep_agent::RawConfig> = agents
            .iter()
            .map(|a| lockstep_agent::RawConfig {
                name: Some(a.name.clone()),
                state_dir: Some(a.state_dir.clone()),
                amqp_urls: Some(vhost.urls()),
                image: opts.image.clone(),
                image_recipe: Some(
                    opts.image_recipe
                        .clone()
                        .unwrap_or_else(|| repo_root().join("containers/build-image")),
                ),
                max_build_secs: Some(opts.max_build.as_secs()),
                memory_bytes: opts.memory_bytes,
                pids_limit: opts.pids_limit,
                min_free_bytes: opts.min_free_bytes,
                ..Default::default()
            })
            .collect();
        let mut cfg = lockstep_coordinator::Config::for_data_dir(&coord_dir, &vhost.url());
        cfg.amqp_urls = vhost.urls();
        if let Some(limit) = opts.delivery_limit {
            cfg.delivery_limit = limit;
        }
        let server = lockstep_coordinator::Server::build(cfg).await?;
        let url = server.url();
        let coordinator = server.service.clone();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut runtimes = Vec::new();
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
            runtimes.push(agent.worker.runtime.clone());
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
            runtimes,
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
            let rows = self
                .coordinator
                .status(Some(source))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
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
         \tdpkg-gencontrol -Pdebian/tmp\n\
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

// ---------------------------------------------------------------------------------------------
// Fault suite helpers (issue 6, `tests/tests/fault_*.rs`).

/// Like [`synthetic_package`], but with a whole `debian/rules` and extra files (paths relative to
/// the source tree, e.g. `debian/hostile.sh`). The rules must build `../<name>_<version>_*.deb`.
pub fn synthetic_package_rules(
    dir: &Path,
    name: &str,
    version: &str,
    rules: &str,
    extra_files: &[(&str, &str)],
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
    std::fs::write(src.join("debian/rules"), rules)?;
    for (rel, text) in extra_files {
        let p = src.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, text)?;
    }
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

/// Runs `rabbitmqctl -n <node> <args>` and returns its standard output.
pub fn rabbitmqctl_output(args: &[&str]) -> anyhow::Result<String> {
    rabbit_cluster::ctl(&rabbit_node(), args)
}

/// `rabbitmqctl list_queues` of `vhost`: each queue's `columns`, one row per queue (rows that do
/// not have as many fields as columns are skipped).
fn list_queues(vhost: &str, columns: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut args = vec!["list_queues", "-p", vhost, "--quiet", "--no-table-headers"];
    args.extend_from_slice(columns);
    let text = rabbitmqctl_output(&args)?;
    Ok(text
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() == columns.len())
        .collect())
}

/// (ready, unacked) message counts of every queue of `vhost`, by queue name.
pub fn queue_counts(vhost: &str) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let rows = list_queues(
        vhost,
        &["name", "messages_ready", "messages_unacknowledged"],
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|f| Some((f[0].clone(), f[1].parse().ok()?, f[2].parse().ok()?)))
        .collect())
}

/// Consumers of each queue of `vhost`, by queue name.
pub fn queue_consumers(vhost: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let rows = list_queues(vhost, &["name", "consumers"])?;
    Ok(rows
        .into_iter()
        .filter_map(|f| Some((f[0].clone(), f[1].parse().ok()?)))
        .collect())
}

/// A message taken from the dead-letter queue, with what RabbitMQ recorded about its death.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    /// `x-death` entries rendered as `queue=… reason=… count=…`.
    pub deaths: Vec<String>,
    /// `x-first-death-reason` (RabbitMQ sets it on the first dead-lettering).
    pub first_reason: Option<String>,
    /// `x-delivery-count`: how often a quorum queue had delivered it before (absent: never
    /// redelivered).
    pub delivery_count: Option<String>,
}

fn amqp_text(v: &lapin::types::AMQPValue) -> String {
    use lapin::types::AMQPValue;
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Takes (and acks) every message in `lockstep.dead` of `vhost_url`.
pub async fn drain_dead_letters(vhost_url: &str) -> anyhow::Result<Vec<DeadLetter>> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    use lapin::types::AMQPValue;
    let conn = lapin::Connection::connect(vhost_url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(
            lockstep_proto::v1::DEAD_LETTER_QUEUE.into(),
            BasicGetOptions::default(),
        )
        .await?
    {
        let mut deaths = Vec::new();
        let mut first_reason = None;
        let mut delivery_count = None;
        if let Some(headers) = msg.delivery.properties.headers() {
            for (k, v) in headers.inner() {
                if k.as_str() == "x-first-death-reason" {
                    first_reason = Some(amqp_text(v));
                }
                if k.as_str() == "x-delivery-count" {
                    delivery_count = Some(amqp_text(v));
                }
                if k.as_str() == "x-death" {
                    if let AMQPValue::FieldArray(arr) = v {
                        for d in arr.as_slice() {
                            if let AMQPValue::FieldTable(t) = d {
                                let get =
                                    |n: &str| t.inner().get(n).map(amqp_text).unwrap_or_default();
                                deaths.push(format!(
                                    "queue={} reason={} count={}",
                                    get("queue"),
                                    get("reason"),
                                    get("count")
                                ));
                            }
                        }
                    }
                }
            }
        }
        msg.delivery.ack(BasicAckOptions::default()).await?;
        out.push(DeadLetter {
            body: msg.delivery.data.clone(),
            deaths,
            first_reason,
            delivery_count,
        });
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Publishes raw bytes straight to a queue of `vhost_url` (default exchange), confirmed.
pub async fn publish_raw(vhost_url: &str, queue: &str, body: &[u8]) -> anyhow::Result<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let conn = lapin::Connection::connect(vhost_url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    anyhow::ensure!(
        matches!(confirm, lapin::Confirmation::Ack(None)),
        "publish to {queue} not confirmed: {confirm:?}"
    );
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// Environment variable that turns a re-executed test binary into an agent process
/// ([`run_agent_child`]).
pub const AGENT_CHILD_ENV: &str = "LOCKSTEP_TEST_AGENT_CHILD";

/// When [`AGENT_CHILD_ENV`] is set, runs a real agent configured from `LOCKSTEP__*` (exactly as
/// `lockstep-agent` does) until SIGTERM or SIGKILL, and returns `true`; otherwise returns
/// `false` at once. A fault test calls it from a test named in its [`AgentProgram::SelfExec`],
/// so the test binary can be started as an agent built with this test build's features (the
/// `failpoints` crash injection).
pub fn run_agent_child() -> bool {
    if std::env::var_os(AGENT_CHILD_ENV).is_none() {
        return false;
    }
    run_as_child("agent child", |shutdown| async move {
        let cfg = lockstep_agent::RawConfig::load(None)?.resolve()?;
        let Some(agent) = lockstep_agent::Agent::build(cfg, &shutdown).await? else {
            return Ok(());
        };
        agent.run(shutdown).await
    });
    true
}

/// Runs `body` as the whole life of a child process: logs to stderr, a tokio runtime, SIGTERM
/// cancels the token; an error exits 1.
fn run_as_child<F, Fut>(label: &str, body: F)
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result: anyhow::Result<()> = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            stop.cancel();
        });
        body(shutdown).await
    });
    if let Err(e) = result {
        eprintln!("{label}: {e:#}");
        std::process::exit(1);
    }
}

/// Makes `n` agent identities (`agent-1`… with state dirs under `dir`, keys generated) and the
/// coordinator's `policy.toml` in `coord_dir` trusting them with `threshold`.
pub fn prepare_builders(
    dir: &Path,
    coord_dir: &Path,
    n: usize,
    threshold: usize,
) -> anyhow::Result<Vec<AgentInfo>> {
    std::fs::create_dir_all(coord_dir.join("keys"))?;
    let mut agents = Vec::new();
    let mut policy = format!("default_threshold = {threshold}\n");
    for i in 1..=n {
        let name = format!("agent-{i}");
        let resolved = lockstep_agent::RawConfig {
            name: Some(name.clone()),
            state_dir: Some(dir.join(&name)),
            ..Default::default()
        }
        .resolve()?;
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
    Ok(agents)
}

/// How a [`ProcCluster`] starts its agent processes.
#[derive(Clone, Debug)]
pub enum AgentProgram {
    /// The real `lockstep-agent` binary of the workspace ([`lockstep_bin`]).
    Binary(PathBuf),
    /// This test binary again, running only the named test, which calls [`run_agent_child`].
    SelfExec(String),
}

/// The command line of one agent process (the real binary or this test binary re-executed),
/// configured through `LOCKSTEP__*` like an operator's unit would.
pub fn agent_command(
    program: &AgentProgram,
    a: &AgentInfo,
    coordinator_url: &str,
    amqp_url: &str,
    max_build: Duration,
) -> anyhow::Result<Command> {
    let mut cmd = match program {
        AgentProgram::Binary(p) => Command::new(p),
        AgentProgram::SelfExec(test) => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env(AGENT_CHILD_ENV, "1");
            c
        }
    };
    cmd.env("LOCKSTEP__NAME", &a.name)
        .env("LOCKSTEP__STATE_DIR", &a.state_dir)
        .env("LOCKSTEP__COORDINATOR_URL", coordinator_url)
        .env("LOCKSTEP__AMQP_URL", amqp_url)
        .env(
            "LOCKSTEP__IMAGE_RECIPE",
            repo_root().join("containers/build-image"),
        )
        .env("LOCKSTEP__MAX_BUILD_SECS", max_build.as_secs().to_string())
        .env("LOCKSTEP__STOP_GRACE_SECS", "2")
        .env("LOCKSTEP__SHUTDOWN_GRACE_SECS", "5")
        .env(
            "RUST_LOG",
            std::env::var("LOCKSTEP_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .env_remove("LOCKSTEP_FAILPOINT");
    Ok(cmd)
}

/// A coordinator in this process and agents as separate processes, which a test can SIGKILL
/// and restart (T01, T02, T05).
pub struct ProcCluster {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub agents: Vec<AgentInfo>,
    pub vhost: Vhost,
    pub coordinator: std::sync::Arc<lockstep_coordinator::service::Service>,
    program: AgentProgram,
    max_build: Duration,
    procs: Vec<Option<std::process::Child>>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProcCluster {
    /// Starts the coordinator and `opts.agents` agent processes.
    pub async fn start(
        name: &str,
        opts: ClusterOptions,
        program: AgentProgram,
    ) -> anyhow::Result<ProcCluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lockstep-{name}-"))
            .tempdir()
            .context("creating the test dir")?;
        let vhost = Vhost::create(name)?;
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(coord_dir.join("keys"))?;
        let agents = prepare_builders(dir.path(), &coord_dir, opts.agents, opts.threshold)?;
        let mut cfg = lockstep_coordinator::Config::for_data_dir(&coord_dir, &vhost.url());
        if let Some(limit) = opts.delivery_limit {
            cfg.delivery_limit = limit;
        }
        let server = lockstep_coordinator::Server::build(cfg).await?;
        let url = server.url();
        let coordinator = server.service.clone();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run(s).await {
                eprintln!("coordinator: {e:#}");
            }
        });
        let n = agents.len();
        let mut c = ProcCluster {
            url,
            dir,
            agents,
            vhost,
            coordinator,
            program,
            max_build: opts.max_build,
            procs: (0..n).map(|_| None).collect(),
            shutdown,
            task: Some(task),
        };
        for i in 0..n {
            c.start_agent(i, &[])?;
        }
        Ok(c)
    }

    /// The log file of agent `i` (all its runs, appended).
    pub fn agent_log(&self, i: usize) -> PathBuf {
        let name = &self.agents[i].name;
        // A second process of the same identity ([`ProcCluster::add_agent_process`]) logs apart.
        if self.agents[..i].iter().any(|a| &a.name == name) {
            return self.dir.path().join(format!("{name}.{i}.log"));
        }
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts agent `i` (index into `agents`) with extra environment variables.
    pub fn start_agent(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        anyhow::ensure!(self.procs[i].is_none(), "agent {i} is already running");
        let a = &self.agents[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log(i))?;
        let mut cmd = agent_command(
            &self.program,
            a,
            &self.url,
            &self.vhost.url(),
            self.max_build,
        )?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.procs[i] = Some(cmd.spawn().context("starting an agent process")?);
        Ok(())
    }

    /// Adds a second process for the builder identity of agent `like`: a new state dir holding
    /// a copy of its signing key (so it consumes the same queue). Returns its index; start it
    /// with [`ProcCluster::start_agent`].
    pub fn add_agent_process(&mut self, like: usize, state_dir: &Path) -> anyhow::Result<usize> {
        let mut info = self.agents[like].clone();
        std::fs::create_dir_all(state_dir)?;
        std::fs::copy(info.state_dir.join("key.asc"), state_dir.join("key.asc"))
            .context("copying the agent's key")?;
        info.state_dir = state_dir.to_path_buf();
        self.agents.push(info);
        self.procs.push(None);
        Ok(self.agents.len() - 1)
    }

    /// Agent `i`'s log (all its runs) without ANSI colour codes.
    pub fn agent_log_text(&self, i: usize) -> String {
        let raw = std::fs::read_to_string(self.agent_log(i)).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(ch);
            }
        }
        out
    }

    /// Lines of agent `i`'s log containing `needle`.
    pub fn count_in_agent_log(&self, i: usize, needle: &str) -> usize {
        self.agent_log_text(i)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// (job, builder fingerprint) → body digests of the attestation records stored for them.
    pub fn attestations(
        &self,
        source: &str,
        version: &str,
        arch: &str,
    ) -> std::collections::BTreeMap<(String, String), Vec<String>> {
        attestations_in(&self.coordinator.archive, source, version, arch)
    }

    /// SIGKILLs agent `i` (by its child handle) and reaps it. No-op if it is not running.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.procs[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether agent `i` is running; reaps it if it exited (e.g. at a failpoint).
    pub fn agent_running(&mut self, i: usize) -> bool {
        match self.procs[i].as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.procs[i] = None;
                false
            }
            None => false,
        }
    }

    /// Polls until every one of `sources` (one version each) is decided (not pending).
    pub async fn wait_all_decided(
        &self,
        sources: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Vec<StatusEntry>> {
        let started = Instant::now();
        loop {
            let mut rows = Vec::new();
            for s in sources {
                rows.extend(
                    self.coordinator
                        .status(Some(s))
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                );
            }
            if rows.len() == sources.len() && rows.iter().all(|r| r.state != State::Pending) {
                return Ok(rows);
            }
            if started.elapsed() > timeout {
                let pending: Vec<_> = rows
                    .iter()
                    .filter(|r| r.state == State::Pending)
                    .map(|r| r.source.clone())
                    .collect();
                bail!(
                    "still pending after {timeout:?}: {pending:?} ({} rows)",
                    rows.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
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

    /// Kills every agent process and stops the coordinator.
    pub async fn stop(mut self) {
        for i in 0..self.procs.len() {
            self.kill_agent(i);
        }
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill_agent(i);
        }
        self.shutdown.cancel();
    }
}

/// Uploads a `.dsc` and the files it lists (read next to it) and enqueues it through the
/// coordinator's HTTP API; returns the job ids.
pub async fn enqueue_dsc_http(url: &str, dsc: &Path) -> anyhow::Result<Vec<String>> {
    let dir = dsc.parent().context("the .dsc has a directory")?;
    let http = reqwest::Client::new();
    let dsc_bytes = std::fs::read(dsc)?;
    let names: Vec<String> = lockstep_proto::dsc::parse(&dsc_bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dsc.display()))?
        .files
        .into_iter()
        .map(|f| f.name)
        .collect();
    for n in names {
        let bytes = std::fs::read(dir.join(&n)).with_context(|| format!("reading {n}"))?;
        let digest = lockstep_proto::Sha256Digest::of(&bytes);
        let r = http
            .put(format!("{url}/api/v1/blobs/{digest}"))
            .body(bytes)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "uploading {n}: {}", r.status());
    }
    let digest = lockstep_proto::Sha256Digest::of(&dsc_bytes);
    let r = http
        .put(format!("{url}/api/v1/blobs/{digest}"))
        .body(dsc_bytes)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "uploading the .dsc: {}",
        r.status()
    );
    let r = http
        .post(format!("{url}/api/v1/jobs/dsc"))
        .json(&serde_json::json!({ "dsc_sha256": digest, "rebuild": false }))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "enqueue: {}", r.status());
    let v: serde_json::Value = r.json().await?;
    Ok(v["jobs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| j["job_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Environment variable that turns a re-executed test binary into a coordinator process
/// ([`run_coordinator_child`]).
pub const COORDINATOR_CHILD_ENV: &str = "LOCKSTEP_TEST_COORDINATOR_CHILD";

/// When [`COORDINATOR_CHILD_ENV`] is set, runs a real coordinator configured from `LOCKSTEP__*`
/// (exactly as `lockstep-coordinator run` does) until SIGTERM or SIGKILL, and returns `true`;
/// otherwise returns `false` at once. The coordinator built into a test binary has the
/// `failpoints` crash injection (see tests/Cargo.toml).
pub fn run_coordinator_child() -> bool {
    if std::env::var_os(COORDINATOR_CHILD_ENV).is_none() {
        return false;
    }
    run_as_child("coordinator child", |shutdown| async move {
        let cfg = lockstep_coordinator::RawConfig::load(None)?.resolve()?;
        lockstep_coordinator::Server::build(cfg)
            .await?
            .run(shutdown)
            .await
    });
    true
}

/// A free loopback port (bound then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How a [`CoordinatorProcess`] is started.
#[derive(Clone, Debug)]
pub enum CoordinatorProgram {
    /// The real `lockstep-coordinator` binary of the workspace.
    Binary,
    /// This test binary again, running only the named test, which calls
    /// [`run_coordinator_child`] (a coordinator with the `failpoints` crash injection).
    SelfExec(String),
}

/// A coordinator as a child process on a fixed loopback port, which a test can SIGKILL, crash
/// at a failpoint and restart on the same data dir (T03, T11).
pub struct CoordinatorProcess {
    pub child: std::process::Child,
    pub url: String,
    pub log: PathBuf,
}

impl CoordinatorProcess {
    /// Starts it; its output is appended to `log`. `env` adds variables (e.g. a failpoint).
    pub fn start(
        program: &CoordinatorProgram,
        data_dir: &Path,
        port: u16,
        amqp: &str,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<CoordinatorProcess> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("opening the coordinator log")?;
        let mut cmd = match program {
            CoordinatorProgram::Binary => {
                let mut c = Command::new(lockstep_bin("lockstep-coordinator"));
                c.arg("run");
                c
            }
            CoordinatorProgram::SelfExec(test) => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                    .env(COORDINATOR_CHILD_ENV, "1");
                c
            }
        };
        cmd.env("LOCKSTEP__DATA_DIR", data_dir)
            .env("LOCKSTEP__LISTEN", format!("127.0.0.1:{port}"))
            .env("LOCKSTEP__AMQP_URL", amqp)
            .env(
                "RUST_LOG",
                std::env::var("LOCKSTEP_TEST_COORDINATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("LOCKSTEP_FAILPOINT")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(CoordinatorProcess {
            child: cmd.spawn().context("starting the coordinator process")?,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        })
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Polls the health endpoint until it answers (bounded), failing if the process exits.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the coordinator exited at startup ({status}):\n{}",
                    self.log_tail()
                );
            }
            if let Ok(r) = http.get(format!("{}/api/v1/health", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                bail!(
                    "the coordinator did not become healthy within {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) for the process to end by itself, e.g. at a failpoint.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                bail!(
                    "the coordinator still runs after {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL (`Child::kill` is SIGKILL on Unix) and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean shutdown) and reap, SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if self.wait_exit(grace).await.is_err() {
            self.kill9();
        }
    }
}

/// (job, builder fingerprint) → body digests of every attestation record of (source, version,
/// arch) in `archive`. More than one digest under a key is a duplicate attestation (I2).
pub fn attestations_in(
    archive: &lockstep_archive::Archive,
    source: &str,
    version: &str,
    arch: &str,
) -> std::collections::BTreeMap<(String, String), Vec<String>> {
    let mut m: std::collections::BTreeMap<(String, String), Vec<String>> =
        std::collections::BTreeMap::new();
    for r in archive
        .records_for(source, version, arch, Some("attestation"))
        .expect("records")
    {
        m.entry((r.job_id.unwrap_or_default(), r.signer.unwrap_or_default()))
            .or_default()
            .push(r.body_sha256.to_hex());
    }
    m
}

/// Attestations in a map of [`attestations_in`], and how many of them are duplicates.
pub fn count_attestations(
    m: &std::collections::BTreeMap<(String, String), Vec<String>>,
) -> (usize, usize) {
    let total = m.values().map(Vec::len).sum();
    (total, total - m.len())
}

/// Stops (`stop_app`) or starts (`start_app`) the RabbitMQ application on the test node: every
/// connection drops, the node's data stays.
pub fn broker_app(action: &str) -> anyhow::Result<()> {
    rabbitmqctl_on(&rabbit_node(), &[action])
}

/// Starts the broker application again when dropped while `armed`, so a failed assertion during
/// an outage does not leave the shared node stopped for the tests after it.
pub struct StartBrokerAgain {
    pub armed: bool,
}

impl Drop for StartBrokerAgain {
    fn drop(&mut self) {
        if self.armed {
            let _ = broker_app("start_app");
        }
    }
}
