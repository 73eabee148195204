//! The hardened build runtime: the build image and the two Docker containers of every job.
//!
//! A job runs in two steps, each in its own container created through bollard with an explicit
//! host configuration:
//!
//! 1. **deps** — from the pinned build image, as root with only the capabilities apt and dpkg
//!    need, on the `deps_network`: `apt-get build-dep` of the job's `.dsc` from the image's apt
//!    sources (the host's), with the package indices of the agent's apt lists cache mounted
//!    read-only (refreshed by one `apt-get update` container when older than
//!    `apt_lists_max_age`), or, with the cache off, after its own `apt-get update`. The container
//!    then archives what the install changed, and the agent loads that as a layer on top of the
//!    build image: a temporary per-job image (the `layer` module; `docker commit` if that fails).
//! 2. **build** — from that image, as the build user (uid 1000), with network `none`, a read-only
//!    root, no capabilities, `no-new-privileges`, pids/memory limits and only the job's build
//!    directory mounted: `dpkg-source -x` and `dpkg-buildpackage` the way Debian's build daemons
//!    do (the `spec` module has the exact recipe).
//!
//! Outputs are then collected and hashed on the host, refusing anything a hostile build could
//! use to make the agent read other files. Containers and the temporary image are always removed.
//!
//! Layout:
//! - `config`: [`RuntimeConfig`] and its defaults.
//! - `spec`: container specifications, build scripts and the recorded [`Recipe`] (pure).
//! - `lifecycle`: create/run/stop/kill/remove, output streaming, audit records.
//! - `logs`: the capped build log.
//! - `collect`: host-side validation and hashing of outputs.
//! - `aptlists`: the agent's apt lists cache.
//! - `layer`: the deps step's changes loaded as an image layer, the image listings it needs.

mod aptlists;
mod collect;
mod config;
mod layer;
mod lifecycle;
mod logs;
mod spec;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use lockstep_proto::v1::{BuildKind, ImageRef, Recipe};
use lockstep_proto::Sha256Digest;
use tokio_util::sync::CancellationToken;

pub use config::{RuntimeConfig, DEFAULT_IMAGE};
pub use lifecycle::{ContainerAudit, ContainerRole};
pub use spec::upstream_version;

use lifecycle::{docker_error, run_to_exit, Exit, JobResources, Tracker};
use logs::CappedLog;

/// Timeout of a single Docker API request (until response headers). Long enough for committing
/// a container with a few GiB of build dependencies on a slow disk; waiting for a container's
/// exit is not bounded by it.
const DOCKER_API_TIMEOUT: Duration = Duration::from_secs(600);

/// How much of the log's end an infrastructure error message quotes.
const ERROR_LOG_TAIL: usize = 2048;

/// The build runtime: one Docker connection and the settings every build uses.
pub struct Runtime {
    docker: Docker,
    cfg: RuntimeConfig,
    tracker: Tracker,
    /// Serialises image builds: two jobs finding the image missing must not both run the recipe.
    image_lock: tokio::sync::Mutex<()>,
    /// The apt lists cache, once the agent named its directory and unless it is off.
    apt_lists: Option<aptlists::AptListsCache>,
    /// Listings of build images by layer digest (`layer`), made once each; held across a
    /// listing, so one is made at a time.
    listings:
        tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<layer::BaseListing>>>,
}

/// One build job, as the agent's main loop hands it over.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// Job id from the coordinator (labels the containers).
    pub job_id: String,
    /// Source package name.
    pub source: String,
    /// Source package version (with epoch and revision, as in the `.dsc`).
    pub version: String,
    /// Arch-dependent (`-B`) or arch-independent (`-A`) build.
    pub kind: BuildKind,
    /// File name of the `.dsc` inside `source_dir`.
    pub dsc_name: String,
    /// Directory holding the `.dsc` and every file it lists, already verified by the caller.
    pub source_dir: PathBuf,
    /// An empty host directory the runtime may use; the caller deletes it afterwards.
    pub work_dir: PathBuf,
    /// The image the job must be built in; its layer digest is checked before building.
    pub image: ImageRef,
}

/// How a build ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildStatus {
    /// `dpkg-buildpackage` exited 0 and produced binary packages.
    Succeeded,
    /// The deps or build step failed (or built nothing).
    Failed {
        /// Exit code of the failing step (0 if it exited 0 but produced no binary packages).
        exit_code: i64,
        /// Which step failed, in words.
        reason: String,
    },
    /// A step ran longer than `max_build_time` and was stopped.
    TimedOut,
}

/// A file the build produced, hashed on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// File name (validated: no `/`, no leading dot).
    pub name: String,
    /// Where it is on the host (inside the request's `work_dir`).
    pub path: PathBuf,
    /// SHA-256 of its content.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
}

/// Everything a finished build yields.
#[derive(Clone, Debug)]
pub struct BuildOutcome {
    /// Success, failure or timeout.
    pub status: BuildStatus,
    /// `.deb`, `.udeb` and `.ddeb` files, sorted by name (empty unless `Succeeded`).
    pub artifacts: Vec<OutputFile>,
    /// The `.buildinfo` dpkg-buildpackage wrote.
    pub buildinfo: Option<OutputFile>,
    /// The `.changes` dpkg-buildpackage wrote.
    pub changes: Option<OutputFile>,
    /// Output of both steps plus `[lockstep]` notes, at most `log_cap_bytes`: head and tail
    /// kept, a `[log truncated: N bytes omitted]` line where the middle was dropped.
    pub log: Vec<u8>,
    /// How the build was made.
    pub recipe: Recipe,
    /// Wall time per phase: `deps` (including the commit), `build`, `collect`.
    pub timings: Vec<(String, Duration)>,
}

/// Why the runtime could not produce a [`BuildOutcome`]. Builds that ran and failed or timed out
/// are outcomes, not errors.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The Docker engine cannot be reached. Retryable once Docker is back.
    #[error(
        "Docker engine unreachable: {0} (is the Docker engine running? is the agent in the docker group?)"
    )]
    DockerUnavailable(String),
    /// The build image is missing, could not be built, or is not the one the job asks for.
    #[error("build image unavailable: {0}")]
    ImageMissing(String),
    /// Docker, disk or mirror trouble: retryable, says nothing about the package.
    #[error("infrastructure failure: {0}")]
    Infrastructure(String),
    /// The build left hostile or malformed outputs (symlink, hard link, device, odd name).
    #[error("build produced hostile or malformed output: {0}")]
    BadOutput(String),
    /// The request's names are unusable (they would escape paths or command lines).
    #[error("invalid build request: {0}")]
    InvalidRequest(String),
    /// The cancellation token fired; containers were stopped and removed.
    #[error("build cancelled")]
    Cancelled,
}

impl RuntimeError {
    /// Whether the same job may succeed if tried again later (requeue rather than fail it).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::DockerUnavailable(_) | Self::Infrastructure(_) | Self::Cancelled
        )
    }
}

/// Host directories of one job.
struct JobDirs {
    /// `work_dir/build`, mounted at `/build`.
    build: PathBuf,
    /// `work_dir/build/reproducible-path`: sources in, outputs out.
    output: PathBuf,
    /// `work_dir/layer`, where the deps container exports its changes.
    layer: PathBuf,
    /// `work_dir/listing`, where the listing container writes, if this job runs it.
    listing: PathBuf,
}

impl Runtime {
    /// Connects to the local Docker engine (`DOCKER_HOST` or the default socket) and checks it
    /// answers.
    pub async fn connect(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let unavailable =
            |e: bollard::errors::Error| RuntimeError::DockerUnavailable(e.to_string());
        let docker = Docker::connect_with_local_defaults()
            .map_err(unavailable)?
            .with_timeout(DOCKER_API_TIMEOUT);
        // The engine may speak an older API than bollard's default (Debian 12: 1.41).
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        Ok(Runtime {
            docker,
            cfg,
            tracker: Tracker::default(),
            image_lock: tokio::sync::Mutex::new(()),
            apt_lists: None,
            listings: tokio::sync::Mutex::default(),
        })
    }

    /// The settings this runtime was made with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The Docker connection (for audits and tests).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure the image exists (runs the recipe script when missing) and returns its name
    /// and root filesystem layer digest.
    pub async fn ensure_image(&self) -> Result<ImageRef, RuntimeError> {
        let _guard = self.image_lock.lock().await;
        if let Some(digest) = self.layer_digest(&self.cfg.image).await? {
            return Ok(ImageRef {
                name: self.cfg.image.clone(),
                digest,
            });
        }
        let recipe = &self.cfg.image_recipe;
        tracing::info!(image = %self.cfg.image, recipe = %recipe.display(), "building the build image");
        let output = tokio::process::Command::new(recipe)
            .arg("--tag")
            .arg(&self.cfg.image)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                RuntimeError::ImageMissing(format!(
                    "{} is missing and running {} failed: {e}",
                    self.cfg.image,
                    recipe.display()
                ))
            })?;
        if !output.status.success() {
            return Err(RuntimeError::ImageMissing(format!(
                "{} failed ({}); it needs root and mmdebstrap: {}",
                recipe.display(),
                output.status,
                tail_text(&output.stderr, ERROR_LOG_TAIL)
            )));
        }
        let digest = self.layer_digest(&self.cfg.image).await?.ok_or_else(|| {
            RuntimeError::ImageMissing(format!(
                "{} succeeded but {} does not exist",
                recipe.display(),
                self.cfg.image
            ))
        })?;
        Ok(ImageRef {
            name: self.cfg.image.clone(),
            digest,
        })
    }

    /// The root filesystem layer digest of `image`, or `None` if there is no such image.
    async fn layer_digest(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let inspect = match self.docker.inspect_image(image).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(docker_error("inspecting image", e)),
        };
        let layers = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
        match layers.as_slice() {
            [only] => Ok(Some(only.clone())),
            _ => Err(RuntimeError::ImageMissing(format!(
                "{image} has {} layers; a build image from containers/build-image has exactly one",
                layers.len()
            ))),
        }
    }

    /// Ids of every container this runtime created and has not removed yet.
    pub fn live_containers(&self) -> Vec<String> {
        self.tracker.live()
    }

    /// Removes what an earlier run of this agent left in Docker when it died mid-job (SIGKILL,
    /// crash, power loss): job containers with a mount under `work_root` and temporary
    /// dependency images labelled with a directory under it. `work_root` is this agent's own
    /// scratch space, so other agents sharing the Docker engine keep their running jobs. Call it
    /// before consuming jobs. Returns the number of containers and images removed.
    pub async fn remove_leftovers(&self, work_root: &Path) -> Result<usize, RuntimeError> {
        use bollard::query_parameters::{ListContainersOptions, ListImagesOptions};
        let root = std::fs::canonicalize(work_root).unwrap_or_else(|_| work_root.to_path_buf());
        let mine = |p: &str| Path::new(p).starts_with(&root);
        let filters = std::collections::HashMap::from([(
            "label".to_owned(),
            vec![spec::LABEL_JOB.to_owned()],
        )]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_error("listing containers", e))?;
        let containers: Vec<String> = containers
            .into_iter()
            .filter(|c| {
                c.mounts
                    .iter()
                    .flatten()
                    .any(|m| m.source.as_deref().is_some_and(mine))
            })
            .filter_map(|c| c.id)
            .collect();
        let images = self
            .docker
            .list_images(Some(ListImagesOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_error("listing images", e))?;
        let images: Vec<String> = images
            .into_iter()
            .filter(|i| i.labels.get(spec::LABEL_WORKDIR).is_some_and(|d| mine(d)))
            .map(|i| i.id)
            .collect();
        let n = containers.len() + images.len();
        if n > 0 {
            tracing::warn!(
                ?containers,
                ?images,
                "removing containers and images an earlier run of this agent left behind"
            );
            lifecycle::remove_all(&self.docker, &self.tracker, &containers, &images).await?;
        }
        Ok(n)
    }

    /// The inspection of every container this runtime created, recorded right after creation
    /// (the most recent 64), for audits of the isolation actually applied.
    pub fn container_audits(&self) -> Vec<ContainerAudit> {
        self.tracker.audits()
    }

    /// Builds one job. `source_dir` holds the `.dsc` and every source file (already verified by
    /// the caller). `work_dir` is an empty host dir the runtime may use (it will be deleted by
    /// the caller).
    pub async fn build(
        &self,
        req: &BuildRequest,
        cancel: CancellationToken,
    ) -> Result<BuildOutcome, RuntimeError> {
        let names = spec::job_names(req)?;
        match self.layer_digest(&req.image.name).await? {
            Some(d) if d == req.image.digest => {}
            Some(d) => {
                return Err(RuntimeError::ImageMissing(format!(
                    "{} has layer {d}, the job asks for {}",
                    req.image.name, req.image.digest
                )))
            }
            None => {
                return Err(RuntimeError::ImageMissing(format!(
                    "no image {}",
                    req.image.name
                )))
            }
        }
        let mut resources =
            JobResources::new(self.docker.clone(), self.tracker.clone(), &req.job_id);
        let result = self.run_job(req, &names, &cancel, &mut resources).await;
        if let Err(e) = resources.release().await {
            tracing::warn!(job = %req.job_id, error = %e, "removing the job's containers");
        }
        result
    }

    async fn run_job(
        &self,
        req: &BuildRequest,
        names: &spec::JobNames,
        cancel: &CancellationToken,
        resources: &mut JobResources,
    ) -> Result<BuildOutcome, RuntimeError> {
        let cfg = &self.cfg;
        let mut log = CappedLog::new(cfg.log_cap_bytes);
        let mut timings = Vec::new();
        let outcome = |status, log: CappedLog, timings| BuildOutcome {
            status,
            artifacts: Vec::new(),
            buildinfo: None,
            changes: None,
            log: log.finish(),
            recipe: spec::recipe(req, names, cfg),
            timings,
        };

        self.check_scratch(req, "before the build")?;
        let dirs = {
            let (req, uid) = (req.clone(), cfg.build_uid);
            tokio::task::spawn_blocking(move || prepare_dirs(&req, uid))
                .await
                .map_err(|e| {
                    RuntimeError::Infrastructure(format!("preparing directories: {e}"))
                })??
        };

        // Step 1: build dependencies.
        let started = Instant::now();
        // Held until the deps container has exited (and, when it succeeded, been removed): its
        // generation of the cache is not deleted before.
        let apt_lists = self.apt_lists(&req.image, cancel).await?;
        if let Some(g) = &apt_lists {
            log.note(&format!(
                "deps: package indices from the agent's apt lists cache ({} s old), read-only",
                g.age().as_secs()
            ));
        }
        log.note(&format!(
            "deps: apt-get build-dep {} on network {:?}",
            req.dsc_name, cfg.deps_network
        ));
        let body = spec::deps_container(
            cfg,
            req,
            &req.image.name,
            &dirs.output,
            &dirs.layer,
            apt_lists.as_deref().map(aptlists::Generation::dir),
        );
        let deps = resources.create(ContainerRole::Deps, body).await?;
        // The image's listing (made once per image) is needed only afterwards: it is made while
        // apt installs.
        let (exit, listing) = tokio::join!(
            run_to_exit(
                &self.docker,
                &deps,
                cfg.max_build_time,
                cfg.stop_grace,
                cancel,
                &mut log,
            ),
            self.base_listing(&req.image, &req.job_id, &dirs.listing, cancel),
        );
        let exit = exit?;
        log.note(&format!("deps: {exit:?}"));
        let mut satisfied = false;
        match exit {
            Exit::Code(0) => {}
            Exit::Code(spec::DEPS_EXIT_SATISFIED) => satisfied = true,
            Exit::Code(spec::DEPS_EXIT_TEMPFAIL) => {
                return Err(RuntimeError::Infrastructure(format!(
                    "apt-get update failed in the deps step: {}",
                    tail_text(&log.finish(), ERROR_LOG_TAIL)
                )))
            }
            Exit::Code(code) => {
                self.check_scratch(req, "when the deps step failed")?;
                timings.push(("deps".to_owned(), started.elapsed()));
                let status = BuildStatus::Failed {
                    exit_code: code,
                    reason: "build dependencies could not be installed".to_owned(),
                };
                return Ok(outcome(status, log, timings));
            }
            Exit::TimedOut => {
                timings.push(("deps".to_owned(), started.elapsed()));
                return Ok(outcome(BuildStatus::TimedOut, log, timings));
            }
            Exit::Cancelled => return Err(RuntimeError::Cancelled),
        }
        // Nothing installed: the build runs in the verified image itself, no layer needed.
        let deps_image = if satisfied {
            req.image.name.clone()
        } else {
            let load_started = Instant::now();
            let loaded = match listing {
                Ok(listing) => {
                    let mut labels = spec::deps_labels(&req.job_id);
                    labels.insert(
                        spec::LABEL_WORKDIR.to_owned(),
                        dirs.build.to_string_lossy().into_owned(),
                    );
                    self.load_layer(&req.image, &dirs.layer, listing, labels)
                        .await
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(loaded) => {
                    resources.adopt_image(&loaded.image_id);
                    log.note(&format!(
                        "deps: loaded the installed dependencies as a layer of {} bytes \
                         ({} deleted paths) in {:.1} s",
                        loaded.bytes,
                        loaded.whiteouts,
                        load_started.elapsed().as_secs_f64()
                    ));
                    loaded.image_id
                }
                Err(RuntimeError::Cancelled) => return Err(RuntimeError::Cancelled),
                Err(e) => {
                    tracing::warn!(
                        job = %req.job_id,
                        error = %e,
                        "could not load the dependency layer; committing the container instead"
                    );
                    log.note(&format!("deps: {e}; committing the container instead"));
                    resources.commit(&deps, &dirs.build).await?
                }
            }
        };
        resources.remove_container(&deps).await?;
        drop(apt_lists);
        timings.push(("deps".to_owned(), started.elapsed()));

        // Step 2: the build.
        let started = Instant::now();
        log.note(&format!(
            "build: dpkg-buildpackage {} in {}",
            req.kind.dpkg_flag(),
            names.build_path
        ));
        let body = spec::build_container(cfg, req, names, &deps_image, &dirs.build);
        let build = resources.create(ContainerRole::Build, body).await?;
        let exit = run_to_exit(
            &self.docker,
            &build,
            cfg.max_build_time,
            cfg.stop_grace,
            cancel,
            &mut log,
        )
        .await?;
        log.note(&format!("build: {exit:?}"));
        // Nothing of the build may still run while its outputs are read.
        resources.remove_container(&build).await?;
        timings.push(("build".to_owned(), started.elapsed()));
        if exit != Exit::Code(0) {
            self.check_scratch(req, "when the build ended")?;
        }
        match exit {
            Exit::Code(0) => {}
            Exit::Code(code) => {
                let status = BuildStatus::Failed {
                    exit_code: code,
                    reason: "dpkg-buildpackage failed".to_owned(),
                };
                return Ok(outcome(status, log, timings));
            }
            Exit::TimedOut => return Ok(outcome(BuildStatus::TimedOut, log, timings)),
            Exit::Cancelled => return Err(RuntimeError::Cancelled),
        }

        // Step 3: collect and hash on the host.
        let started = Instant::now();
        let out_dir = dirs.output.clone();
        let collected = tokio::task::spawn_blocking(move || collect::collect_outputs(&out_dir))
            .await
            .map_err(|e| RuntimeError::Infrastructure(format!("collecting outputs: {e}")))??;
        timings.push(("collect".to_owned(), started.elapsed()));
        if collected.artifacts.is_empty() {
            let status = BuildStatus::Failed {
                exit_code: 0,
                reason: "the build produced no binary packages".to_owned(),
            };
            return Ok(outcome(status, log, timings));
        }
        let mut done = outcome(BuildStatus::Succeeded, log, timings);
        done.artifacts = collected.artifacts;
        done.buildinfo = collected.buildinfo;
        done.changes = collected.changes;
        Ok(done)
    }
}

impl Runtime {
    /// Creates a container of `role` for `job_id` from `body`, runs it to its exit (following
    /// its output into `log`) and removes it, whatever happened.
    pub(crate) async fn run_one_off(
        &self,
        job_id: &str,
        role: ContainerRole,
        body: bollard::models::ContainerCreateBody,
        log: &mut CappedLog,
        cancel: &CancellationToken,
    ) -> Result<Exit, RuntimeError> {
        let mut resources = JobResources::new(self.docker.clone(), self.tracker.clone(), job_id);
        let result = async {
            let id = resources.create(role, body).await?;
            let exit = run_to_exit(
                &self.docker,
                &id,
                self.cfg.max_build_time,
                self.cfg.stop_grace,
                cancel,
                log,
            )
            .await?;
            resources.remove_container(&id).await?;
            Ok::<_, RuntimeError>(exit)
        }
        .await;
        if let Err(e) = resources.release().await {
            tracing::warn!(job = %job_id, ?role, error = %e, "removing a one-off container");
        }
        result
    }

    /// Refuses to go on (an infrastructure error: requeued, nothing uploaded) when the
    /// filesystem of the job's work dir has less than `min_free_bytes` free.
    fn check_scratch(&self, req: &BuildRequest, when: &str) -> Result<(), RuntimeError> {
        let free = free_bytes(&req.work_dir).map_err(|e| {
            RuntimeError::Infrastructure(format!(
                "reading free space of {}: {e}",
                req.work_dir.display()
            ))
        })?;
        if free < self.cfg.min_free_bytes {
            return Err(RuntimeError::Infrastructure(format!(
                "scratch space full {when}: {} has {free} bytes free, below min_free_bytes = {}; \
                 free disk space there or move the agent's state_dir",
                req.work_dir.display(),
                self.cfg.min_free_bytes
            )));
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Creates `work_dir/build/reproducible-path`, owned by the build user, and copies the source
/// files into it (as sbuild does: the `.dsc` sits next to the unpacked tree). `work_dir/build`
/// stays owned by the agent so the build cannot replace `reproducible-path` itself.
fn prepare_dirs(req: &BuildRequest, build_uid: u32) -> Result<JobDirs, RuntimeError> {
    let infra =
        |what: String, e: std::io::Error| RuntimeError::Infrastructure(format!("{what}: {e}"));
    let work_dir = std::fs::canonicalize(&req.work_dir)
        .map_err(|e| infra(format!("work dir {}", req.work_dir.display()), e))?;
    let build = work_dir.join("build");
    let output = build.join("reproducible-path");
    let layer = work_dir.join("layer");
    let listing = work_dir.join("listing");
    for dir in [&build, &output, &layer, &listing] {
        std::fs::create_dir(dir).map_err(|e| infra(format!("creating {}", dir.display()), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| infra(format!("chmod {}", dir.display()), e))?;
    }
    let dsc = req.source_dir.join(&req.dsc_name);
    if !std::fs::symlink_metadata(&dsc).is_ok_and(|m| m.is_file()) {
        return Err(RuntimeError::InvalidRequest(format!(
            "{} is not a regular file",
            dsc.display()
        )));
    }
    let entries = std::fs::read_dir(&req.source_dir)
        .map_err(|e| infra(format!("reading {}", req.source_dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| infra(format!("reading {}", req.source_dir.display()), e))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file {
            continue;
        }
        let target = output.join(entry.file_name());
        std::fs::copy(entry.path(), &target)
            .map_err(|e| infra(format!("copying {}", entry.path().display()), e))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| infra(format!("chmod {}", target.display()), e))?;
    }
    give_to_build_user(&output, build_uid)?;
    Ok(JobDirs {
        build,
        output,
        layer,
        listing,
    })
}

/// Makes `dir` writable by the build user: chown when the agent may (root), else mode 0777
/// inside the agent's private work dir.
fn give_to_build_user(dir: &Path, uid: u32) -> Result<(), RuntimeError> {
    match std::os::unix::fs::chown(dir, Some(uid), Some(uid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(dir = %dir.display(), "cannot chown to the build user; making it world-writable");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| RuntimeError::Infrastructure(format!("chmod {}: {e}", dir.display())))
        }
        Err(e) => Err(RuntimeError::Infrastructure(format!(
            "chown {}: {e}",
            dir.display()
        ))),
    }
}

/// The last `max` bytes of a log, as text.
fn tail_text(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
