//! The SQLite database `archive.sqlite`: connection settings and schema.
//!
//! Every table is append-only, enforced by the database itself: `BEFORE UPDATE` and
//! `BEFORE DELETE` triggers abort with "`<table>` are immutable". `recursive_triggers` is on so an
//! `INSERT OR REPLACE` (which deletes the old row) would fire them too, and a `BEFORE INSERT`
//! trigger refuses any row that collides with an existing key, which also stops `REPLACE` from
//! connections that did not turn `recursive_triggers` on. The crate itself only ever uses plain
//! `INSERT`.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a commit is on disk before it returns.
//! Temporary storage (savepoint journals, sorts) is in memory: it is never needed after a crash.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::ArchiveError;

/// Schema version stored in `PRAGMA user_version`.
///
/// 2: `log_hashes` no longer receives level-0 (leaf) hashes; readers recompute them from
/// `log_leaves`. A version-1 archive opens unchanged (its leaf-hash rows stay and are checked by
/// `verify`); a build that knows only version 1 would need those rows, so it is refused.
const SCHEMA_VERSION: i64 = 2;

/// How long a connection waits for another writer (another process, or `verify`'s reader during a
/// checkpoint) before giving up with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Tables whose rows can never change once written, each with its unique keys. Every table gets
/// an UPDATE, a DELETE and an INSERT trigger; the INSERT trigger refuses a row that collides with
/// an existing key, so `INSERT OR REPLACE` (which deletes the old row, and fires DELETE triggers
/// only on connections that enabled `recursive_triggers`) cannot overwrite from any connection.
pub(crate) const IMMUTABLE_TABLES: &[(&str, &[&str])] = &[
    ("blobs", &["sha256"]),
    ("records", &["id", "dedup_key", "leaf_index"]),
    ("record_blobs", &["record_id, position"]),
    ("log_leaves", &["leaf_index", "record_id"]),
    ("log_hashes", &["idx"]),
    ("checkpoints", &["id"]),
    ("alarms", &["id"]),
];

/// The trigger operations, as (name suffix, SQL verb).
pub(crate) const TRIGGER_OPS: &[(&str, &str)] = &[
    ("update", "UPDATE"),
    ("delete", "DELETE"),
    ("replace", "INSERT"),
];

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS blobs (
    sha256     BLOB PRIMARY KEY,
    size       INTEGER NOT NULL,
    stored_at  TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS records (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    source       TEXT NOT NULL,
    version      TEXT NOT NULL,
    arch         TEXT NOT NULL,
    job_id       TEXT,
    signer       TEXT,
    dedup_key    TEXT UNIQUE,
    created_at   TEXT NOT NULL,
    body         BLOB NOT NULL,
    signature    BLOB,
    body_sha256  BLOB NOT NULL,
    leaf_index   INTEGER NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS records_by_key ON records (source, version, arch, id);
CREATE INDEX IF NOT EXISTS records_by_kind ON records (kind, id);

CREATE TABLE IF NOT EXISTS record_blobs (
    record_id  INTEGER NOT NULL REFERENCES records (id),
    position   INTEGER NOT NULL,
    role       TEXT NOT NULL,
    name       TEXT NOT NULL,
    sha256     BLOB NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (record_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS record_blobs_by_digest ON record_blobs (sha256, record_id);

CREATE TABLE IF NOT EXISTS log_leaves (
    leaf_index  INTEGER PRIMARY KEY,
    record_id   INTEGER NOT NULL UNIQUE REFERENCES records (id),
    data        BLOB NOT NULL
);

-- tlog "stored hashes": idx is tlog_tiles::stored_hash_index(level, n), levels >= 1 only; a
-- leaf hash (level 0) is recomputed from log_leaves.data. Archives written before that change
-- also hold level-0 rows for a prefix of the leaves; they are kept, never read, and audited.
CREATE TABLE IF NOT EXISTS log_hashes (
    idx   INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL
);

CREATE TABLE IF NOT EXISTS checkpoints (
    id          INTEGER PRIMARY KEY,
    size        INTEGER NOT NULL,
    root        BLOB NOT NULL,
    note        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS alarms (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
"#;

/// Name of the trigger guarding `table` against `op` ("update" or "delete").
pub(crate) fn trigger_name(table: &str, op: &str) -> String {
    format!("{table}_no_{op}")
}

fn triggers_sql() -> String {
    let mut sql = String::new();
    for (table, keys) in IMMUTABLE_TABLES {
        for (op, verb) in TRIGGER_OPS {
            let when = if *verb == "INSERT" {
                // (a, b) = (NEW.a, NEW.b) for each unique key; NULL keys never match.
                let clash = keys
                    .iter()
                    .map(|cols| {
                        let new: Vec<String> =
                            cols.split(", ").map(|c| format!("NEW.{c}")).collect();
                        format!("({cols}) = ({})", new.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(" OR ");
                format!("WHEN EXISTS (SELECT 1 FROM {table} WHERE {clash}) ")
            } else {
                String::new()
            };
            sql.push_str(&format!(
                "CREATE TRIGGER IF NOT EXISTS {name} BEFORE {verb} ON {table} {when}\
                 BEGIN SELECT RAISE(ABORT, '{table} are immutable'); END;\n",
                name = trigger_name(table, op),
            ));
        }
    }
    sql
}

fn configure(conn: &Connection) -> Result<(), ArchiveError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "recursive_triggers", true)?;
    Ok(())
}

/// Opens the read-write connection, creating the schema on first use.
pub(crate) fn open(path: &Path) -> Result<Connection, ArchiveError> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ArchiveError::Corrupt(format!(
            "could not switch {} to WAL mode (got {mode:?})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Group commits put each caller in a savepoint; its rollback journal (and any temporary
    // sort) stays in memory instead of a temporary file. Crash recovery never reads it: the WAL
    // alone decides what was committed.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoint the WAL into the database every 8,192 pages (32 MiB) instead of SQLite's 1,000:
    // the pages every commit rewrites (b-tree roots, the right-most leaves) are copied back once
    // per checkpoint, so fewer checkpoints copy fewer pages (issue 7, P3: 3 % of the CPU).
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;

    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(ArchiveError::Corrupt(format!(
            "{} has schema version {version}, newer than this build understands \
             ({SCHEMA_VERSION}); upgrade lockstep",
            path.display()
        )));
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(&triggers_sql())?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(conn)
}

/// Opens a read-only connection for audits: it reads a consistent WAL snapshot without
/// blocking appends.
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, ArchiveError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}
