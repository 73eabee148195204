//! HTTP client of the coordinator's API: source downloads, blob uploads (in batches),
//! attestations.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lockstep_proto::digest::{Hasher, Sha256Digest};
use lockstep_proto::v1::{self, AttestationUpload, FailureUpload};
use tokio::io::AsyncWriteExt;

/// Why a coordinator call failed: retry (network, 5xx) or give up (a refusal, 4xx).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("coordinator unreachable or failing: {0}")]
    Transient(String),
    #[error("coordinator refused: {0}")]
    Refused(String),
}

/// Where the bytes of a blob to upload come from.
#[derive(Clone, Debug)]
pub enum BlobSource {
    /// A file, streamed from disk.
    File(PathBuf),
    /// Bytes in memory.
    Bytes(bytes::Bytes),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(body);
    let text = format!("{what}: HTTP {status}: {msg}");
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err(ClientError::Transient(text))
    } else {
        Err(ClientError::Refused(text))
    }
}

fn transient(what: &str) -> impl Fn(reqwest::Error) -> ClientError + '_ {
    move |e| ClientError::Transient(format!("{what}: {e}"))
}

/// A local file to upload that cannot be read: not the coordinator's refusal, so retried.
fn unreadable(path: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |e| ClientError::Transient(format!("uploading {}: {e}", path.display()))
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// Downloads a blob to `dest`, hashing while writing; refuses bytes that do not match.
    pub async fn download(
        &self,
        digest: &Sha256Digest,
        size: u64,
        dest: &Path,
    ) -> anyhow::Result<()> {
        let what = format!("downloading {digest}");
        let mut resp = check(
            self.http
                .get(format!("{}/api/v1/blobs/{digest}", self.base))
                .send()
                .await
                .map_err(transient(&what))?,
            &what,
        )
        .await?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("creating {}", dest.display()))?;
        let mut h = Hasher::new();
        while let Some(chunk) = resp.chunk().await.map_err(transient(&what))? {
            if h.len() + chunk.len() as u64 > size {
                bail!("{what}: more bytes than the job says ({size})");
            }
            h.update(&chunk);
            file.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", dest.display()))?;
        }
        file.flush().await?;
        let (got, len) = h.finish();
        if got != *digest || len != size {
            bail!(
                "{what}: got {got} ({len} bytes), expected {size} bytes: refusing corrupt source"
            );
        }
        Ok(())
    }

    /// Uploads blobs with `POST /api/v1/blobs`, streaming files from disk: one request (one
    /// archive batch: two syncs and one commit on the coordinator) per group of at most
    /// [`v1::BLOB_BATCH_MAX_BYTES`] and [`v1::BLOB_BATCH_MAX_PARTS`]; a larger file goes alone. Idempotent: the
    /// archive deduplicates identical bytes, so a retry re-sends what an earlier request stored.
    pub async fn upload_batch(
        &self,
        items: &[(Sha256Digest, BlobSource)],
    ) -> Result<(), ClientError> {
        let mut sizes = Vec::with_capacity(items.len());
        for (_, source) in items {
            sizes.push(match source {
                BlobSource::File(path) => tokio::fs::metadata(path)
                    .await
                    .map_err(unreadable(path))?
                    .len(),
                BlobSource::Bytes(bytes) => bytes.len() as u64,
            });
        }
        for group in v1::blob_batches(&sizes) {
            let bytes: u64 = sizes[group.clone()].iter().sum();
            let what = format!(
                "uploading {} blob(s), {bytes} bytes, in one batch",
                group.len()
            );
            let mut form = reqwest::multipart::Form::new();
            for (digest, source) in &items[group] {
                let part = match source {
                    BlobSource::File(path) => {
                        let file = tokio::fs::File::open(path)
                            .await
                            .map_err(unreadable(path))?;
                        // The length of the file as opened, which is what will be streamed.
                        let len = file.metadata().await.map_err(unreadable(path))?.len();
                        let body =
                            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
                        reqwest::multipart::Part::stream_with_length(body, len)
                    }
                    BlobSource::Bytes(bytes) => reqwest::multipart::Part::stream_with_length(
                        bytes.clone(),
                        bytes.len() as u64,
                    ),
                };
                form = form.part(digest.to_hex(), part);
            }
            check(
                self.http
                    .post(format!("{}/api/v1/blobs", self.base))
                    .multipart(form)
                    .send()
                    .await
                    .map_err(transient(&what))?,
                &what,
            )
            .await?;
        }
        Ok(())
    }

    /// Uploads bytes as a blob.
    pub async fn upload_bytes(&self, bytes: Vec<u8>) -> Result<Sha256Digest, ClientError> {
        let digest = Sha256Digest::of(&bytes);
        let what = format!("uploading blob {digest}");
        check(
            self.http
                .put(format!("{}/api/v1/blobs/{digest}", self.base))
                .body(bytes)
                .send()
                .await
                .map_err(transient(&what))?,
            &what,
        )
        .await?;
        Ok(digest)
    }

    /// Submits an attestation; Ok once the coordinator has it durably stored.
    pub async fn attest(&self, up: &AttestationUpload) -> Result<serde_json::Value, ClientError> {
        let what = "submitting the attestation";
        let resp = check(
            self.http
                .post(format!("{}/api/v1/attestations", self.base))
                .json(up)
                .send()
                .await
                .map_err(transient(what))?,
            what,
        )
        .await?;
        resp.json().await.map_err(transient(what))
    }

    pub async fn report_failure(&self, up: &FailureUpload) -> Result<(), ClientError> {
        let what = "reporting the failure";
        check(
            self.http
                .post(format!("{}/api/v1/failures", self.base))
                .json(up)
                .send()
                .await
                .map_err(transient(what))?,
            what,
        )
        .await?;
        Ok(())
    }

    /// Whether this builder's attestation for the job is already stored (a redelivery after a
    /// crash between upload and ack).
    pub async fn has_attestation(
        &self,
        job_id: &str,
        fingerprint: &str,
    ) -> Result<bool, ClientError> {
        let what = "checking for an existing attestation";
        let resp = self
            .http
            .get(format!(
                "{}/api/v1/attestations/{job_id}/{fingerprint}",
                self.base
            ))
            .send()
            .await
            .map_err(transient(what))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        check(resp, what).await?;
        Ok(true)
    }
}
