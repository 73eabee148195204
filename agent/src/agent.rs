//! Wiring of the agent: key, runtime, worker, consumer.

use std::sync::Arc;

use anyhow::Context;
use lockstep_proto::signing::SigningKey;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::Runtime;
use crate::worker::Worker;

pub struct Agent {
    pub worker: Arc<Worker>,
}

/// Loads the agent's key from its state dir, generating it (0600) on first start.
pub fn load_key(cfg: &Config) -> anyhow::Result<(SigningKey, bool)> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", cfg.state_dir.display()))?;
    }
    let uid = format!(
        "Lockstep builder {} <{}@lockstep.invalid>",
        cfg.name, cfg.name
    );
    SigningKey::load_or_generate(&cfg.key_path(), &uid)
        .with_context(|| format!("loading the signing key {}", cfg.key_path().display()))
}

impl Agent {
    /// Loads the key and connects to Docker (retrying with backoff until `shutdown`).
    pub async fn build(cfg: Config, shutdown: &CancellationToken) -> anyhow::Result<Option<Agent>> {
        let (key, created) = load_key(&cfg)?;
        if created {
            tracing::info!(fingerprint = %key.fingerprint(), "generated this agent's signing key");
        }
        std::fs::create_dir_all(cfg.work_root())
            .with_context(|| format!("creating {}", cfg.work_root().display()))?;
        let mut delay = std::time::Duration::from_millis(500);
        let mut runtime = loop {
            match Runtime::connect(cfg.runtime.clone()).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "Docker is not reachable; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(crate::config::MAX_BACKOFF);
                }
            }
        };
        // An earlier run killed mid-job (SIGKILL, crash) left its containers running or stopped
        // and its temporary images behind; nothing else would ever remove them.
        match runtime.remove_leftovers(&cfg.work_root()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(removed = n, "removed Docker leftovers of an earlier run"),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove Docker leftovers of an earlier run")
            }
        }
        // After the leftovers: no container of an earlier run still writes the lists it deletes.
        runtime
            .use_apt_lists_cache(&cfg.work_root().join("apt-lists"))
            .context("starting the apt lists cache")?;
        let worker = Worker::new(cfg, key, Arc::new(runtime))?;
        Ok(Some(Agent {
            worker: Arc::new(worker),
        }))
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        crate::consumer::run(self.worker, shutdown).await
    }
}
