//! Witness cosignatures of the transparency log's checkpoints.
//!
//! A witness (`lockstep witness`) checks each new checkpoint against the last one it cosigned
//! and posts the checkpoint back with its C2SP tlog-cosignature line added
//! (`POST /api/v1/log/cosignatures`). The coordinator accepts a cosignature only when the note is
//! one of its own checkpoints (log signature valid, root equal to the stored tree at that size)
//! and the cosignature verifies with a witness key listed in the policy's `[[witnesses]]`.
//!
//! Cosignatures are kept in `<data_dir>/witness.sqlite`, append-only like the archive (UPDATE and
//! DELETE refused by triggers). They are not log records: a record per cosignature would grow the
//! log, which would need a new cosignature, forever.
//!
//! Serving: `GET /log/checkpoint` carries the cosignature lines stored for the latest
//! checkpoint; `GET /log/checkpoint.cosigned` is the newest checkpoint any witness cosigned.
//!
//! `require_witness = true` in the policy holds a ship: the status shows `pending` ("awaiting
//! witness cosignature") and the decision is not published until a checkpoint whose size covers
//! the decision's leaf carries a cosignature by a listed witness.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::State as AxState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use lockstep_archive::{cosign, proof, Record};
use lockstep_proto::policy::Policy;
use lockstep_proto::quorum::Outcome;
use lockstep_proto::v1::{Decision, State};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::service::{kind, Service, ServiceError};

/// Reason shown while a ship waits for a witness.
pub const AWAITING_WITNESS: &str = "awaiting witness cosignature";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cosignatures (
    id           INTEGER PRIMARY KEY,
    size         INTEGER NOT NULL,
    root         BLOB NOT NULL,
    witness_name TEXT NOT NULL,
    witness_key  TEXT NOT NULL,
    line         TEXT NOT NULL,
    timestamp    INTEGER NOT NULL,
    note         TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    UNIQUE (size, witness_key)
);
CREATE TRIGGER IF NOT EXISTS cosignatures_no_update BEFORE UPDATE ON cosignatures
    BEGIN SELECT RAISE(ABORT, 'cosignatures are immutable'); END;
CREATE TRIGGER IF NOT EXISTS cosignatures_no_delete BEFORE DELETE ON cosignatures
    BEGIN SELECT RAISE(ABORT, 'cosignatures are immutable'); END;
"#;

/// The append-only cosignature table.
pub struct Cosignatures {
    db: Mutex<Connection>,
}

impl std::fmt::Debug for Cosignatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosignatures").finish_non_exhaustive()
    }
}

/// One stored cosignature.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredCosignature {
    pub size: u64,
    pub witness_name: String,
    pub witness_key: String,
    pub timestamp: u64,
}

impl Cosignatures {
    pub fn open(path: &Path) -> anyhow::Result<Cosignatures> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the schema of {}", path.display()))?;
        Ok(Cosignatures {
            db: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-statement leaves no partial row (each insert is one statement).
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a cosignature unless this witness already cosigned this size. Returns whether a
    /// row was added.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        size: u64,
        root: &[u8; 32],
        name: &str,
        key: &str,
        line: &str,
        timestamp: u64,
        note: &str,
    ) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "INSERT INTO cosignatures (size, root, witness_name, witness_key, line, timestamp, \
             note, received_at) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE NOT EXISTS \
             (SELECT 1 FROM cosignatures WHERE size = ?1 AND witness_key = ?4)",
            params![
                i64::try_from(size)?,
                &root[..],
                name,
                key,
                line,
                i64::try_from(timestamp)?,
                note,
                Utc::now().to_rfc3339()
            ],
        )?;
        Ok(n == 1)
    }

    /// Signature lines stored for the checkpoint (size, root).
    fn lines_for(&self, size: u64, root: &[u8; 32]) -> anyhow::Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT line FROM cosignatures WHERE size = ?1 AND root = ?2 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![i64::try_from(size)?, &root[..]], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(rows)
    }

    /// Largest checkpoint size cosigned by one of `keys`.
    pub fn cosigned_size(&self, keys: &[String]) -> anyhow::Result<u64> {
        let conn = self.conn();
        let mut best = 0u64;
        let mut stmt =
            conn.prepare_cached("SELECT MAX(size) FROM cosignatures WHERE witness_key = ?1")?;
        for k in keys {
            let s: Option<i64> = stmt.query_row([k], |r| r.get(0))?;
            best = best.max(s.map_or(0, |s| u64::try_from(s).unwrap_or(0)));
        }
        Ok(best)
    }

    /// The newest cosigned checkpoint: (size, root, note as posted).
    fn newest(&self) -> anyhow::Result<Option<(u64, [u8; 32], String)>> {
        let row = self
            .conn()
            .query_row(
                "SELECT size, root, note FROM cosignatures ORDER BY size DESC, id DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(s, root, note)| {
            let root: [u8; 32] = root
                .try_into()
                .map_err(|_| anyhow::anyhow!("stored cosignature root is not 32 bytes"))?;
            Ok((u64::try_from(s)?, root, note))
        })
        .transpose()
    }

    /// Every cosignature, oldest first.
    pub fn all(&self) -> anyhow::Result<Vec<StoredCosignature>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT size, witness_name, witness_key, timestamp FROM cosignatures ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredCosignature {
                    size: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    witness_name: r.get(1)?,
                    witness_key: r.get(2)?,
                    timestamp: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// What `POST /api/v1/log/cosignatures` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct CosignAccepted {
    pub size: u64,
    /// Witness names whose cosignature was stored now (already stored ones are not repeated).
    pub stored: Vec<String>,
    /// Witness names whose cosignature on this checkpoint verified.
    pub verified: Vec<String>,
}

fn witness_keys(policy: &Policy) -> Vec<String> {
    policy.witnesses.iter().map(|w| w.key.clone()).collect()
}

impl Service {
    /// Accepts a checkpoint note that carries witness cosignatures.
    pub fn accept_cosignature(&self, note: &str) -> Result<CosignAccepted, ServiceError> {
        let info = proof::verify_checkpoint(note, &self.archive.verifier_key()).map_err(|e| {
            ServiceError::Forbidden(format!(
                "this is not a checkpoint of this log ({e}); cosign the note served at \
                 /log/checkpoint"
            ))
        })?;
        let size = self.archive.log_size()?;
        if info.size > size {
            return Err(ServiceError::Unprocessable(format!(
                "checkpoint size {} is beyond this log's size {size}",
                info.size
            )));
        }
        if self.archive.root_hash(info.size)? != info.root {
            return Err(ServiceError::Conflict(format!(
                "the cosigned checkpoint of size {} has a root this log's tree does not have: it \
                 was not issued from this log's current tree (split view or rewritten log) — \
                 run `lockstep verify`",
                info.size
            )));
        }
        let policy = self.policy();
        if policy.witnesses.is_empty() {
            return Err(ServiceError::Forbidden(
                "the policy lists no [[witnesses]]; add the witness's key (name and key as \
                 `lockstep witness` prints it) and reload the policy"
                    .into(),
            ));
        }
        let before = self.cosignatures.cosigned_size(&witness_keys(&policy))?;
        let lines =
            cosign::signature_lines(note).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let mut out = CosignAccepted {
            size: info.size,
            stored: Vec::new(),
            verified: Vec::new(),
        };
        let mut refusals = Vec::new();
        for w in &policy.witnesses {
            let v = match cosign::CosignatureVerifier::new(&w.key) {
                Ok(v) => v,
                Err(e) => {
                    refusals.push(format!("policy witness {}: {e}", w.name));
                    continue;
                }
            };
            let ts = match cosign::verify_cosignature(note, &w.key) {
                Ok(ts) => ts,
                Err(e) => {
                    refusals.push(format!("{}: {e}", w.name));
                    continue;
                }
            };
            let name = signed_note::Verifier::name(&v).to_owned();
            let id = signed_note::Verifier::key_id(&v);
            let Some(line) = lines.iter().find(|l| l.name() == name && l.id() == id) else {
                continue;
            };
            let line = String::from_utf8_lossy(&line.to_bytes()).into_owned();
            if self
                .cosignatures
                .insert(info.size, &info.root, &w.name, &w.key, &line, ts, note)?
            {
                out.stored.push(w.name.clone());
            }
            out.verified.push(w.name.clone());
        }
        if out.verified.is_empty() {
            return Err(ServiceError::Forbidden(format!(
                "no valid cosignature by a witness listed in the policy ({}); list the witness \
                 under [[witnesses]] with the key `lockstep witness` prints",
                refusals.join("; ")
            )));
        }
        tracing::info!(size = info.size, witnesses = ?out.verified, "checkpoint cosigned");
        let after = self.cosignatures.cosigned_size(&witness_keys(&policy))?;
        if policy.require_witness && after > before {
            self.publish_witnessed(before, after)?;
            // Newly witnessed ship decisions enter the apt repository now.
            self.publish_apt();
        }
        Ok(out)
    }

    /// Publishes ship decisions whose leaves became covered by a cosigned checkpoint.
    fn publish_witnessed(&self, before: u64, after: u64) -> Result<(), ServiceError> {
        let Some(d) = self.dispatcher() else {
            return Ok(());
        };
        for (s, v, a) in self.jobs.keys(None)? {
            let decisions = self.archive.records_for(&s, &v, &a, Some(kind::DECISION))?;
            let Some(last) = decisions.last() else {
                continue;
            };
            if !(before..after).contains(&last.leaf_index) {
                continue;
            }
            let decision: Decision =
                serde_json::from_slice(&last.body).context("decoding a stored decision")?;
            if decision.state == State::Ship {
                tracing::info!(source = %s, version = %v, arch = %a, "witnessed: publishing ship");
                d.publish_decision(decision);
            }
        }
        Ok(())
    }

    /// Whether a ship decision at `leaf` must still wait for a witness under `policy`.
    pub fn awaits_witness(&self, policy: &Policy, state: State, leaf: u64) -> bool {
        if !policy.require_witness || state != State::Ship {
            return false;
        }
        match self.cosignatures.cosigned_size(&witness_keys(policy)) {
            Ok(size) => size <= leaf,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reading cosignatures; holding");
                true
            }
        }
    }

    /// Turns a ship outcome into pending while its decision is not witnessed (status view).
    pub fn witness_gate(
        &self,
        policy: &Policy,
        records: &[Record],
        mut outcome: Outcome,
    ) -> Outcome {
        if !policy.require_witness || outcome.state != State::Ship {
            return outcome;
        }
        let leaf = records
            .iter()
            .rev()
            .find(|r| r.kind == kind::DECISION)
            .map_or(u64::MAX, |r| r.leaf_index);
        if self.awaits_witness(policy, outcome.state, leaf) {
            outcome.state = State::Pending;
            outcome.reason = format!(
                "{AWAITING_WITNESS}: the builders agree, but no checkpoint covering the decision \
                 (leaf {leaf}) is cosigned by a witness listed in the policy yet"
            );
        }
        outcome
    }

    /// A checkpoint note with the stored cosignature lines for it appended.
    pub fn with_cosignatures(&self, note: &str) -> String {
        let Ok(info) = proof::verify_checkpoint(note, &self.archive.verifier_key()) else {
            return note.to_owned();
        };
        match self.cosignatures.lines_for(info.size, &info.root) {
            Ok(lines) => {
                let mut out = note.to_owned();
                for l in lines {
                    if !out.contains(&l) {
                        out.push_str(&l);
                    }
                }
                out
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reading cosignatures");
                note.to_owned()
            }
        }
    }

    /// The newest checkpoint any witness cosigned, with the log's signature and every stored
    /// cosignature line for it.
    pub fn newest_cosigned_checkpoint(&self) -> Result<Option<String>, ServiceError> {
        let Some((size, root, note)) = self.cosignatures.newest()? else {
            return Ok(None);
        };
        let origin = self.archive.origin().to_owned();
        let (body, _) = note
            .split_once("\n\n")
            .context("a stored cosigned note has no signature block")?;
        let log_line = cosign::signature_lines(&note)
            .map_err(|e| ServiceError::Internal(anyhow::anyhow!(e)))?
            .into_iter()
            .find(|l| l.name() == origin)
            .context("a stored cosigned note lacks the log's signature")?;
        let mut out = format!(
            "{body}\n\n{}",
            String::from_utf8_lossy(&log_line.to_bytes())
        );
        for l in self.cosignatures.lines_for(size, &root)? {
            out.push_str(&l);
        }
        Ok(Some(out))
    }
}

#[derive(Deserialize)]
struct CosignRequest {
    /// The checkpoint note with the witness's cosignature line(s) added.
    note: String,
}

/// Routes of this module, merged into the API router.
pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route(
            "/api/v1/log/cosignatures",
            post(post_cosignature).get(list_cosignatures),
        )
        .route("/log/checkpoint.cosigned", get(cosigned_checkpoint))
}

async fn post_cosignature(
    AxState(svc): AxState<Arc<Service>>,
    Json(req): Json<CosignRequest>,
) -> Result<Response, crate::api::ApiError> {
    let acc = crate::api::blocking(move || svc.accept_cosignature(&req.note)).await?;
    Ok(Json(acc).into_response())
}

async fn list_cosignatures(
    AxState(svc): AxState<Arc<Service>>,
) -> Result<Response, crate::api::ApiError> {
    let all = crate::api::blocking(move || Ok(svc.cosignatures.all()?)).await?;
    Ok(Json(all).into_response())
}

async fn cosigned_checkpoint(
    AxState(svc): AxState<Arc<Service>>,
) -> Result<Response, crate::api::ApiError> {
    match crate::api::blocking(move || svc.newest_cosigned_checkpoint()).await? {
        Some(text) => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        None => Err(ServiceError::NotFound(
            "no checkpoint has been cosigned by a witness yet; run `lockstep witness`".into(),
        )
        .into()),
    }
}
