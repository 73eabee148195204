//! The one error type of the archive. Callers branch on its variants: a [`ArchiveError::Conflict`]
//! or [`ArchiveError::Collision`] is the client's (or an attacker's) doing and maps to HTTP 409; a
//! [`ArchiveError::DigestMismatch`] or [`ArchiveError::TooLarge`] to 400/413; [`ArchiveError::Io`],
//! [`ArchiveError::Db`] and [`ArchiveError::Corrupt`] are the server's problem (500) and must never
//! be retried blindly.

use std::io;

use lockstep_proto::digest::Sha256Digest;

/// Everything that can go wrong in the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The uploaded bytes do not hash to what the client announced. Nothing was stored.
    #[error(
        "uploaded bytes hash to {actual} but {expected} was expected; nothing was stored — \
         re-send the right file or correct the announced digest"
    )]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },

    /// A blob with this name exists but its bytes do not hash to its name: the store was altered
    /// behind the archive's back. An alarm has been recorded; the existing file was left alone.
    #[error(
        "blob {digest} already exists in the store but its content does not match its name \
         (corruption or tampering); the existing file was left untouched and an alarm recorded — \
         an operator must investigate (run `verify`)"
    )]
    Collision { digest: Sha256Digest },

    /// A record with this dedup key exists with different body bytes. An alarm has been recorded.
    #[error(
        "a record with dedup key {dedup_key:?} already exists with different content; records \
         are write-once — submit under a new key (e.g. a new job) instead of overwriting"
    )]
    Conflict { dedup_key: String },

    /// The upload exceeded the configured size limit. Nothing was stored.
    #[error("upload exceeds the size limit of {limit} bytes; nothing was stored — raise the limit or send a smaller file")]
    TooLarge { limit: u64 },

    /// The requested thing does not exist (yet).
    #[error("not found: {0}")]
    NotFound(String),

    /// A file-system operation failed. Writes are never acknowledged after such an error; a
    /// failed fsync is treated as fatal for that write and never retried.
    #[error("archive I/O error while {context}: {source}; nothing was acknowledged — check the archive volume (space, permissions, health)")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The SQLite database refused an operation.
    #[error(
        "archive database error: {0}; nothing was acknowledged — check the database file and disk"
    )]
    Db(#[from] rusqlite::Error),

    /// Stored state is inconsistent with itself (for example the log tree does not match an
    /// earlier checkpoint). An operator must investigate; run `verify` for the full list.
    #[error("archive state is inconsistent: {0}; run `verify` and investigate before trusting this archive")]
    Corrupt(String),

    /// The caller asked for something malformed or impossible.
    #[error("bad request: {0}")]
    BadRequest(String),

    /// Not stored because something it depends on was not stored (see
    /// [`crate::Archive::append_records_after`]). Nothing of it was stored; retrying re-reads
    /// what is stored now.
    #[error("not stored: {0}; nothing was stored — retry")]
    Aborted(String),
}

impl ArchiveError {
    /// An [`ArchiveError::Io`] with a short description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl ArchiveError {
    /// The same error again, for every caller of a group commit that failed as a whole. Keeps the
    /// variant, the message and what callers test (an I/O error's OS code and kind, SQLite's
    /// result code, e.g. "disk full").
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::DigestMismatch { expected, actual } => Self::DigestMismatch {
                expected: *expected,
                actual: *actual,
            },
            Self::Collision { digest } => Self::Collision { digest: *digest },
            Self::Conflict { dedup_key } => Self::Conflict {
                dedup_key: dedup_key.clone(),
            },
            Self::TooLarge { limit } => Self::TooLarge { limit: *limit },
            Self::NotFound(s) => Self::NotFound(s.clone()),
            Self::Io { context, source } => Self::Io {
                context: context.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            Self::Db(rusqlite::Error::SqliteFailure(code, msg)) => {
                Self::Db(rusqlite::Error::SqliteFailure(*code, msg.clone()))
            }
            Self::Db(other) => Self::Db(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(other.to_string()),
            )),
            Self::Corrupt(s) => Self::Corrupt(s.clone()),
            Self::BadRequest(s) => Self::BadRequest(s.clone()),
            Self::Aborted(s) => Self::Aborted(s.clone()),
        }
    }
}

impl From<io::Error> for ArchiveError {
    fn from(source: io::Error) -> Self {
        Self::io("accessing the archive", source)
    }
}

/// Shorthand for `.map_err(|e| ArchiveError::io(context, e))`.
pub(crate) fn io_ctx<C: Into<String>>(context: C) -> impl FnOnce(io::Error) -> ArchiveError {
    move |e| ArchiveError::io(context, e)
}
