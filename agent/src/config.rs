//! Agent configuration: raw file + `LOCKSTEP__…` environment, then a validated [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeConfig;

/// Default coordinator URL (the coordinator's default listen address).
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:8440";
/// Default AMQP broker.
pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Attempts to upload an attestation before the job is requeued: transient coordinator outages
/// of a minute are ridden out without rebuilding.
pub const UPLOAD_ATTEMPTS: u32 = 6;
/// Longest wait between reconnection attempts and upload retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a shutting-down agent waits for builds to reach a safe point before stopping them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Wait before an infrastructure failure is requeued, so a broken machine does not spin.
pub const REQUEUE_DELAY: Duration = Duration::from_secs(5);
/// Interval of heartbeats on the events exchange.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often the consumer reads its scratch space's free bytes, to stop taking jobs while it is
/// below `min_free_bytes` and take them again once there is room. A `statvfs` is cheap, and 2 s
/// is well inside [`REQUEUE_DELAY`]: a disk that filled during a build stops the consumer before
/// that job goes back to the queue.
pub const SCRATCH_POLL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Human name of this agent, shown in statements and status (default: `<hostname>`).
    pub name: Option<String>,
    /// State directory: signing key, scratch space. Never mounted into a container.
    pub state_dir: Option<PathBuf>,
    pub coordinator_url: Option<String>,
    pub amqp_url: Option<String>,
    /// AMQP URLs of the nodes of a RabbitMQ cluster (instead of `amqp_url`), all naming the same
    /// virtual host: the first reachable one is used, and a lost connection fails over to the next.
    pub amqp_urls: Option<Vec<String>>,
    /// Builds at once (also the AMQP prefetch).
    pub concurrency: Option<u16>,
    /// Build image tag and the recipe that makes it.
    pub image: Option<String>,
    pub image_recipe: Option<PathBuf>,
    pub build_uid: Option<u32>,
    pub memory_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
    pub max_build_secs: Option<u64>,
    pub stop_grace_secs: Option<u64>,
    pub log_cap_bytes: Option<usize>,
    pub tmpfs_size: Option<String>,
    pub deps_network: Option<String>,
    /// Free bytes the scratch space needs before a build starts (default 2 GiB).
    pub min_free_bytes: Option<u64>,
    /// Seconds the cached apt indices are reused before a refresh (default 900; 0 = off).
    pub apt_lists_max_age_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub state_dir: PathBuf,
    pub coordinator_url: String,
    /// Broker nodes in the order they are tried (one for a single broker).
    pub amqp_urls: Vec<String>,
    pub concurrency: u16,
    pub runtime: RuntimeConfig,
    pub shutdown_grace: Duration,
}

impl RawConfig {
    pub fn load(file: Option<&Path>) -> anyhow::Result<RawConfig> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).required(true));
        }
        b = b.add_source(
            config::Environment::with_prefix("LOCKSTEP")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("amqp_urls"),
        );
        b.build()
            .map_err(|e| anyhow::anyhow!("reading configuration: {e}"))?
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("configuration is not valid: {e}"))
    }

    pub fn resolve(self) -> anyhow::Result<Config> {
        let d = RuntimeConfig::default();
        let name = match self.name {
            Some(n) => n,
            None => std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "agent".into()),
        };
        if name.is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
            anyhow::bail!("name = {name:?}: 1–64 characters without spaces");
        }
        let coordinator_url = self
            .coordinator_url
            .unwrap_or_else(|| DEFAULT_COORDINATOR.into())
            .trim_end_matches('/')
            .to_string();
        if !coordinator_url.starts_with("http://") && !coordinator_url.starts_with("https://") {
            anyhow::bail!(
                "coordinator_url = {coordinator_url:?} must start with http:// or https://"
            );
        }
        let amqp_urls =
            lockstep_proto::broker::resolve_urls(self.amqp_url, self.amqp_urls, DEFAULT_AMQP)
                .map_err(anyhow::Error::msg)?;
        for u in &amqp_urls {
            // The AMQP client's own parser must accept it too.
            if let Err(e) = u.parse::<lapin::uri::AMQPUri>() {
                anyhow::bail!(
                    "amqp_url {:?} is not a valid AMQP URI: {e}",
                    lockstep_proto::broker::redact(u)
                );
            }
        }
        let concurrency = self.concurrency.unwrap_or(1);
        if concurrency == 0 {
            anyhow::bail!("concurrency must be at least 1");
        }
        let runtime = RuntimeConfig {
            image: self.image.unwrap_or(d.image),
            image_recipe: self.image_recipe.unwrap_or(d.image_recipe),
            build_uid: self.build_uid.unwrap_or(d.build_uid),
            memory_bytes: self.memory_bytes.unwrap_or(d.memory_bytes),
            pids_limit: self.pids_limit.unwrap_or(d.pids_limit),
            max_build_time: self
                .max_build_secs
                .map_or(d.max_build_time, Duration::from_secs),
            stop_grace: self
                .stop_grace_secs
                .map_or(d.stop_grace, Duration::from_secs),
            log_cap_bytes: self.log_cap_bytes.unwrap_or(d.log_cap_bytes),
            tmpfs_size: self.tmpfs_size.unwrap_or(d.tmpfs_size),
            deps_network: self.deps_network.unwrap_or(d.deps_network),
            min_free_bytes: self.min_free_bytes.unwrap_or(d.min_free_bytes),
            apt_lists_max_age: self
                .apt_lists_max_age_secs
                .map_or(d.apt_lists_max_age, Duration::from_secs),
        };
        if runtime.build_uid == 0 {
            anyhow::bail!("build_uid must not be 0: builds never run as root");
        }
        if runtime.max_build_time.is_zero() {
            anyhow::bail!("max_build_secs must be at least 1");
        }
        Ok(Config {
            name,
            state_dir: self
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/lockstep-agent")),
            coordinator_url,
            amqp_urls,
            concurrency,
            runtime,
            shutdown_grace: self
                .shutdown_grace_secs
                .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
        })
    }
}

impl Config {
    /// The config as printed by `check-config`: the AMQP passwords are redacted.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.amqp_urls = c
            .amqp_urls
            .iter()
            .map(|u| lockstep_proto::broker::redact(u))
            .collect();
        c
    }

    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("key.asc")
    }
    pub fn work_root(&self) -> PathBuf {
        self.state_dir.join("work")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let c = RawConfig {
            name: Some("a1".into()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.concurrency, 1);
        assert_eq!(c.coordinator_url, DEFAULT_COORDINATOR);
        let e = RawConfig {
            build_uid: Some(0),
            ..Default::default()
        }
        .resolve()
        .expect_err("root refused");
        assert!(e.to_string().contains("build_uid"));
    }

    #[test]
    fn one_broker_or_the_nodes_of_a_cluster() {
        let c = RawConfig {
            name: Some("a1".into()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.amqp_urls, vec![DEFAULT_AMQP]);
        let urls: Vec<String> = (5701..=5703)
            .map(|p| format!("amqp://u:secret@127.0.0.1:{p}/lockstep"))
            .collect();
        let c = RawConfig {
            name: Some("a1".into()),
            amqp_urls: Some(urls.clone()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.amqp_urls, urls);
        let shown = format!("{:?}", c.redacted());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("u:***@127.0.0.1:5702"), "{shown}");
        let e = RawConfig {
            name: Some("a1".into()),
            amqp_urls: Some(vec![urls[0].clone(), urls[0].clone()]),
            ..Default::default()
        }
        .resolve()
        .expect_err("the same node twice");
        assert!(e.to_string().contains("same node"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
