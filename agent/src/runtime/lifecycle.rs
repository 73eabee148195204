//! Container lifecycle: create (and record for audits), run to exit under a deadline and a
//! cancellation token with stop-then-kill, stream the output into the capped log, and remove
//! every container and temporary image of a job — on success, failure, timeout, cancellation
//! and even when the job's future is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse};
use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::logs::CappedLog;
use super::RuntimeError;

/// How many container inspections [`Tracker`] keeps for audits; older ones are dropped so a
/// long-running agent does not grow without bound.
const AUDIT_HISTORY: usize = 64;

/// After a container exits, how long to wait for the rest of its output stream.
const LOG_DRAIN: Duration = Duration::from_secs(10);

/// Which step of a job a container runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRole {
    /// Installs build dependencies (root, network, minimal capabilities).
    Deps,
    /// Runs the build (build user, no network, read-only root, no capabilities).
    Build,
    /// Refreshes the agent's apt lists cache (the deps isolation, the new lists dir mounted).
    AptLists,
    /// Lists the build image's paths once per image (the deps user and capabilities, network
    /// `none`, read-only root, one empty directory of the job's work dir mounted).
    Listing,
}

/// A container as Docker described it right after the runtime created it.
#[derive(Clone, Debug)]
pub struct ContainerAudit {
    /// Docker container id.
    pub id: String,
    /// The job it belongs to.
    pub job_id: String,
    /// The step it runs.
    pub role: ContainerRole,
    /// `docker inspect` of the created container: host config, config, mounts.
    pub inspect: ContainerInspectResponse,
}

#[derive(Default)]
struct TrackerInner {
    /// Containers created and not yet removed: id → job id.
    live: BTreeMap<String, String>,
    audits: VecDeque<ContainerAudit>,
}

/// The runtime's record of its containers. Shared with cleanup tasks; never locked across an
/// `.await`.
#[derive(Clone, Default)]
pub(crate) struct Tracker(Arc<Mutex<TrackerInner>>);

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerInner> {
        // A panic while holding this lock leaves plain maps behind; they are still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    pub(crate) fn live(&self) -> Vec<String> {
        self.lock().live.keys().cloned().collect()
    }
    pub(crate) fn audits(&self) -> Vec<ContainerAudit> {
        self.lock().audits.iter().cloned().collect()
    }
    fn created(&self, id: &str, job_id: &str) {
        self.lock().live.insert(id.to_owned(), job_id.to_owned());
    }
    fn audited(&self, audit: ContainerAudit) {
        let mut inner = self.lock();
        if inner.audits.len() == AUDIT_HISTORY {
            inner.audits.pop_front();
        }
        inner.audits.push_back(audit);
    }
    fn removed(&self, id: &str) {
        self.lock().live.remove(id);
    }
}

/// How a container run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i64),
    TimedOut,
    Cancelled,
}

/// Maps a Docker API error to the runtime's error kinds.
pub(crate) fn docker_error(what: &str, e: DockerError) -> RuntimeError {
    match e {
        DockerError::SocketNotFoundError(_)
        | DockerError::HyperLegacyError { .. }
        | DockerError::IOError { .. } => RuntimeError::DockerUnavailable(format!("{what}: {e}")),
        other => RuntimeError::Infrastructure(format!("{what}: {other}")),
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Everything one job created in Docker. [`JobResources::release`] removes it all; if the job's
/// future is dropped first, `Drop` hands the removal to a background task.
pub(crate) struct JobResources {
    docker: Docker,
    tracker: Tracker,
    job_id: String,
    containers: Vec<String>,
    images: Vec<String>,
}

impl JobResources {
    pub(crate) fn new(docker: Docker, tracker: Tracker, job_id: &str) -> Self {
        Self {
            docker,
            tracker,
            job_id: job_id.to_owned(),
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    /// Creates a container, records it, and records its inspection for audits.
    pub(crate) async fn create(
        &mut self,
        role: ContainerRole,
        body: ContainerCreateBody,
    ) -> Result<String, RuntimeError> {
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(|e| docker_error("creating container", e))?;
        let id = created.id;
        self.containers.push(id.clone());
        self.tracker.created(&id, &self.job_id);
        let inspect = self
            .docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| docker_error("inspecting container", e))?;
        self.tracker.audited(ContainerAudit {
            id: id.clone(),
            job_id: self.job_id.clone(),
            role,
            inspect,
        });
        Ok(id)
    }

    /// Commits a stopped container to an untagged image, removed again by [`Self::release`].
    /// The image is labelled with the job's host build directory (`work_dir`).
    pub(crate) async fn commit(
        &mut self,
        container: &str,
        work_dir: &std::path::Path,
    ) -> Result<String, RuntimeError> {
        let options = bollard::query_parameters::CommitContainerOptions {
            container: Some(container.to_owned()),
            comment: Some(format!(
                "lockstep build dependencies for job {}",
                self.job_id
            )),
            pause: false,
            ..Default::default()
        };
        let resp = self
            .docker
            .commit_container(
                options,
                bollard::models::ContainerConfig {
                    // Docker merges these with the container's own labels.
                    labels: Some(std::collections::HashMap::from([(
                        super::spec::LABEL_WORKDIR.to_owned(),
                        work_dir.to_string_lossy().into_owned(),
                    )])),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| docker_error("committing the dependency container", e))?;
        let id = resp.id;
        self.images.push(id.clone());
        Ok(id)
    }

    /// Records an image the job made some other way than [`Self::commit`], for removal.
    pub(crate) fn adopt_image(&mut self, id: &str) {
        self.images.push(id.to_owned());
    }

    /// Removes one container now (it is no longer needed) and forgets it.
    pub(crate) async fn remove_container(&mut self, id: &str) -> Result<(), RuntimeError> {
        remove_container(&self.docker, &self.tracker, id).await?;
        self.containers.retain(|c| c != id);
        Ok(())
    }

    /// Removes every container, then every image of the job. Tries all, reports the first error.
    pub(crate) async fn release(mut self) -> Result<(), RuntimeError> {
        let containers = std::mem::take(&mut self.containers);
        let images = std::mem::take(&mut self.images);
        remove_all(&self.docker, &self.tracker, &containers, &images).await
    }
}

impl Drop for JobResources {
    fn drop(&mut self) {
        if self.containers.is_empty() && self.images.is_empty() {
            return;
        }
        let containers = std::mem::take(&mut self.containers);
        let images = std::mem::take(&mut self.images);
        let (docker, tracker) = (self.docker.clone(), self.tracker.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = remove_all(&docker, &tracker, &containers, &images).await {
                        tracing::warn!(error = %e, "removing an abandoned job's containers");
                    }
                });
            }
            Err(_) => tracing::warn!(
                ?containers,
                ?images,
                "job dropped outside a tokio runtime; containers left behind"
            ),
        }
    }
}

pub(crate) async fn remove_all(
    docker: &Docker,
    tracker: &Tracker,
    containers: &[String],
    images: &[String],
) -> Result<(), RuntimeError> {
    let mut first_error = None;
    for id in containers {
        if let Err(e) = remove_container(docker, tracker, id).await {
            first_error.get_or_insert(e);
        }
    }
    for id in images {
        let options = RemoveImageOptions {
            force: true,
            noprune: false,
            ..Default::default()
        };
        match docker.remove_image(id, Some(options), None).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                first_error.get_or_insert(docker_error("removing temporary image", e));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn remove_container(
    docker: &Docker,
    tracker: &Tracker,
    id: &str,
) -> Result<(), RuntimeError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(docker_error("removing container", e)),
    }
    tracker.removed(id);
    Ok(())
}

/// Starts a created container and waits until it exits, `limit` passes, or `cancel` fires;
/// its output goes to `log` as it comes. On timeout or cancellation the container is stopped
/// (SIGTERM, `grace`, SIGKILL) and killed if still alive.
pub(crate) async fn run_to_exit(
    docker: &Docker,
    id: &str,
    limit: Duration,
    grace: Duration,
    cancel: &CancellationToken,
    log: &mut CappedLog,
) -> Result<Exit, RuntimeError> {
    if cancel.is_cancelled() {
        return Ok(Exit::Cancelled);
    }
    docker
        .start_container(id, None)
        .await
        .map_err(|e| docker_error("starting container", e))?;
    let output = docker.logs(
        id,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    let wait = docker.wait_container(
        id,
        Some(WaitContainerOptions {
            condition: "not-running".to_owned(),
        }),
    );
    tokio::pin!(output, wait);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut output_open = true;
    let exit = loop {
        tokio::select! {
            chunk = output.next(), if output_open => match chunk {
                Some(Ok(chunk)) => log.push(&chunk.into_bytes()),
                Some(Err(e)) => {
                    log.note(&format!("log stream error: {e}"));
                    output_open = false;
                }
                None => output_open = false,
            },
            status = wait.next() => break exit_code(status)?,
            () = &mut deadline => {
                stop_and_kill(docker, id, grace).await?;
                break Exit::TimedOut;
            }
            () = cancel.cancelled() => {
                stop_and_kill(docker, id, grace).await?;
                break Exit::Cancelled;
            }
        }
    };
    // The container is gone; collect what is left of its output, without waiting forever.
    let drain = async {
        while output_open {
            match output.next().await {
                Some(Ok(chunk)) => log.push(&chunk.into_bytes()),
                _ => output_open = false,
            }
        }
    };
    if tokio::time::timeout(LOG_DRAIN, drain).await.is_err() {
        log.note("output stream did not end after the container exited");
    }
    Ok(exit)
}

fn exit_code(
    status: Option<Result<bollard::models::ContainerWaitResponse, DockerError>>,
) -> Result<Exit, RuntimeError> {
    match status {
        Some(Ok(resp)) => Ok(Exit::Code(resp.status_code)),
        // bollard reports non-zero exit codes as errors.
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(Exit::Code(code)),
        Some(Err(e)) => Err(docker_error("waiting for container", e)),
        None => Err(RuntimeError::Infrastructure(
            "container wait stream ended without a status".to_owned(),
        )),
    }
}

/// `docker stop` with `grace`, then `docker kill` in case anything survived.
async fn stop_and_kill(docker: &Docker, id: &str, grace: Duration) -> Result<(), RuntimeError> {
    let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
    let stopped = docker
        .stop_container(id, Some(StopContainerOptionsBuilder::new().t(t).build()))
        .await;
    if let Err(e) = stopped {
        tracing::warn!(container = id, error = %e, "stopping container; killing it");
    }
    match docker
        .kill_container(
            id,
            Some(KillContainerOptions {
                signal: "SIGKILL".to_owned(),
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        // 409: not running any more, which is what we want.
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(docker_error("killing container", e)),
    }
}
