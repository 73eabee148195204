//! Immutable records (attestations, failures, decisions, …), their blob links and alarms: the
//! types and the SQL that reads and writes them.
//!
//! A record is appended together with its log leaf in one transaction (see [`crate::log`]), so a
//! record exists if and only if it is in the log. Records carry an optional `dedup_key`: appending
//! the same key again with identical body bytes returns the existing record; with different bytes
//! it is a [`ArchiveError::Conflict`] — a record is never overwritten.

use chrono::{DateTime, SecondsFormat, Utc};
use lockstep_proto::digest::Sha256Digest;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::error::ArchiveError;
use crate::leaf::{self, LeafFields, MAX_LEAF_LEN};
use crate::log;

/// A blob a record refers to, e.g. a built `.deb` or a build log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLink {
    /// What the blob is to the record, e.g. "deb", "buildinfo", "log".
    pub role: String,
    /// File name the blob had, e.g. "hello_2.10-3_amd64.deb".
    pub name: String,
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// A record to append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecord {
    /// "attestation" | "failure" | "decision" | "source" | "developer-upload" | …
    pub kind: String,
    pub source: String,
    pub version: String,
    pub arch: String,
    pub job_id: Option<String>,
    /// Signer key fingerprint.
    pub signer: Option<String>,
    /// Idempotency key, e.g. `"attestation:<job_id>:<fingerprint>"`. None: always a new record.
    pub dedup_key: Option<String>,
    pub body: Vec<u8>,
    pub signature: Option<Vec<u8>>,
    pub blobs: Vec<BlobLink>,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: i64,
    pub kind: String,
    pub source: String,
    pub version: String,
    pub arch: String,
    pub job_id: Option<String>,
    pub signer: Option<String>,
    pub dedup_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub body: Vec<u8>,
    pub signature: Option<Vec<u8>>,
    pub body_sha256: Sha256Digest,
    pub leaf_index: u64,
    pub blobs: Vec<BlobLink>,
}

/// Where an appended record ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub id: i64,
    pub leaf_index: u64,
    /// `false` when an identical record with the same dedup key already existed.
    pub created: bool,
    pub body_sha256: Sha256Digest,
}

/// Something an operator must look at: a blob collision, a dedup conflict, a failed check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// "blob-collision" | "record-conflict" | "blob-corrupt" | "log-inconsistent" | …
    pub kind: String,
    /// What it is about: a digest, a dedup key, a log size.
    pub subject: String,
    pub detail: String,
}

/// The one textual time format stored and bound into leaves.
pub(crate) fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, ArchiveError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| ArchiveError::Corrupt(format!("stored timestamp {s:?} does not parse: {e}")))
}

pub(crate) fn digest_from_sql(bytes: &[u8], what: &str) -> Result<Sha256Digest, ArchiveError> {
    <[u8; 32]>::try_from(bytes)
        .map(Sha256Digest)
        .map_err(|_| ArchiveError::Corrupt(format!("{what} is {} bytes, not 32", bytes.len())))
}

fn u64_from_sql(v: i64, what: &str) -> Result<u64, ArchiveError> {
    u64::try_from(v).map_err(|_| ArchiveError::Corrupt(format!("{what} is negative ({v})")))
}

pub(crate) fn i64_from_u64(v: u64, what: &str) -> Result<i64, ArchiveError> {
    i64::try_from(v).map_err(|_| ArchiveError::BadRequest(format!("{what} {v} is too large")))
}

fn validate(rec: &NewRecord) -> Result<(), ArchiveError> {
    if rec.kind.is_empty() {
        return Err(ArchiveError::BadRequest(
            "record kind is empty; set e.g. \"attestation\"".into(),
        ));
    }
    if rec.dedup_key.as_deref() == Some("") {
        return Err(ArchiveError::BadRequest(
            "dedup_key is empty; use None for records that are always new".into(),
        ));
    }
    Ok(())
}

/// Appends one record (or finds its identical twin) inside the open transaction or savepoint `tx`.
/// On a dedup conflict returns `Conflict` and the caller must roll back and record the alarm.
pub(crate) fn append(
    tx: &Connection,
    rec: &NewRecord,
    now: &str,
) -> Result<RecordRef, ArchiveError> {
    validate(rec)?;
    let body_sha256 = Sha256Digest::of(&rec.body);
    if let Some(key) = &rec.dedup_key {
        let existing = tx
            .prepare_cached("SELECT id, leaf_index, body FROM records WHERE dedup_key = ?1")?
            .query_row([key], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()?;
        if let Some((id, leaf_index, body)) = existing {
            if body == rec.body {
                return Ok(RecordRef {
                    id,
                    leaf_index: u64_from_sql(leaf_index, "leaf_index")?,
                    created: false,
                    body_sha256,
                });
            }
            return Err(ArchiveError::Conflict {
                dedup_key: key.clone(),
            });
        }
    }

    let data = leaf::encode(&LeafFields {
        kind: &rec.kind,
        source: &rec.source,
        version: &rec.version,
        arch: &rec.arch,
        job_id: rec.job_id.as_deref(),
        signer: rec.signer.as_deref(),
        dedup_key: rec.dedup_key.as_deref(),
        created_at: now,
        body_sha256,
        signature: rec.signature.as_deref(),
        blobs: &rec.blobs,
    });
    if data.len() > MAX_LEAF_LEN {
        return Err(ArchiveError::BadRequest(format!(
            "record metadata is too large for one log entry ({} bytes, limit {MAX_LEAF_LEN}); \
             use fewer blob links or shorter names",
            data.len()
        )));
    }

    let leaf_index = log::size_in(tx)?;
    let leaf_index_sql = i64_from_u64(leaf_index, "leaf index")?;
    tx.prepare_cached(
        "INSERT INTO records (kind, source, version, arch, job_id, signer, dedup_key, created_at, \
         body, signature, body_sha256, leaf_index) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        rec.kind,
        rec.source,
        rec.version,
        rec.arch,
        rec.job_id,
        rec.signer,
        rec.dedup_key,
        now,
        rec.body,
        rec.signature,
        &body_sha256.0[..],
        leaf_index_sql,
    ])?;
    let id = tx.last_insert_rowid();
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO record_blobs (record_id, position, role, name, sha256, size) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (pos, b) in rec.blobs.iter().enumerate() {
            stmt.execute(params![
                id,
                i64_from_u64(pos as u64, "blob position")?,
                b.role,
                b.name,
                &b.sha256.0[..],
                i64_from_u64(b.size, "blob size")?,
            ])?;
        }
    }
    log::append_leaf(tx, leaf_index, id, &data)?;
    Ok(RecordRef {
        id,
        leaf_index,
        created: true,
        body_sha256,
    })
}

const RECORD_COLUMNS: &str = "id, kind, source, version, arch, job_id, signer, dedup_key, \
                              created_at, body, signature, body_sha256, leaf_index";

/// A records row before its blob links are attached and its fields are checked.
struct RawRecord {
    id: i64,
    kind: String,
    source: String,
    version: String,
    arch: String,
    job_id: Option<String>,
    signer: Option<String>,
    dedup_key: Option<String>,
    created_at: String,
    body: Vec<u8>,
    signature: Option<Vec<u8>>,
    body_sha256: Vec<u8>,
    leaf_index: i64,
}

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        source: r.get(2)?,
        version: r.get(3)?,
        arch: r.get(4)?,
        job_id: r.get(5)?,
        signer: r.get(6)?,
        dedup_key: r.get(7)?,
        created_at: r.get(8)?,
        body: r.get(9)?,
        signature: r.get(10)?,
        body_sha256: r.get(11)?,
        leaf_index: r.get(12)?,
    })
}

fn finish(conn: &Connection, raw: RawRecord) -> Result<Record, ArchiveError> {
    Ok(Record {
        blobs: links(conn, raw.id)?,
        id: raw.id,
        kind: raw.kind,
        source: raw.source,
        version: raw.version,
        arch: raw.arch,
        job_id: raw.job_id,
        signer: raw.signer,
        dedup_key: raw.dedup_key,
        created_at: parse_time(&raw.created_at)?,
        body: raw.body,
        signature: raw.signature,
        body_sha256: digest_from_sql(&raw.body_sha256, "body_sha256")?,
        leaf_index: u64_from_sql(raw.leaf_index, "leaf_index")?,
    })
}

/// The blob links of one record, in the order they were given.
pub(crate) fn links(conn: &Connection, id: i64) -> Result<Vec<BlobLink>, ArchiveError> {
    let mut stmt = conn.prepare_cached(
        "SELECT role, name, sha256, size FROM record_blobs WHERE record_id = ?1 ORDER BY position",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (role, name, sha, size) = row?;
        out.push(BlobLink {
            role,
            name,
            sha256: digest_from_sql(&sha, "record_blobs.sha256")?,
            size: u64_from_sql(size, "record_blobs.size")?,
        });
    }
    Ok(out)
}

fn query(
    conn: &Connection,
    sql_tail: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Record>, ArchiveError> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM records {sql_tail}");
    let mut stmt = conn.prepare_cached(&sql)?;
    let raws = stmt
        .query_map(params, raw)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(|r| finish(conn, r)).collect()
}

pub(crate) fn by_id(conn: &Connection, id: i64) -> Result<Option<Record>, ArchiveError> {
    Ok(query(conn, "WHERE id = ?1", [id])?.into_iter().next())
}

pub(crate) fn by_key(
    conn: &Connection,
    source: &str,
    version: &str,
    arch: &str,
    kind: Option<&str>,
) -> Result<Vec<Record>, ArchiveError> {
    match kind {
        Some(kind) => query(
            conn,
            "WHERE source = ?1 AND version = ?2 AND arch = ?3 AND kind = ?4 ORDER BY id",
            params![source, version, arch, kind],
        ),
        None => query(
            conn,
            "WHERE source = ?1 AND version = ?2 AND arch = ?3 ORDER BY id",
            params![source, version, arch],
        ),
    }
}

pub(crate) fn by_kind(conn: &Connection, kind: &str) -> Result<Vec<Record>, ArchiveError> {
    query(conn, "WHERE kind = ?1 ORDER BY id", [kind])
}

/// Like [`by_kind`], one record at a time: memory stays at one record however many there are.
pub(crate) fn each_by_kind(
    conn: &Connection,
    kind: &str,
    mut each: impl FnMut(Record) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM records WHERE kind = ?1 ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([kind])?;
    while let Some(row) = rows.next()? {
        each(finish(conn, raw(row)?)?)?;
    }
    Ok(())
}

pub(crate) fn with_blob(conn: &Connection, d: &Sha256Digest) -> Result<Vec<Record>, ArchiveError> {
    query(
        conn,
        "WHERE id IN (SELECT record_id FROM record_blobs WHERE sha256 = ?1) ORDER BY id",
        [&d.0[..]],
    )
}

/// Records an alarm in its own transaction and logs it at ERROR level.
pub(crate) fn raise_alarm(
    conn: &Connection,
    kind: &str,
    subject: &str,
    detail: &str,
) -> Result<(), ArchiveError> {
    tracing::error!(alarm = kind, subject, detail, "archive alarm");
    conn.prepare_cached("INSERT INTO alarms (at, kind, subject, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![format_time(&Utc::now()), kind, subject, detail])?;
    Ok(())
}

pub(crate) fn alarms(conn: &Connection) -> Result<Vec<Alarm>, ArchiveError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, at, kind, subject, detail FROM alarms ORDER BY id")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(id, at, kind, subject, detail)| {
            Ok(Alarm {
                id,
                at: parse_time(&at)?,
                kind,
                subject,
                detail,
            })
        })
        .collect()
}

/// Registers a stored blob (idempotent: a second registration of the same digest is ignored).
pub(crate) fn register_blob(
    conn: &Connection,
    d: &Sha256Digest,
    size: u64,
) -> Result<(), ArchiveError> {
    // Not `INSERT OR IGNORE`: the immutability trigger aborts on a key clash before IGNORE applies.
    conn.prepare_cached(
        "INSERT INTO blobs (sha256, size, stored_at) SELECT ?1, ?2, ?3 \
         WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE sha256 = ?1)",
    )?
    .execute(params![
        &d.0[..],
        i64_from_u64(size, "blob size")?,
        format_time(&Utc::now())
    ])?;
    Ok(())
}

/// Every registered blob with its recorded size.
pub(crate) fn registered_blobs(
    conn: &Connection,
) -> Result<Vec<(Sha256Digest, u64)>, ArchiveError> {
    let mut stmt = conn.prepare_cached("SELECT sha256, size FROM blobs ORDER BY sha256")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(d, s)| {
            Ok((
                digest_from_sql(&d, "blobs.sha256")?,
                u64_from_sql(s, "blobs.size")?,
            ))
        })
        .collect()
}

/// A record row as the audit sees it: the leaf recomputed from the raw stored columns.
pub(crate) struct StoredRecordLeaf {
    pub leaf: Vec<u8>,
    pub body_hash_ok: bool,
    pub leaf_index: i64,
}

/// Recomputes the leaf of record `id` from its stored columns exactly as written (the timestamp
/// string is used verbatim, not re-formatted).
pub(crate) fn stored_leaf(
    conn: &Connection,
    id: i64,
) -> Result<Option<StoredRecordLeaf>, ArchiveError> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1");
    let Some(r) = conn.prepare_cached(&sql)?.query_row([id], raw).optional()? else {
        return Ok(None);
    };
    let body_sha256 = digest_from_sql(&r.body_sha256, "body_sha256")?;
    let blobs = links(conn, id)?;
    let leaf = leaf::encode(&LeafFields {
        kind: &r.kind,
        source: &r.source,
        version: &r.version,
        arch: &r.arch,
        job_id: r.job_id.as_deref(),
        signer: r.signer.as_deref(),
        dedup_key: r.dedup_key.as_deref(),
        created_at: &r.created_at,
        body_sha256,
        signature: r.signature.as_deref(),
        blobs: &blobs,
    });
    Ok(Some(StoredRecordLeaf {
        leaf,
        body_hash_ok: Sha256Digest::of(&r.body) == body_sha256,
        leaf_index: r.leaf_index,
    }))
}
