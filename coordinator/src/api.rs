//! HTTP API (axum). Versioned JSON under `/api/v1`, the transparency log under `/log`.
//!
//! Errors are converted once, here: every refusal is a JSON `{"error": "..."}` with a status
//! code the caller can branch on (400 malformed, 403 signature/trust, 404 unknown, 409 conflict
//! with stored evidence, 413 too large, 422 does not match, 500 internal).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::v1::{AttestationUpload, EnqueueRequest, FailureUpload};
use serde::Deserialize;
use serde_json::json;

use crate::service::{Service, ServiceError};

/// Largest JSON request body (statements with many artifacts stay far below).
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

pub struct ApiError(ServiceError);

impl<E: Into<ServiceError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Internal(e) if crate::audit::storage_full(e) => {
                tracing::error!(error = %format!("{e:#}"), "archive volume full");
                let msg = format!(
                    "the archive volume is full (disk full): {e:#}; nothing was stored — free \
                     space on the coordinator's data volume, then retry"
                );
                return (
                    StatusCode::INSUFFICIENT_STORAGE,
                    Json(json!({ "error": msg })),
                )
                    .into_response();
            }
            ServiceError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking service work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("task failed: {e}")))?
        .map_err(ApiError)
}

pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/jobs", post(enqueue))
        .route("/api/v1/jobs/dsc", post(enqueue_dsc))
        .route("/api/v1/jobs/suite", post(enqueue_suite))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/blobs/{sha256}", put(put_blob).get(get_blob))
        .route("/api/v1/attestations", post(attest))
        .route(
            "/api/v1/attestations/{job_id}/{fingerprint}",
            get(has_attestation),
        )
        .route("/api/v1/failures", post(failure))
        .route("/api/v1/status", get(status))
        .route(
            "/api/v1/decisions/{source}/{version}/{arch}",
            get(decisions),
        )
        .route("/api/v1/keys/coordinator", get(coordinator_key))
        .route("/api/v1/diff/{source}/{version}/{arch}", get(diff))
        .route("/apt/dists/{*path}", get(apt_dists))
        .route("/apt/pool/{*path}", get(apt_pool))
        .route("/api/v1/policy/reload", post(reload_policy))
        .route("/api/v1/log", get(log_info))
        .route("/api/v1/proof/inclusion", get(inclusion_proof))
        .route("/api/v1/proof/consistency", get(consistency_proof))
        .route("/log/checkpoint", get(checkpoint))
        .route("/log/{*path}", get(tile))
        .merge(crate::audit::routes())
        .merge(crate::blob_batch::routes())
        .merge(crate::uploads::routes())
        .merge(crate::witness::routes())
        .merge(crate::lookup::routes())
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(svc)
}

async fn health(State(svc): State<Arc<Service>>) -> Json<serde_json::Value> {
    Json(json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "fingerprint": svc.key.fingerprint(),
        "builders": svc.builder_fingerprints(),
    }))
}

async fn enqueue(
    State(svc): State<Arc<Service>>,
    Json(req): Json<EnqueueRequest>,
) -> ApiResult<Response> {
    if req.packages.is_empty() {
        return Err(ServiceError::BadRequest("no packages given".into()).into());
    }
    let resp = svc.enqueue(&req.packages, req.rebuild).await;
    crate::official::spawn_for_jobs(
        &svc,
        resp.jobs
            .iter()
            .filter(|j| j.created)
            .map(|j| j.job_id.clone())
            .collect(),
    );
    let status = if resp.jobs.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((status, Json(resp)).into_response())
}

#[derive(Deserialize)]
struct DscRequest {
    dsc_sha256: Sha256Digest,
    #[serde(default)]
    rebuild: bool,
}

async fn enqueue_dsc(
    State(svc): State<Arc<Service>>,
    Json(req): Json<DscRequest>,
) -> ApiResult<Response> {
    let s = svc.clone();
    let resp = blocking(move || s.enqueue_dsc(req.dsc_sha256, req.rebuild)).await?;
    crate::official::spawn_for_jobs(
        &svc,
        resp.jobs
            .iter()
            .filter(|j| j.created)
            .map(|j| j.job_id.clone())
            .collect(),
    );
    Ok(Json(resp).into_response())
}

async fn enqueue_suite(
    State(svc): State<Arc<Service>>,
    Json(req): Json<crate::suite::SuiteRequest>,
) -> ApiResult<Response> {
    svc.apt
        .update_if_stale()
        .await
        .map_err(|e| ServiceError::Internal(e.context("refreshing the apt indices")))?;
    let lists = svc.apt.lists_dir();
    let r = req.clone();
    let sources = blocking(move || {
        // With --since the limit applies to what passes the date check, in the background.
        let limit = if r.since.is_some() { None } else { r.limit };
        crate::suite::list_sources(&lists, &r.suite, r.section.as_deref(), limit)
            .map_err(|e| ServiceError::Unprocessable(format!("{e:#}")))
    })
    .await?;
    let n = sources.len();
    crate::suite::spawn_enqueue(
        svc.clone(),
        sources.clone(),
        req.rebuild,
        req.since,
        req.limit,
    );
    Ok(Json(json!({
        "suite": req.suite,
        "accepted": n,
        "since": req.since,
        "limit": req.limit,
        "sources": sources,
    }))
    .into_response())
}

async fn summary(State(svc): State<Arc<Service>>) -> ApiResult<Response> {
    let rows =
        blocking(move || crate::suite::summary(&svc).map_err(ServiceError::Internal)).await?;
    Ok(Json(rows).into_response())
}

async fn job(State(svc): State<Arc<Service>>, Path(id): Path<String>) -> ApiResult<Response> {
    let row = blocking(move || {
        svc.jobs
            .get(&id)
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound(format!("unknown job {id}")))
    })
    .await?;
    Ok(Json(json!({
        "job": row.job,
        "confirmed_at": row.confirmed_at,
        "dispatch_error": row.dispatch_error,
    }))
    .into_response())
}

fn parse_digest(s: &str) -> ApiResult<Sha256Digest> {
    s.parse()
        .map_err(|e| ApiError(ServiceError::BadRequest(format!("{e}"))))
}

async fn put_blob(
    State(svc): State<Arc<Service>>,
    Path(sha): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let expected = parse_digest(&sha)?;
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::StreamReader::new(stream);
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let max = svc.cfg.max_blob_bytes;
    let put = blocking(move || Ok(svc.archive.put_blob(Some(expected), bridge, max)?)).await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "sha256": put.digest, "size": put.size, "created": put.created })),
    )
        .into_response())
}

async fn get_blob(State(svc): State<Arc<Service>>, Path(sha): Path<String>) -> ApiResult<Response> {
    let d = parse_digest(&sha)?;
    let path = svc
        .archive
        .blob_path(&d)
        .ok_or_else(|| ServiceError::NotFound(format!("no blob {d}")))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("opening blob {d}: {e}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("stat blob {d}: {e}")))?
        .len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

async fn attest(
    State(svc): State<Arc<Service>>,
    Json(up): Json<AttestationUpload>,
) -> ApiResult<Response> {
    let acc = blocking(move || svc.attest(&up)).await?;
    let status = if acc.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(acc)).into_response())
}

async fn has_attestation(
    State(svc): State<Arc<Service>>,
    Path((job_id, fpr)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (j, f) = (job_id.clone(), fpr.clone());
    if blocking(move || svc.has_attestation(&j, &f)).await? {
        Ok(Json(json!({ "job_id": job_id, "fingerprint": fpr })).into_response())
    } else {
        Err(ServiceError::NotFound(format!("no attestation by {fpr} for job {job_id}")).into())
    }
}

async fn failure(
    State(svc): State<Arc<Service>>,
    Json(up): Json<FailureUpload>,
) -> ApiResult<Response> {
    let state = blocking(move || svc.report_failure(&up)).await?;
    Ok(Json(json!({ "state": state })).into_response())
}

#[derive(Deserialize)]
struct StatusQuery {
    source: Option<String>,
}

async fn status(
    State(svc): State<Arc<Service>>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Response> {
    // The keys first, so that a failure before the first byte is a proper error response; then
    // the rows are computed and sent in chunks, so memory stays flat however many keys there are.
    let s2 = svc.clone();
    let keys = blocking(move || s2.status_keys(q.source.as_deref())).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(STATUS_CHUNK + 4096);
        buf.push(b'[');
        let mut first = true;
        let walked = svc.status_of_keys(keys, |entry| {
            if !first {
                buf.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut buf, &entry)
                .map_err(|e| ServiceError::Internal(anyhow::anyhow!("serialising status: {e}")))?;
            if buf.len() >= STATUS_CHUNK {
                let chunk = bytes::Bytes::from(std::mem::take(&mut buf));
                tx.blocking_send(Ok(chunk)).map_err(|_| {
                    ServiceError::Internal(anyhow::anyhow!("status client went away"))
                })?;
            }
            Ok(())
        });
        match walked {
            Ok(()) => {
                buf.push(b']');
                let _ = tx.blocking_send(Ok(bytes::Bytes::from(buf)));
            }
            Err(e) => {
                // Headers are sent: cut the body short so the client sees an incomplete reply
                // instead of a truncated array that still parses.
                tracing::warn!(error = %e, "status response cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Bytes of status JSON gathered before they are sent on.
const STATUS_CHUNK: usize = 64 * 1024;

async fn decisions(
    State(svc): State<Arc<Service>>,
    Path((source, version, arch)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let list = blocking(move || svc.decisions(&source, &version, &arch)).await?;
    let out: Vec<_> = list
        .into_iter()
        .map(|(d, sig)| json!({ "canonical": String::from_utf8_lossy(&d.canonical_bytes()), "signature": sig, "decision": d }))
        .collect();
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct KeyQuery {
    /// `armored` (default) or `binary` (a keyring file for `gpgv --keyring` or apt's signed-by).
    format: Option<String>,
}

async fn coordinator_key(
    State(svc): State<Arc<Service>>,
    Query(q): Query<KeyQuery>,
) -> ApiResult<Response> {
    let (bytes, content_type) = match q.format.as_deref() {
        None | Some("armored") => (svc.key.public_armored(), "application/pgp-keys"),
        Some("binary") => (svc.key.public_binary(), "application/octet-stream"),
        Some(other) => {
            return Err(ServiceError::BadRequest(format!(
                "format={other:?} is not known: use format=armored or format=binary"
            ))
            .into())
        }
    };
    let bytes = bytes.map_err(|e| ServiceError::Internal(anyhow::anyhow!(e)))?;
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

async fn diff(
    State(svc): State<Arc<Service>>,
    Path((source, version, arch)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let report = blocking(move || crate::diff::diff(&svc, &source, &version, &arch)).await?;
    Ok(Json(report).into_response())
}

/// Brings the apt repository up to date with the decisions before serving from it.
async fn refresh_apt(svc: &Arc<Service>) -> ApiResult<()> {
    let s = svc.clone();
    blocking(move || {
        s.refresh_apt()
            .map_err(|e| ServiceError::Internal(e.context("regenerating the apt repository")))
    })
    .await
}

async fn apt_dists(
    State(svc): State<Arc<Service>>,
    Path(path): Path<String>,
) -> ApiResult<Response> {
    refresh_apt(&svc).await?;
    let file = svc.aptrepo.dists_file(&path).ok_or_else(|| {
        ServiceError::NotFound(format!("no file dists/{path} in the apt repository"))
    })?;
    let bytes = tokio::fs::read(&file)
        .await
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("reading {}: {e}", file.display())))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

async fn apt_pool(
    State(svc): State<Arc<Service>>,
    Path(path): Path<String>,
) -> ApiResult<Response> {
    refresh_apt(&svc).await?;
    let d = svc
        .aptrepo
        .pool_blob(&format!("pool/{path}"))
        .ok_or_else(|| {
            ServiceError::NotFound(format!(
                "pool/{path} is not in the apt repository: only shipped packages are published"
            ))
        })?;
    get_blob(State(svc), Path(d.to_hex())).await
}

async fn reload_policy(State(svc): State<Arc<Service>>) -> ApiResult<Response> {
    let p = blocking(move || svc.reload_policy()).await?;
    Ok(Json(json!({
        "builders": p.builders.iter().map(|b| json!({"name": b.name, "fingerprint": b.fingerprint})).collect::<Vec<_>>(),
        "default_threshold": p.default_threshold,
    }))
    .into_response())
}

async fn log_info(State(svc): State<Arc<Service>>) -> ApiResult<Response> {
    let s = svc.clone();
    let (size, checkpoint) =
        blocking(move || Ok((s.archive.log_size()?, s.archive.latest_checkpoint()?))).await?;
    Ok(Json(json!({
        "origin": svc.cfg.log_origin,
        "verifier_key": svc.archive.verifier_key(),
        "size": size,
        "checkpoint": checkpoint,
        "base_path": "/log/",
    }))
    .into_response())
}

async fn checkpoint(State(svc): State<Arc<Service>>) -> ApiResult<Response> {
    let cp = blocking(move || {
        Ok(svc
            .archive
            .latest_checkpoint()?
            .map(|t| svc.with_cosignatures(&t)))
    })
    .await?;
    match cp {
        Some(text) => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        None => Err(ServiceError::NotFound("the log has no checkpoint yet".into()).into()),
    }
}

async fn tile(State(svc): State<Arc<Service>>, Path(path): Path<String>) -> ApiResult<Response> {
    let p = path.clone();
    let bytes = blocking(move || Ok(svc.archive.tile(&p)?)).await?;
    match bytes {
        Some(b) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()),
        None => Err(ServiceError::NotFound(format!("no tile {path}")).into()),
    }
}

#[derive(Deserialize)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

async fn inclusion_proof(
    State(svc): State<Arc<Service>>,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<Response> {
    let proof = blocking(move || Ok(svc.archive.inclusion_proof(q.index, q.size)?)).await?;
    Ok(Json(json!({ "index": q.index, "size": q.size, "proof": proof.iter().map(hex::encode).collect::<Vec<_>>() })).into_response())
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: u64,
}

async fn consistency_proof(
    State(svc): State<Arc<Service>>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<Response> {
    let proof = blocking(move || Ok(svc.archive.consistency_proof(q.old, q.new)?)).await?;
    Ok(Json(json!({ "old": q.old, "new": q.new, "proof": proof.iter().map(hex::encode).collect::<Vec<_>>() })).into_response())
}
