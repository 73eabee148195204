//! The server-side audit: `POST /api/v1/audit` runs the archive's full check
//! ([`lockstep_archive::Archive::verify`]: every blob re-hashed, every record's leaf recomputed,
//! the tree rebuilt from the leaves and compared with every stored hash and checkpoint, the
//! immutability triggers present) and answers with the [`VerifyReport`] plus the alarms on record.
//!
//! It is what `lockstep verify` asks a remote coordinator by default; an auditor who does not
//! trust the coordinator also checks the log itself from the served tiles, and an operator with
//! disk access runs `lockstep verify --data-dir`.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lockstep_archive::{Alarm, VerifyReport};
use serde::{Deserialize, Serialize};

use crate::service::{Service, ServiceError};

/// What `POST /api/v1/audit` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditAnswer {
    #[serde(flatten)]
    pub report: VerifyReport,
    /// Log size when the audit ran.
    pub log_size: u64,
    /// Every alarm the archive ever raised (collisions, conflicts, inconsistencies).
    pub alarms: Vec<Alarm>,
    /// Seconds the audit took.
    pub seconds: f64,
}

impl Service {
    /// Runs the full archive audit.
    pub fn audit(&self) -> Result<AuditAnswer, ServiceError> {
        let started = std::time::Instant::now();
        let log_size = self.archive.log_size()?;
        let report = self.archive.verify()?;
        let alarms = self.archive.alarms()?;
        if !report.problems.is_empty() {
            tracing::error!(problems = report.problems.len(), first = %report.problems[0], "archive audit failed");
        }
        Ok(AuditAnswer {
            report,
            log_size,
            alarms,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Routes of this module, merged into the API router.
pub fn routes() -> Router<Arc<Service>> {
    Router::new().route("/api/v1/audit", post(post_audit))
}

async fn post_audit(AxState(svc): AxState<Arc<Service>>) -> Result<Response, crate::api::ApiError> {
    let answer = crate::api::blocking(move || svc.audit()).await?;
    Ok(Json(answer).into_response())
}

/// Whether an error was caused by a full volume (ENOSPC, EDQUOT, SQLite's "disk is full"): the
/// API answers 507 so clients know to retry once space is freed.
pub fn storage_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(28) | Some(122));
        }
        if let Some(lockstep_archive::ArchiveError::Io { source, .. }) =
            c.downcast_ref::<lockstep_archive::ArchiveError>()
        {
            return source.kind() == std::io::ErrorKind::StorageFull
                || matches!(source.raw_os_error(), Some(28) | Some(122));
        }
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = c.downcast_ref::<rusqlite::Error>() {
            return f.code == rusqlite::ErrorCode::DiskFull;
        }
        if let Some(lockstep_archive::ArchiveError::Db(rusqlite::Error::SqliteFailure(f, _))) =
            c.downcast_ref::<lockstep_archive::ArchiveError>()
        {
            return f.code == rusqlite::ErrorCode::DiskFull;
        }
        false
    })
}
