//! The agent's apt lists cache: apt's package indices (`/var/lib/apt/lists`), downloaded by one
//! short `apt-get update` container and mounted read-only into the deps container of every job
//! that starts while they are younger than `apt_lists_max_age`, instead of an `apt-get update`
//! per job.
//!
//! Each refresh writes a new generation directory (`<root>/<n>`) and never touches an older
//! one: a generation is immutable from the moment a job may see it. Jobs hold an [`Arc`] of the
//! generation they mount for the whole deps step; a generation's directory is deleted when the
//! last holder — the cache itself, until a newer generation replaces it, or a job still using it —
//! lets go. Refreshes are serialised: jobs that find the lists stale wait for one refresh and
//! then all use its result.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_proto::v1::ImageRef;
use tokio_util::sync::CancellationToken;

use super::lifecycle::{ContainerRole, Exit};
use super::logs::CappedLog;
use super::{spec, tail_text, Runtime, RuntimeError, ERROR_LOG_TAIL};

/// Bytes of a refresh's output kept for the error message when it fails.
const REFRESH_LOG_CAP: usize = 64 << 10;

/// The cache's directory and its current generation.
pub(crate) struct AptListsCache {
    root: PathBuf,
    max_age: Duration,
    /// Held across a refresh: that is what serialises refreshes.
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<Arc<Generation>>,
    /// Name of the last generation directory made.
    last: u64,
}

/// One refresh's indices, in their own directory, never modified after the refresh.
pub(crate) struct Generation {
    dir: PathBuf,
    /// When the refresh started (the indices are at least this old).
    refreshed: Instant,
    /// Layer digest of the image whose apt sources the indices are for.
    image_digest: String,
}

impl Generation {
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
    pub(crate) fn age(&self) -> Duration {
        self.refreshed.elapsed()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        // The last user is usually a job's async task: ~80 MB of lists are deleted on a blocking
        // thread, not on the runtime's worker.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || delete_generation(&dir))),
            Err(_) => delete_generation(&dir),
        }
    }
}

fn delete_generation(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::debug!(dir = %dir.display(), "deleted an old apt lists generation"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            dir = %dir.display(),
            error = %e,
            "could not delete an old apt lists generation; leaving it"
        ),
    }
}

impl AptListsCache {
    /// Starts the cache in `root`: whatever an earlier run left there is deleted (if it cannot
    /// be, it is logged and left; new generations take unused names). `None` when `max_age` is
    /// zero (the cache is off), after the same clean-up.
    pub(crate) fn open(root: &Path, max_age: Duration) -> Result<Option<Self>, RuntimeError> {
        let infra = |what: &str, e: std::io::Error| {
            RuntimeError::Infrastructure(format!("{what} {}: {e}", root.display()))
        };
        match std::fs::remove_dir_all(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                dir = %root.display(),
                error = %e,
                "could not delete the apt lists an earlier run left; leaving them"
            ),
        }
        if max_age.is_zero() {
            return Ok(None);
        }
        std::fs::create_dir_all(root).map_err(|e| infra("creating", e))?;
        let root = std::fs::canonicalize(root).map_err(|e| infra("resolving", e))?;
        Ok(Some(AptListsCache {
            root,
            max_age,
            state: tokio::sync::Mutex::new(State::default()),
        }))
    }

    /// A new, empty generation directory, readable by everyone (the deps container's root).
    fn new_generation(
        &self,
        state: &mut State,
        image: &ImageRef,
    ) -> Result<Generation, RuntimeError> {
        let dir = loop {
            state.last += 1;
            let dir = self.root.join(state.last.to_string());
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(RuntimeError::Infrastructure(format!(
                        "creating {}: {e}",
                        dir.display()
                    )))
                }
            }
        };
        // From here on, dropping the generation deletes the directory.
        let generation = Generation {
            dir,
            refreshed: Instant::now(),
            image_digest: image.digest.clone(),
        };
        std::fs::set_permissions(&generation.dir, std::fs::Permissions::from_mode(0o755)).map_err(
            |e| RuntimeError::Infrastructure(format!("chmod {}: {e}", generation.dir.display())),
        )?;
        Ok(generation)
    }
}

impl Runtime {
    /// Keeps apt's package indices under `root` (the agent's work root's `apt-lists`), reused
    /// for `apt_lists_max_age`. Deletes whatever an earlier run left there, so call it after
    /// [`Runtime::remove_leftovers`] and before the first build. Without this call, or with
    /// `apt_lists_max_age` zero, every deps container runs `apt-get update` itself.
    pub fn use_apt_lists_cache(&mut self, root: &Path) -> Result<(), RuntimeError> {
        self.apt_lists = AptListsCache::open(root, self.cfg.apt_lists_max_age)?;
        Ok(())
    }

    /// Refreshes the apt lists cache now if it is on and stale (for the configured image), so
    /// the next job does not wait for it.
    pub async fn warm_apt_lists(&self) -> Result<(), RuntimeError> {
        let image = self.ensure_image().await?;
        self.apt_lists(&image, &CancellationToken::new())
            .await
            .map(drop)
    }

    /// The generation of the cache a job's deps step mounts: the current one if younger than
    /// `apt_lists_max_age` and made for `image`, else a new one refreshed now (one refresh at a
    /// time; jobs arriving meanwhile wait for it). `None` when the cache is off. Hold the result
    /// as long as a container may read the directory.
    pub(crate) async fn apt_lists(
        &self,
        image: &ImageRef,
        cancel: &CancellationToken,
    ) -> Result<Option<Arc<Generation>>, RuntimeError> {
        let Some(cache) = &self.apt_lists else {
            return Ok(None);
        };
        let mut state = tokio::select! {
            s = cache.state.lock() => s,
            _ = cancel.cancelled() => return Err(RuntimeError::Cancelled),
        };
        if let Some(g) = &state.current {
            if g.image_digest == image.digest && g.age() < cache.max_age {
                return Ok(Some(g.clone()));
            }
        }
        let generation = cache.new_generation(&mut state, image)?;
        let started = Instant::now();
        self.refresh(&generation, image, cancel).await?;
        tracing::info!(
            dir = %generation.dir.display(),
            secs = started.elapsed().as_secs_f64(),
            "refreshed the apt lists cache"
        );
        let generation = Arc::new(generation);
        // The previous generation goes once the last job using it lets go.
        state.current = Some(generation.clone());
        Ok(Some(generation))
    }

    /// Runs `apt-get update` into `generation`'s directory in a container with the deps step's
    /// isolation. Any failure is an infrastructure error (a mirror, network or disk problem).
    async fn refresh(
        &self,
        generation: &Generation,
        image: &ImageRef,
        cancel: &CancellationToken,
    ) -> Result<(), RuntimeError> {
        let meta = std::fs::metadata(&generation.dir).map_err(|e| {
            RuntimeError::Infrastructure(format!("reading {}: {e}", generation.dir.display()))
        })?;
        // The agent's own ids (it just made the directory): the indices are handed to it.
        let owner = format!("{}:{}", meta.uid(), meta.gid());
        let body = spec::apt_lists_container(&self.cfg, &image.name, &generation.dir, &owner);
        let mut log = CappedLog::new(REFRESH_LOG_CAP);
        let result = self
            .run_one_off(
                spec::APT_LISTS_JOB,
                ContainerRole::AptLists,
                body,
                &mut log,
                cancel,
            )
            .await;
        match result? {
            Exit::Code(0) => Ok(()),
            Exit::Code(code) => Err(RuntimeError::Infrastructure(format!(
                "apt-get update failed (exit {code}) refreshing the apt lists cache: {}",
                tail_text(&log.finish(), ERROR_LOG_TAIL)
            ))),
            Exit::TimedOut => Err(RuntimeError::Infrastructure(
                "apt-get update timed out refreshing the apt lists cache".to_owned(),
            )),
            Exit::Cancelled => Err(RuntimeError::Cancelled),
        }
    }
}
