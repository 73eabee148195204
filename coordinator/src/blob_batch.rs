//! `POST /api/v1/blobs`: several blobs in one request, stored as one archive batch
//! ([`lockstep_archive::Archive::put_blobs`]: two file-system syncs and one registration commit
//! for the whole request, instead of about three fsyncs and a commit per blob with
//! `PUT /api/v1/blobs/{sha256}`). Agents upload an attestation's artifacts, signed `.buildinfo` and
//! build log this way.
//!
//! The body is `multipart/form-data` with one part per blob; a part's field name is the SHA-256
//! (hex) of its bytes, and no part may exceed `max_blob_bytes`. Parts are streamed one after the
//! other into the archive, never buffered whole: [`multer`] parses the request's body stream while
//! the blocking task that runs the batch reads each part through a synchronous bridge. The answer
//! is `{"blobs": [{"sha256", "size", "created"}, …]}`, in part order.
//!
//! All or nothing: a part whose name is not a digest, whose bytes do not match its name or go over
//! the limit, a body that is not well-formed multipart (even after some parts were read) or more
//! than [`MAX_PARTS`] parts fail the whole request, and no blob of it is registered. Such a problem
//! becomes the read error of the part at fault, so the archive's batch fails as for any unreadable
//! item; the answer names the part (1-based) and its name.

use std::io::{self, Read};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::TryStreamExt;
use lockstep_archive::{ArchiveError, PutBlobsError};
use lockstep_proto::digest::Sha256Digest;
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::api::{blocking, ApiError};
use crate::service::{Service, ServiceError};

/// Most parts in one request. An attestation has a handful of blobs; the cap bounds the temp files
/// and the per-part bookkeeping one request can make the coordinator hold until its batch ends.
pub const MAX_PARTS: usize = 10_000;

const NO_NAME: &str = "the part has no name; nothing was stored — name each part by the SHA-256 \
                       (64 hex digits) of its bytes: Content-Disposition: form-data; \
                       name=\"<sha256>\"";
const NOT_A_DIGEST: &str = "its name is not a SHA-256 digest; nothing was stored — name each part \
                            by the SHA-256 (64 hex digits) of its bytes";

/// Routes of this module, merged into the API router.
pub fn routes() -> Router<Arc<Service>> {
    Router::new().route("/api/v1/blobs", post(post_blobs))
}

async fn post_blobs(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(&content_type).map_err(|e| {
        ServiceError::BadRequest(format!(
            "POST /api/v1/blobs takes a multipart/form-data body with a boundary, but the \
             Content-Type is {content_type:?} ({e}); send one part per blob, named by the SHA-256 \
             of its bytes, with Content-Type: multipart/form-data; boundary=…"
        ))
    })?;
    let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary);
    let rt = tokio::runtime::Handle::current();
    let max = svc.cfg.max_blob_bytes;
    let puts = blocking(move || {
        let mut names = Vec::new();
        let parts = Parts {
            multipart: &mut multipart,
            rt: &rt,
            names: &mut names,
            done: false,
        };
        svc.archive
            .put_blobs(parts, max)
            .map_err(|e| batch_error(e, &names))
    })
    .await?;
    if puts.is_empty() {
        return Err(ServiceError::BadRequest(
            "the multipart body has no parts: send one part per blob, named by the SHA-256 of its \
             bytes"
                .into(),
        )
        .into());
    }
    let blobs: Vec<_> = puts
        .iter()
        .map(|p| json!({ "sha256": p.digest, "size": p.size, "created": p.created }))
        .collect();
    Ok(Json(json!({ "blobs": blobs })).into_response())
}

/// The parts of a request as the archive's batch items, parsed as the batch asks for them (on the
/// blocking thread that runs it). `names[i]` is the field name of part `i` (empty if it had none).
struct Parts<'a> {
    multipart: &'a mut multer::Multipart<'static>,
    rt: &'a tokio::runtime::Handle,
    names: &'a mut Vec<String>,
    /// A refusal was handed out: the batch fails on it, nothing more is read.
    done: bool,
}

impl Iterator for Parts<'_> {
    type Item = (Option<Sha256Digest>, Box<dyn Read>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // The batch dropped the previous part's reader before asking for the next item, so the
        // previous field is gone, as `next_field` requires.
        let field = match self.rt.block_on(self.multipart.next_field()) {
            Ok(Some(field)) => field,
            Ok(None) => return None,
            Err(e) => return Some(self.refuse(String::new(), malformed(&e))),
        };
        if self.names.len() == MAX_PARTS {
            return Some(self.refuse(
                String::new(),
                ServiceError::TooLarge(format!(
                    "the request has more than {MAX_PARTS} parts; nothing was stored — send at \
                     most {MAX_PARTS} blobs per request"
                )),
            ));
        }
        let Some(name) = field.name().map(str::to_owned) else {
            let why = ServiceError::BadRequest(NO_NAME.into());
            return Some(self.refuse(String::new(), why));
        };
        let Ok(expected) = name.parse::<Sha256Digest>() else {
            let why = ServiceError::BadRequest(NOT_A_DIGEST.into());
            return Some(self.refuse(name, why));
        };
        self.names.push(name);
        let bytes =
            field.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, Refused(malformed(&e))));
        let reader = SyncIoBridge::new_with_handle(StreamReader::new(bytes), self.rt.clone());
        Some((Some(expected), Box::new(reader)))
    }
}

impl Parts<'_> {
    /// An item whose first read fails with `why`, which fails the batch (at this item) before
    /// anything of it is stored; [`batch_error`] turns it back into `why`.
    fn refuse(&mut self, name: String, why: ServiceError) -> (Option<Sha256Digest>, Box<dyn Read>) {
        self.names.push(name);
        self.done = true;
        let error = io::Error::new(io::ErrorKind::InvalidData, Refused(why));
        (None, Box::new(FailingReader(Some(error))))
    }
}

fn malformed(e: &multer::Error) -> ServiceError {
    ServiceError::BadRequest(format!(
        "the multipart body is malformed or incomplete ({e}); nothing was stored — send a \
         well-formed multipart/form-data body, complete up to its closing boundary"
    ))
}

/// The client's mistake, carried through the archive as a part's read error.
#[derive(Debug)]
struct Refused(ServiceError);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {}

/// A reader that fails once with its error (then reads as empty).
struct FailingReader(Option<io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        self.0.take().map_or(Ok(0), Err)
    }
}

/// The answer to a failed batch: a [`Refused`] part as what it says, an archive error with the
/// status the single `PUT` gives it (`ServiceError: From<ArchiveError>`), prefixed with the part.
fn batch_error(e: PutBlobsError, names: &[String]) -> ServiceError {
    let Some(i) = e.item else {
        return about(ServiceError::from(e.error), "the blob batch");
    };
    let part = match names.get(i).filter(|n| !n.is_empty()) {
        Some(name) if name.chars().count() > 80 => {
            let shown: String = name.chars().take(80).collect();
            format!("part {} (name {shown:?}…) of the blob batch", i + 1)
        }
        Some(name) => format!("part {} (name {name:?}) of the blob batch", i + 1),
        None => format!("part {} of the blob batch", i + 1),
    };
    match e.error {
        ArchiveError::Io { source, .. } if source.get_ref().is_some_and(|s| s.is::<Refused>()) => {
            let refused = source
                .into_inner()
                .and_then(|s| s.downcast::<Refused>().ok())
                .expect("checked to be a Refused just above");
            about(refused.0, &part)
        }
        other => about(ServiceError::from(other), &part),
    }
}

/// The same error (same status), its message prefixed with what it is about.
fn about(e: ServiceError, what: &str) -> ServiceError {
    match e {
        ServiceError::BadRequest(m) => ServiceError::BadRequest(format!("{what}: {m}")),
        ServiceError::Forbidden(m) => ServiceError::Forbidden(format!("{what}: {m}")),
        ServiceError::NotFound(m) => ServiceError::NotFound(format!("{what}: {m}")),
        ServiceError::Conflict(m) => ServiceError::Conflict(format!("{what}: {m}")),
        ServiceError::Unprocessable(m) => ServiceError::Unprocessable(format!("{what}: {m}")),
        ServiceError::TooLarge(m) => ServiceError::TooLarge(format!("{what}: {m}")),
        ServiceError::Internal(e) => ServiceError::Internal(e.context(format!("storing {what}"))),
    }
}
