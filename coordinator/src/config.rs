//! Coordinator configuration: a raw serde struct read from a TOML file and `LOCKSTEP__…`
//! environment variables, then a pure [`RawConfig::resolve`] into a validated [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default HTTP listen address; also the CLI's default coordinator.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8440";
/// Default AMQP broker: the local RabbitMQ started by the project's scripts.
pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Largest blob accepted in one upload. Debian's largest binary packages are a few GiB.
pub const DEFAULT_MAX_BLOB: u64 = 8 * 1024 * 1024 * 1024;
/// How old the private apt indices may get before an enqueue refreshes them: the mirror moves a
/// few times a day, and an update costs seconds.
pub const DEFAULT_APT_REFRESH: Duration = Duration::from_secs(6 * 3600);
/// Delivery limit of builder queues: after this many redeliveries a job is dead-lettered
/// instead of looping (a poison job must not block a builder forever).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;
/// Delay between dispatch retries of jobs the broker did not confirm.
pub const DISPATCH_RETRY: Duration = Duration::from_secs(5);
/// Longest wait between reconnection attempts to the broker.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the file and environment say. Every field is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// HTTP listen address, e.g. `127.0.0.1:8440` (port 0 picks a free port).
    pub listen: Option<String>,
    /// URL under which clients reach this coordinator (used in log-info and apt lines).
    pub public_url: Option<String>,
    /// Where the archive, the job database and the coordinator's keys live.
    pub data_dir: Option<PathBuf>,
    /// AMQP URL of the broker.
    pub amqp_url: Option<String>,
    /// AMQP URLs of the nodes of a RabbitMQ cluster (instead of `amqp_url`), all naming the same
    /// virtual host: the first reachable one is used, and a lost connection fails over to the next.
    pub amqp_urls: Option<Vec<String>>,
    /// Policy file (trusted builders, thresholds). Default: `<data_dir>/policy.toml`.
    pub policy: Option<PathBuf>,
    /// Debian architecture of the builders (`dpkg --print-architecture` when unset).
    pub host_arch: Option<String>,
    /// System apt source files whose entries the private apt configuration copies with deb-src.
    /// Default: `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*`.
    pub apt_sources: Option<Vec<PathBuf>>,
    /// Seconds before the private apt indices are refreshed.
    pub apt_refresh_secs: Option<u64>,
    /// Largest accepted blob in bytes.
    pub max_blob_bytes: Option<u64>,
    /// Transparency log origin line.
    pub log_origin: Option<String>,
    /// Builder queue delivery limit before dead-lettering.
    pub delivery_limit: Option<u32>,
}

/// Validated configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    /// Broker nodes in the order they are tried (one for a single broker).
    pub amqp_urls: Vec<String>,
    pub policy: PathBuf,
    pub host_arch: Option<String>,
    pub apt_sources: Vec<PathBuf>,
    pub apt_refresh: Duration,
    pub max_blob_bytes: u64,
    pub log_origin: String,
    pub delivery_limit: u32,
}

impl RawConfig {
    /// Reads `file` (if given) and the `LOCKSTEP__` environment.
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
                .with_list_parse_key("apt_sources")
                .with_list_parse_key("amqp_urls"),
        );
        let raw = b
            .build()
            .map_err(|e| anyhow::anyhow!("reading configuration: {e}"))?
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("configuration is not valid: {e}"))?;
        Ok(raw)
    }

    /// Applies defaults and validates.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let listen_s = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|e| anyhow::anyhow!("listen = {listen_s:?} is not an address:port ({e})"))?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/lockstep-coordinator"));
        let policy = self.policy.unwrap_or_else(|| data_dir.join("policy.toml"));
        let amqp_urls =
            lockstep_proto::broker::resolve_urls(self.amqp_url, self.amqp_urls, DEFAULT_AMQP)
                .map_err(anyhow::Error::msg)?;
        for u in &amqp_urls {
            // The AMQP client's own parser must accept it too.
            if let Err(e) = u.parse::<lapin::uri::AMQPUri>() {
                anyhow::bail!("amqp_url {:?} is not a valid AMQP URI: {e}", redact_url(u));
            }
        }
        if let Some(u) = &self.public_url {
            if !u.starts_with("http://") && !u.starts_with("https://") {
                anyhow::bail!("public_url = {u:?} must start with http:// or https://");
            }
        }
        let apt_sources = self.apt_sources.unwrap_or_else(|| {
            let mut v = vec![PathBuf::from("/etc/apt/sources.list")];
            v.push(PathBuf::from("/etc/apt/sources.list.d"));
            v
        });
        let delivery_limit = self.delivery_limit.unwrap_or(DEFAULT_DELIVERY_LIMIT);
        if delivery_limit == 0 {
            anyhow::bail!("delivery_limit must be at least 1");
        }
        Ok(Config {
            listen,
            public_url: self.public_url.map(|u| u.trim_end_matches('/').to_string()),
            data_dir,
            amqp_urls,
            policy,
            host_arch: self.host_arch,
            apt_sources,
            apt_refresh: Duration::from_secs(
                self.apt_refresh_secs
                    .unwrap_or(DEFAULT_APT_REFRESH.as_secs()),
            ),
            max_blob_bytes: self.max_blob_bytes.unwrap_or(DEFAULT_MAX_BLOB),
            log_origin: self
                .log_origin
                .unwrap_or_else(|| "lockstep.local/log".into()),
            delivery_limit,
        })
    }
}

impl Config {
    /// A config for tests and embedding: everything under `data_dir`, listening on a free port.
    pub fn for_data_dir(data_dir: &Path, amqp_url: &str) -> Config {
        RawConfig {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.to_path_buf()),
            amqp_url: Some(amqp_url.into()),
            ..Default::default()
        }
        .resolve()
        .expect("defaults with a loopback listener are valid")
    }

    /// The config as printed by `check-config`: the AMQP passwords are redacted.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.amqp_urls = c.amqp_urls.iter().map(|u| redact_url(u)).collect();
        c
    }
}

/// Replaces the password of a URL with `***`.
pub fn redact_url(url: &str) -> String {
    lockstep_proto::broker::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let c = RawConfig::default().resolve().expect("valid");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.policy, c.data_dir.join("policy.toml"));
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let e = RawConfig {
            listen: Some("nope".into()),
            ..Default::default()
        }
        .resolve()
        .expect_err("refused");
        assert!(e.to_string().contains("listen"), "{e}");
        let e = RawConfig {
            amqp_url: Some("http://x".into()),
            ..Default::default()
        }
        .resolve()
        .expect_err("refused");
        assert!(e.to_string().contains("amqp_url"), "{e}");
    }

    #[test]
    fn a_cluster_is_a_list_of_urls_and_one_url_still_works() {
        let one = RawConfig {
            amqp_url: Some("amqp://u:p@broker:5672/lockstep".into()),
            ..Default::default()
        }
        .resolve()
        .expect("one URL");
        assert_eq!(one.amqp_urls, vec!["amqp://u:p@broker:5672/lockstep"]);
        let urls: Vec<String> = (1..=3)
            .map(|i| format!("amqp://u:secret@10.0.0.{i}:5672/lockstep"))
            .collect();
        let c = RawConfig {
            amqp_urls: Some(urls.clone()),
            ..Default::default()
        }
        .resolve()
        .expect("three nodes");
        assert_eq!(c.amqp_urls, urls);
        let shown = toml::to_string(&c.redacted()).expect("toml");
        assert!(
            shown.contains("amqp://u:***@10.0.0.2:5672/lockstep"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
        // The AMQP client connects to the host written in the URL (an IPv4 address included).
        let parsed: lapin::uri::AMQPUri = urls[1].parse().expect("lapin parses it");
        assert_eq!(parsed.authority.host, "10.0.0.2");
        assert_eq!(parsed.vhost, "lockstep");
        // Why IPv6 literals are refused: the client's parser would go to localhost instead.
        let v6: lapin::uri::AMQPUri = "amqp://u:p@[fd00::1]:5672/x".parse().expect("parses");
        assert_eq!(v6.authority.host, "localhost");
        let e = RawConfig {
            amqp_url: Some("amqp://u:p@[fd00::1]:5672/x".into()),
            ..Default::default()
        }
        .resolve()
        .expect_err("IPv6 literal");
        assert!(e.to_string().contains("IPv6"), "{e}");
        let e = RawConfig {
            amqp_url: Some(urls[0].clone()),
            amqp_urls: Some(urls),
            ..Default::default()
        }
        .resolve()
        .expect_err("both keys");
        assert!(e.to_string().contains("not both"), "{e}");
        let e = RawConfig {
            amqp_urls: Some(vec![
                "amqp://u:secret@a:5672/lockstep".into(),
                "amqp://u:secret@b:5672/other".into(),
            ]),
            ..Default::default()
        }
        .resolve()
        .expect_err("two vhosts");
        assert!(e.to_string().contains("amqp_urls[1]"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn password_is_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }
}
