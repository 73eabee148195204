//! The coordinator's HTTP API as the command line uses it. Every error names the coordinator
//! URL and the server's own message.

use std::path::Path;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

    pub async fn put_bytes(&self, sha256: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let path = format!("/api/v1/blobs/{sha256}");
        let resp = self
            .send(
                self.http.put(format!("{}{path}", self.base)).body(bytes),
                &path,
            )
            .await?;
        Self::ok(resp, &path).await?;
        Ok(())
    }

    pub async fn put_file(&self, sha256: &str, file: &Path) -> anyhow::Result<()> {
        let path = format!("/api/v1/blobs/{sha256}");
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let resp = self
            .send(
                self.http.put(format!("{}{path}", self.base)).body(body),
                &path,
            )
            .await?;
        Self::ok(resp, &path).await?;
        Ok(())
    }
}
