//! The coordinator's HTTP API as the command line uses it. Every error names the coordinator
//! URL and the server's own message.

use std::path::PathBuf;

use lockstep_proto::v1;
use lockstep_proto::Sha256Digest;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A blob to upload: a file, streamed from disk, or bytes in memory.
pub enum Upload {
    File(PathBuf),
    Bytes(Vec<u8>),
}

pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--coordinator {base:?} must be an http:// or https:// URL");
        }
        Ok(Api {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .context("building the HTTP client")?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        req.send().await.with_context(|| {
            format!(
                "{what}: cannot reach the coordinator at {} (is lockstep-coordinator running? set --coordinator or LOCKSTEP_COORDINATOR)",
                self.base
            )
        })
    }

    async fn ok(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("{what}: {msg} (HTTP {status})")
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)), path)
            .await?;
        Self::ok(resp, path)
            .await?
            .json()
            .await
            .context("decoding the answer")
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)), path)
            .await?;
        Ok(Self::ok(resp, path).await?.bytes().await?.to_vec())
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(
                self.http.post(format!("{}{path}", self.base)).json(body),
                path,
            )
            .await?;
        Self::ok(resp, path)
            .await?
            .json()
            .await
            .context("decoding the answer")
    }

    /// Like `post_json` but decodes a 422 answer too (enqueue reports per-package errors so).
    pub async fn post_json_lenient<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(
                self.http.post(format!("{}{path}", self.base)).json(body),
                path,
            )
            .await?;
        if resp.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            return resp.json().await.context("decoding the answer");
        }
        Self::ok(resp, path)
            .await?
            .json()
            .await
            .context("decoding the answer")
    }

    /// Uploads files and bytes as blobs with `POST /api/v1/blobs`: one request (one archive
    /// batch, all or nothing) per group of [`v1::blob_batches`]. Files are streamed from disk.
    pub async fn put_blobs(&self, items: Vec<(Sha256Digest, Upload)>) -> anyhow::Result<()> {
        let path = "/api/v1/blobs";
        let mut sizes = Vec::with_capacity(items.len());
        for (_, item) in &items {
            sizes.push(match item {
                Upload::File(p) => std::fs::metadata(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .len(),
                Upload::Bytes(b) => b.len() as u64,
            });
        }
        let mut items = items.into_iter();
        for group in v1::blob_batches(&sizes) {
            let mut form = reqwest::multipart::Form::new();
            for (digest, item) in items.by_ref().take(group.len()) {
                let part = match item {
                    Upload::File(p) => {
                        let f = tokio::fs::File::open(&p)
                            .await
                            .with_context(|| format!("opening {}", p.display()))?;
                        let len = f.metadata().await?.len();
                        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
                        reqwest::multipart::Part::stream_with_length(body, len)
                    }
                    Upload::Bytes(b) => {
                        let len = b.len() as u64;
                        reqwest::multipart::Part::stream_with_length(b, len)
                    }
                };
                form = form.part(digest.to_hex(), part);
            }
            let resp = self
                .send(
                    self.http
                        .post(format!("{}{path}", self.base))
                        .multipart(form),
                    path,
                )
                .await?;
            Self::ok(resp, path).await?;
        }
        Ok(())
    }
}
