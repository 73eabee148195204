//! The coordinator's job table: which jobs exist and whether the broker confirmed them.
//!
//! This is operational state, not evidence: the evidence (the job's source digests, every
//! attestation and decision) lives in the archive as immutable records. What is mutable here is
//! only the dispatch bookkeeping — a job row is written before it is published (an outbox), and
//! `confirmed_at` is set once the broker confirmed it, so a crash between the two re-publishes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lockstep_proto::v1::Job;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// Idle read-only connections kept for [`JobStore::get`].
const MAX_IDLE_READERS: usize = 16;

/// A job row.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub job: Job,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub dispatch_error: Option<String>,
}

pub struct JobStore {
    path: PathBuf,
    /// The one writer (and the reader of everything but [`JobStore::get`]).
    conn: Mutex<Connection>,
    /// Idle read-only connections for [`JobStore::get`], which every attestation calls: in WAL
    /// mode they see every committed job without queueing behind each other or the writer.
    readers: Mutex<Vec<Connection>>,
}

impl JobStore {
    pub fn open(path: &Path) -> anyhow::Result<JobStore> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS jobs (
               job_id TEXT PRIMARY KEY,
               source TEXT NOT NULL,
               version TEXT NOT NULL,
               arch TEXT NOT NULL,
               job_json TEXT NOT NULL,
               created_at TEXT NOT NULL,
               confirmed_at TEXT,
               dispatch_error TEXT
             );
             CREATE INDEX IF NOT EXISTS jobs_key ON jobs(source, version, arch);
             CREATE INDEX IF NOT EXISTS jobs_unconfirmed ON jobs(confirmed_at) WHERE confirmed_at IS NULL;",
        )
        .context("creating the job table")?;
        Ok(JobStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back), so a
        // poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, job: &Job) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO jobs (job_id, source, version, arch, job_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                job.job_id,
                job.source,
                job.version,
                job.arch,
                serde_json::to_string(job)?,
                job.enqueued_at.to_rfc3339()
            ],
        )?;
        Ok(())
    }

    pub fn mark_confirmed(&self, job_id: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE jobs SET confirmed_at = ?2, dispatch_error = NULL WHERE job_id = ?1",
            params![job_id, Utc::now().to_rfc3339()],
        )?;
        Ok(())
    }

    pub fn mark_dispatch_error(&self, job_id: &str, error: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE jobs SET dispatch_error = ?2 WHERE job_id = ?1",
            params![job_id, error],
        )?;
        Ok(())
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>, Option<String>)> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    }

    fn decode(rows: Vec<(String, Option<String>, Option<String>)>) -> anyhow::Result<Vec<JobRow>> {
        rows.into_iter()
            .map(|(json, confirmed, err)| {
                Ok(JobRow {
                    job: serde_json::from_str(&json).context("decoding a stored job")?,
                    confirmed_at: confirmed
                        .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
                        .map(|c| c.with_timezone(&Utc)),
                    dispatch_error: err,
                })
            })
            .collect()
    }

    pub fn get(&self, job_id: &str) -> anyhow::Result<Option<JobRow>> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .with_context(|| format!("opening {} to read", self.path.display()))?,
        };
        let row = conn
            .prepare_cached(
                "SELECT job_json, confirmed_at, dispatch_error FROM jobs WHERE job_id = ?1",
            )?
            .query_row(params![job_id], Self::row)
            .optional();
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        drop(idle);
        Ok(Self::decode(row?.into_iter().collect())?.pop())
    }

    /// Jobs for one (source, version, arch), oldest first.
    pub fn for_key(&self, source: &str, version: &str, arch: &str) -> anyhow::Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT job_json, confirmed_at, dispatch_error FROM jobs WHERE source = ?1 AND version = ?2 AND arch = ?3 ORDER BY created_at, rowid",
        )?;
        let rows = st
            .query_map(params![source, version, arch], Self::row)?
            .collect::<Result<Vec<_>, _>>()?;
        Self::decode(rows)
    }

    /// Jobs the broker has not confirmed yet.
    pub fn unconfirmed(&self, limit: usize) -> anyhow::Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT job_json, confirmed_at, dispatch_error FROM jobs WHERE confirmed_at IS NULL ORDER BY created_at, rowid LIMIT ?1",
        )?;
        let rows = st
            .query_map(params![limit as i64], Self::row)?
            .collect::<Result<Vec<_>, _>>()?;
        Self::decode(rows)
    }

    /// Every distinct (source, version, arch), optionally for one source, sorted.
    pub fn keys(&self, source: Option<&str>) -> anyhow::Result<Vec<(String, String, String)>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT DISTINCT source, version, arch FROM jobs WHERE ?1 IS NULL OR source = ?1 ORDER BY source, version, arch",
        )?;
        let rows = st
            .query_map(params![source], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn count_unconfirmed(&self) -> anyhow::Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM jobs WHERE confirmed_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}
