//! Wiring of the coordinator: open the service, bind the listener, start the dispatcher, serve
//! until the shutdown future resolves, then drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::amqp::{spawn_dispatcher, DispatchSettings};
use crate::config::Config;
use crate::service::Service;

/// How long in-flight HTTP requests get to finish after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A coordinator ready to run.
pub struct Server {
    pub service: Arc<Service>,
    listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

impl Server {
    /// Opens the data dir and binds the listener (port 0 picks a free port).
    pub async fn build(cfg: Config) -> anyhow::Result<Server> {
        let listen = cfg.listen;
        let service = tokio::task::spawn_blocking(move || Service::open(cfg))
            .await
            .context("opening the coordinator")??;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        Ok(Server {
            service: Arc::new(service),
            listener,
            addr,
        })
    }

    /// The base URL clients use.
    pub fn url(&self) -> String {
        self.service
            .cfg
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.addr))
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let svc = self.service.clone();
        let builders_svc = svc.clone();
        let (dispatcher, dispatch_task) = spawn_dispatcher(
            DispatchSettings {
                amqp_urls: svc.cfg.amqp_urls.clone(),
                delivery_limit: svc.cfg.delivery_limit,
                builders: Arc::new(move || builders_svc.builder_fingerprints()),
            },
            svc.jobs.clone(),
            shutdown.clone(),
        );
        svc.set_dispatcher(dispatcher);
        // Regenerate the apt repository shortly after decisions, off the attestation path.
        let apt_svc = svc.clone();
        let apt_stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = apt_stop.cancelled() => return,
                    _ = apt_svc.aptrepo.stale_notified() => {}
                }
                tokio::time::sleep(crate::aptrepo::REGENERATE_DEBOUNCE).await;
                let s = apt_svc.clone();
                match tokio::task::spawn_blocking(move || s.refresh_apt()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %format!("{e:#}"), "could not regenerate the apt repository")
                    }
                    Err(e) => tracing::error!(error = %e, "apt repository task failed"),
                }
            }
        });
        let events_task = crate::events::spawn_listener(svc.clone(), shutdown.clone());
        let app = crate::api::router(svc.clone())
            .merge(crate::events::router(svc.clone()))
            .merge(crate::metrics::router(svc.clone()))
            .merge(crate::web::router(svc.clone()));
        let stop = shutdown.clone();
        let serve = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            stop.cancelled().await;
        });
        tracing::info!(addr = %self.addr, "serving HTTP");
        let server_task = tokio::spawn(async move { serve.await });
        shutdown.cancelled().await;
        tracing::info!("shutting down: draining HTTP requests");
        match tokio::time::timeout(SHUTDOWN_GRACE, server_task).await {
            Ok(r) => r.context("HTTP server task")?.context("HTTP server")?,
            Err(_) => tracing::warn!("HTTP requests did not finish within the grace period"),
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, dispatch_task).await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, events_task).await;
        Ok(())
    }
}
