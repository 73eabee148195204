//! The transparency log: an RFC 6962 Merkle tree over record leaves, stored as tlog "stored
//! hashes", served as C2SP tlog-tiles and committed to by signed-note checkpoints.
//!
//! Storage. `log_leaves` holds the leaf data (see [`crate::leaf`]); `log_hashes` holds the tlog
//! "stored hashes" of levels 1 and up, each at `tlog_tiles::stored_hash_index(level, n)` — the
//! Crosby–Wallach layout also used by Go's sumdb. Level-0 hashes, the leaf hashes, are not stored:
//! [`SqlHashes`] recomputes them as `tlog_tiles::record_hash` of the leaf data, which `log_leaves`
//! keeps anyway, so the log costs about one 32-byte hash per leaf instead of two. Appending leaf
//! `n` writes on average one hash and reads at most log₂ n earlier ones (one of them a leaf,
//! re-hashed; [`tlog_tiles::stored_hashes`]), so appends never recompute the tree. Tiles are not
//! stored separately: a tile is a run of stored hashes (for level 0, of leaves hashed on the fly),
//! read on demand with [`tlog_tiles::Tile::read_data`].
//!
//! Archives written before leaf hashes were dropped also hold level-0 rows in `log_hashes`, for a
//! prefix of the leaves. They stay as they are (the table is write-once): reads never use them,
//! appends simply stop adding them, and `verify` checks each against its leaf.
//!
//! Tile paths. `tlog_tiles` 0.2 formats Go-sumdb paths (`tile/H/L/NNN`), which carry the tile
//! height; C2SP tlog-tiles fixes the height at 8 and drops it (`tile/L/NNN[.p/W]`,
//! `tile/entries/NNN[.p/W]`), so the small path parser/formatter here is written for the C2SP form.
//!
//! Checkpoints. A checkpoint is the C2SP tlog-checkpoint body (`origin\nsize\nbase64 root\n`,
//! formatted by [`tlog_tiles::Checkpoint`]) signed as a signed note with the log's Ed25519 key
//! (`signed_note`). Before signing a new size, the tree as currently stored must reproduce the
//! previous checkpoint's root; if it does not, nothing is signed and an alarm is raised.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::prelude::*;
use chrono::Utc;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use signed_note::{Note, StandardSigner};
use tlog_tiles::{Checkpoint, Hash, HashReader, Tile, HASH_SIZE};

use crate::error::{io_ctx, ArchiveError};
use crate::records::{self, format_time, i64_from_u64};

/// C2SP tlog-tiles tile height: 2⁸ = 256 hashes or entries per full tile.
pub const TILE_HEIGHT: u8 = 8;
/// Entries (or hashes) in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// Reads stored hashes for the tlog algorithms. Level-0 hashes (leaf hashes) are recomputed from
/// the leaf data in `log_leaves`; every higher level is read from `log_hashes`.
pub(crate) struct SqlHashes<'a>(pub &'a Connection);

/// A database error, in the form [`tlog_err`] reports as corruption of stored data.
fn db_err(e: rusqlite::Error) -> tlog_tiles::Error {
    tlog_tiles::Error::InvalidInput(format!("database: {e}"))
}

fn leaf_index_sql(n: u64) -> Result<i64, tlog_tiles::Error> {
    i64::try_from(n).map_err(|_| tlog_tiles::Error::IndexesNotInTree)
}

impl SqlHashes<'_> {
    /// Leaf hashes of leaves `first..first + out.len()`, written into `out`.
    fn leaf_hashes(&self, first: u64, out: &mut [Hash]) -> Result<(), tlog_tiles::Error> {
        if let [one] = out {
            let data: Vec<u8> = self
                .0
                .prepare_cached("SELECT data FROM log_leaves WHERE leaf_index = ?1")
                .map_err(db_err)?
                .query_row([leaf_index_sql(first)?], |r| r.get(0))
                .optional()
                .map_err(db_err)?
                .ok_or(tlog_tiles::Error::IndexesNotInTree)?;
            *one = tlog_tiles::record_hash(&data);
            return Ok(());
        }
        let end = first
            .checked_add(out.len() as u64)
            .ok_or(tlog_tiles::Error::IndexesNotInTree)?;
        let mut stmt = self
            .0
            .prepare_cached(
                "SELECT leaf_index, data FROM log_leaves \
                 WHERE leaf_index >= ?1 AND leaf_index < ?2 ORDER BY leaf_index",
            )
            .map_err(db_err)?;
        let mut rows = stmt
            .query([leaf_index_sql(first)?, leaf_index_sql(end)?])
            .map_err(db_err)?;
        let mut want = first;
        while let Some(row) = rows.next().map_err(db_err)? {
            let index: i64 = row.get(0).map_err(db_err)?;
            // Rows come in order from a primary-key range, so a gap shows as a skipped index.
            if u64::try_from(index).ok() != Some(want) {
                return Err(tlog_tiles::Error::IndexesNotInTree);
            }
            let data = row.get_ref(1).map_err(db_err)?.as_blob().map_err(|e| {
                tlog_tiles::Error::InvalidInput(format!("database: leaf {index} data: {e}"))
            })?;
            // `want - first` < out.len(): the range query returns at most that many rows.
            out[(want - first) as usize] = tlog_tiles::record_hash(data);
            want += 1;
        }
        if want != end {
            return Err(tlog_tiles::Error::IndexesNotInTree);
        }
        Ok(())
    }

    /// The stored hash at `idx` (level >= 1) from `log_hashes`.
    fn stored_hash(&self, idx: u64) -> Result<Hash, tlog_tiles::Error> {
        let idx = i64::try_from(idx).map_err(|_| tlog_tiles::Error::IndexesNotInTree)?;
        let bytes: Vec<u8> = self
            .0
            .prepare_cached("SELECT hash FROM log_hashes WHERE idx = ?1")
            .map_err(db_err)?
            .query_row([idx], |r| r.get(0))
            .optional()
            .map_err(db_err)?
            .ok_or(tlog_tiles::Error::IndexesNotInTree)?;
        let hash: [u8; HASH_SIZE] = bytes
            .try_into()
            .map_err(|_| tlog_tiles::Error::MalformedHash)?;
        Ok(Hash(hash))
    }
}

impl HashReader for SqlHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        let mut out = vec![Hash([0; HASH_SIZE]); indexes.len()];
        let mut i = 0;
        while i < indexes.len() {
            let (level, n) = tlog_tiles::split_stored_hash_index(indexes[i]);
            if level != 0 {
                out[i] = self.stored_hash(indexes[i])?;
                i += 1;
                continue;
            }
            // A run of consecutive leaves (a level-0 tile asks for 256) is read in one query.
            let mut end = i + 1;
            while end < indexes.len()
                && tlog_tiles::split_stored_hash_index(indexes[end]) == (0, n + (end - i) as u64)
            {
                end += 1;
            }
            self.leaf_hashes(n, &mut out[i..end])?;
            i = end;
        }
        Ok(out)
    }
}

/// Maps a tlog error on *stored* data to an archive error.
fn tlog_err(what: &str) -> impl FnOnce(tlog_tiles::Error) -> ArchiveError + '_ {
    move |e| match e {
        tlog_tiles::Error::InvalidInput(msg) if !msg.starts_with("database:") => {
            ArchiveError::BadRequest(format!("{what}: {msg}"))
        }
        other => ArchiveError::Corrupt(format!("{what}: stored log hashes unusable: {other}")),
    }
}

/// Number of leaves in the log.
pub(crate) fn size_in(conn: &Connection) -> Result<u64, ArchiveError> {
    let n: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM log_leaves")?
        .query_row([], |r| r.get(0))?;
    u64::try_from(n).map_err(|_| ArchiveError::Corrupt(format!("log size {n} is negative")))
}

/// Appends leaf `index` (which must be the current size) and the stored hashes of the subtrees
/// it completes (levels >= 1; its own leaf hash is recomputed from the data when read).
pub(crate) fn append_leaf(
    conn: &Connection,
    index: u64,
    record_id: i64,
    data: &[u8],
) -> Result<(), ArchiveError> {
    let index_sql = i64_from_u64(index, "leaf index")?;
    conn.prepare_cached(
        "INSERT INTO log_leaves (leaf_index, record_id, data) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![index_sql, record_id, data])?;
    let hashes =
        tlog_tiles::stored_hashes(index, data, &SqlHashes(conn)).map_err(tlog_err("append"))?;
    let base = tlog_tiles::stored_hash_index(0, index);
    let mut stmt = conn.prepare_cached("INSERT INTO log_hashes (idx, hash) VALUES (?1, ?2)")?;
    for (i, h) in hashes.iter().enumerate() {
        let idx = base + i as u64;
        // The level-0 hash (first in the list) is the leaf hash: `log_leaves` already holds
        // what it is computed from, so it is not stored.
        if tlog_tiles::split_stored_hash_index(idx).0 == 0 {
            continue;
        }
        stmt.execute(params![i64_from_u64(idx, "stored hash index")?, &h.0[..]])?;
    }
    Ok(())
}

fn check_size(conn: &Connection, size: u64) -> Result<(), ArchiveError> {
    let current = size_in(conn)?;
    if size > current {
        return Err(ArchiveError::BadRequest(format!(
            "tree size {size} is beyond the log's current size {current}"
        )));
    }
    Ok(())
}

/// Root hash of the tree of the first `size` leaves.
pub(crate) fn root_hash(conn: &Connection, size: u64) -> Result<[u8; 32], ArchiveError> {
    check_size(conn, size)?;
    Ok(tlog_tiles::tree_hash(size, &SqlHashes(conn))
        .map_err(tlog_err("root hash"))?
        .0)
}

pub(crate) fn inclusion_proof(
    conn: &Connection,
    index: u64,
    size: u64,
) -> Result<Vec<[u8; 32]>, ArchiveError> {
    check_size(conn, size)?;
    if index >= size {
        return Err(ArchiveError::BadRequest(format!(
            "leaf {index} is not in a tree of size {size}"
        )));
    }
    let proof = tlog_tiles::prove_record(size, index, &SqlHashes(conn))
        .map_err(tlog_err("inclusion proof"))?;
    Ok(proof.into_iter().map(|h| h.0).collect())
}

pub(crate) fn consistency_proof(
    conn: &Connection,
    old: u64,
    new: u64,
) -> Result<Vec<[u8; 32]>, ArchiveError> {
    check_size(conn, new)?;
    if old > new {
        return Err(ArchiveError::BadRequest(format!(
            "old size {old} is larger than new size {new}"
        )));
    }
    if old == 0 {
        // Every tree extends the empty tree; RFC 9162 defines no proof for it, so it is empty.
        return Ok(Vec::new());
    }
    let proof = tlog_tiles::prove_tree(new, old, &SqlHashes(conn))
        .map_err(tlog_err("consistency proof"))?;
    Ok(proof.into_iter().map(|h| h.0).collect())
}

// ---- tiles ----

/// A parsed C2SP tile path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TilePath {
    /// `None` for an entry bundle, else the hash-tile level.
    pub level: Option<u8>,
    pub n: u64,
    /// 1..=256; 256 is a full tile.
    pub width: u32,
}

/// Formats a tile index the C2SP way: groups of three digits, all but the last prefixed "x".
fn format_index(mut n: u64) -> String {
    let mut s = format!("{:03}", n % 1000);
    while n >= 1000 {
        n /= 1000;
        s = format!("x{:03}/{s}", n % 1000);
    }
    s
}

pub(crate) fn format_tile_path(t: &TilePath) -> String {
    let level = t
        .level
        .map_or_else(|| "entries".to_string(), |l| l.to_string());
    let partial = if u64::from(t.width) == TILE_WIDTH {
        String::new()
    } else {
        format!(".p/{}", t.width)
    };
    format!("tile/{level}/{}{partial}", format_index(t.n))
}

/// Parses `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`; anything non-canonical is None.
pub(crate) fn parse_tile_path(path: &str) -> Option<TilePath> {
    if path.len() > 64 {
        return None;
    }
    let rest = path.strip_prefix("tile/")?;
    let (first, rest) = rest.split_once('/')?;
    let level = if first == "entries" {
        None
    } else {
        let l: u8 = first.parse().ok()?;
        (l < 64).then_some(l)?;
        Some(l)
    };
    let (index_part, width) = match rest.rsplit_once('/') {
        Some((before, w)) if before.ends_with(".p") => {
            let w: u32 = w.parse().ok()?;
            if w == 0 || u64::from(w) >= TILE_WIDTH {
                return None;
            }
            (before.strip_suffix(".p")?, w)
        }
        _ => (rest, TILE_WIDTH as u32),
    };
    let groups: Vec<&str> = index_part.split('/').collect();
    let mut n: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let digits = if i + 1 < groups.len() {
            g.strip_prefix('x')?
        } else {
            g
        };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let d: u64 = digits.parse().ok()?;
        n = n.checked_mul(1000)?.checked_add(d)?;
    }
    let t = TilePath { level, n, width };
    // Reject leading zero groups ("x000/001") and other spellings of the same tile.
    (format_tile_path(&t) == path).then_some(t)
}

/// The bytes of a tile, or None if it does not exist (yet) for the current tree.
pub(crate) fn tile(conn: &Connection, path: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
    let Some(t) = parse_tile_path(path) else {
        return Err(ArchiveError::BadRequest(format!(
            "{path:?} is not a tlog-tiles path (expected tile/<L>/<N>[.p/<W>] or \
             tile/entries/<N>[.p/<W>])"
        )));
    };
    let size = size_in(conn)?;
    let Some(start) = t.n.checked_mul(TILE_WIDTH) else {
        return Ok(None);
    };
    let Some(end) = start.checked_add(u64::from(t.width)) else {
        return Ok(None);
    };
    match t.level {
        None => {
            if end > size {
                return Ok(None);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT data FROM log_leaves WHERE leaf_index >= ?1 AND leaf_index < ?2 \
                 ORDER BY leaf_index",
            )?;
            let rows = stmt
                .query_map(
                    [
                        i64_from_u64(start, "leaf index")?,
                        i64_from_u64(end, "leaf index")?,
                    ],
                    |r| r.get::<_, Vec<u8>>(0),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if rows.len() as u64 != end - start {
                return Err(ArchiveError::Corrupt(format!(
                    "log leaves {start}..{end} are incomplete ({} found)",
                    rows.len()
                )));
            }
            let mut out = Vec::new();
            for data in rows {
                let len = u16::try_from(data.len()).map_err(|_| {
                    ArchiveError::Corrupt(format!(
                        "a leaf in {start}..{end} is {} bytes, too long for an entry bundle",
                        data.len()
                    ))
                })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&data);
            }
            Ok(Some(out))
        }
        Some(level) => {
            let shift = u32::from(level) * u32::from(TILE_HEIGHT);
            // Hashes that exist at this level: one per complete subtree of 256^level leaves.
            let available = if shift >= 64 { 0 } else { size >> shift };
            if end > available {
                return Ok(None);
            }
            // level < 8 here (available > 0 needs shift < 64), so Tile::new's checks hold and
            // its internal `h * l` (u8) cannot overflow.
            let tile = Tile::new(TILE_HEIGHT, level, t.n, t.width, false);
            let data = tile
                .read_data(&SqlHashes(conn))
                .map_err(tlog_err("hash tile"))?;
            Ok(Some(data))
        }
    }
}

// ---- the log key and checkpoints ----

/// The log's signing identity.
pub(crate) struct LogKey {
    pub signer: StandardSigner,
    pub verifier_key: String,
}

/// Loads the 32-byte Ed25519 seed from `path`, creating it (mode 0600) on first use.
pub(crate) fn load_or_create_key(path: &Path, origin: &str) -> Result<LogKey, ArchiveError> {
    if !signed_note::is_key_name_valid(origin) {
        return Err(ArchiveError::BadRequest(format!(
            "log origin {origin:?} is not a valid signed-note key name (non-empty, no spaces, \
             no '+'); use e.g. \"lockstep.example/log\""
        )));
    }
    let seed: [u8; 32] = match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path)
                .map_err(io_ctx(format!("reading metadata of {}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "log key is readable by group or others; chmod 600 it"
                );
            }
            bytes.try_into().map_err(|b: Vec<u8>| {
                ArchiveError::Corrupt(format!(
                    "log key {} is {} bytes, expected a 32-byte Ed25519 seed",
                    path.display(),
                    b.len()
                ))
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_ctx(format!("creating log key {}", path.display())))?;
            f.write_all(&seed)
                .map_err(io_ctx(format!("writing log key {}", path.display())))?;
            f.sync_all()
                .map_err(io_ctx(format!("fsyncing log key {}", path.display())))?;
            if let Some(dir) = path.parent() {
                fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_ctx(format!("fsyncing {}", dir.display())))?;
            }
            seed
        }
        Err(e) => {
            return Err(ArchiveError::io(
                format!("reading log key {}", path.display()),
                e,
            ))
        }
    };
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    let verifier_key = signed_note::new_ed25519_verifier_key(origin, &sk.verifying_key());
    // signed_note builds signers only from its text encoding; ours is the verifier key with the
    // private seed in place of the public key (algorithm byte 0x01 = Ed25519).
    let (_, rest) = verifier_key
        .split_once('+')
        .expect("new_ed25519_verifier_key returns name+id+key");
    let (id, _) = rest
        .split_once('+')
        .expect("new_ed25519_verifier_key returns name+id+key");
    let mut private = vec![0x01];
    private.extend_from_slice(&seed);
    let skey = format!(
        "PRIVATE+KEY+{origin}+{id}+{}",
        BASE64_STANDARD.encode(&private)
    );
    let signer = StandardSigner::new(&skey)
        .map_err(|e| ArchiveError::Corrupt(format!("log key does not form a signer: {e}")))?;
    Ok(LogKey {
        signer,
        verifier_key,
    })
}

/// The verifier key (`name+hash+key`) of the Ed25519 seed stored at `path`, without creating
/// anything (for read-only audits).
pub(crate) fn verifier_key_from_seed(path: &Path, origin: &str) -> Result<String, ArchiveError> {
    let bytes = fs::read(path).map_err(io_ctx(format!(
        "reading the log key {} (pass the log's verifier key explicitly if this file is not \
         readable)",
        path.display()
    )))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        ArchiveError::Corrupt(format!(
            "log key {} is {} bytes, expected a 32-byte Ed25519 seed",
            path.display(),
            b.len()
        ))
    })?;
    if !signed_note::is_key_name_valid(origin) {
        return Err(ArchiveError::Corrupt(format!(
            "stored checkpoint origin {origin:?} is not a valid key name"
        )));
    }
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    Ok(signed_note::new_ed25519_verifier_key(
        origin,
        &sk.verifying_key(),
    ))
}

/// The newest stored checkpoint: (size, root, note).
pub(crate) fn latest(conn: &Connection) -> Result<Option<(u64, [u8; 32], String)>, ArchiveError> {
    let row = conn
        .prepare_cached("SELECT size, root, note FROM checkpoints ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    row.map(|(size, root, note)| {
        let size = u64::try_from(size)
            .map_err(|_| ArchiveError::Corrupt(format!("checkpoint size {size} is negative")))?;
        let root = records::digest_from_sql(&root, "checkpoint root")?.0;
        Ok((size, root, note))
    })
    .transpose()
}

/// Signs and stores a checkpoint for the current size (or returns the stored one if the size has
/// not changed). Refuses, with an alarm, if the stored tree no longer matches the last checkpoint.
pub(crate) fn checkpoint(
    conn: &Connection,
    origin: &str,
    key: &LogKey,
) -> Result<String, ArchiveError> {
    let size = size_in(conn)?;
    let root = root_hash(conn, size)?;
    if let Some((old_size, old_root, old_note)) = latest(conn)? {
        let problem = if old_size > size {
            Some(format!(
                "log has {size} leaves but checkpoint already signed size {old_size}"
            ))
        } else {
            let now_root = root_hash(conn, old_size)?;
            (now_root != old_root).then(|| {
                format!(
                    "tree of size {old_size} now hashes to {} but was checkpointed as {}",
                    BASE64_STANDARD.encode(now_root),
                    BASE64_STANDARD.encode(old_root)
                )
            })
        };
        if let Some(problem) = problem {
            records::raise_alarm(conn, "log-inconsistent", &old_size.to_string(), &problem)?;
            return Err(ArchiveError::Corrupt(format!(
                "refusing to sign a checkpoint: {problem}"
            )));
        }
        if old_size == size {
            return Ok(old_note);
        }
    }
    let body = Checkpoint::new(origin, size, Hash(root), "")
        .map_err(|e| ArchiveError::BadRequest(format!("checkpoint for origin {origin:?}: {e}")))?
        .to_bytes();
    let mut note = Note::new(&body, &[])
        .map_err(|e| ArchiveError::BadRequest(format!("checkpoint note: {e}")))?;
    note.add_sigs(&[&key.signer])
        .map_err(|e| ArchiveError::Corrupt(format!("signing checkpoint failed: {e}")))?;
    let text = String::from_utf8(note.to_bytes())
        .expect("a note is built from UTF-8 text and base64 signature lines");
    conn.prepare_cached(
        "INSERT INTO checkpoints (size, root, note, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        i64_from_u64(size, "log size")?,
        &root[..],
        text,
        format_time(&Utc::now())
    ])?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stored hash of a log, computed in memory by `tlog_tiles` from the leaf data.
    struct MemHashes(Vec<Hash>);

    impl HashReader for MemHashes {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
            indexes
                .iter()
                .map(|&i| {
                    self.0
                        .get(i as usize)
                        .copied()
                        .ok_or(tlog_tiles::Error::IndexesNotInTree)
                })
                .collect()
        }
    }

    #[test]
    fn sql_hashes_recompute_leaf_hashes_in_any_batch_and_refuse_missing_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = crate::Archive::open(dir.path(), "lockstep.test/log").expect("open");
        let size = 300u64;
        let recs: Vec<crate::NewRecord> = (0..size)
            .map(|i| crate::NewRecord {
                kind: "test".into(),
                source: format!("p{i}"),
                version: "1".into(),
                arch: "amd64".into(),
                job_id: None,
                signer: None,
                dedup_key: None,
                body: format!("body {i}").into_bytes(),
                signature: None,
                blobs: Vec::new(),
            })
            .collect();
        a.append_records(&recs).expect("append");
        let conn = a.conn();
        let mut mem = MemHashes(Vec::new());
        let mut stmt = conn
            .prepare("SELECT data FROM log_leaves ORDER BY leaf_index")
            .expect("prepare");
        let data: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        for (n, d) in data.iter().enumerate() {
            let new = tlog_tiles::stored_hashes(n as u64, d, &mem).expect("in memory");
            mem.0.extend(new);
        }
        let count = tlog_tiles::stored_hash_count(size);
        assert_eq!(mem.0.len() as u64, count);
        let stored: i64 = conn
            .query_row("SELECT COUNT(*) FROM log_hashes", [], |r| r.get(0))
            .expect("count");
        assert_eq!(stored as u64, count - size, "levels >= 1 only");

        let sql = SqlHashes(&conn);
        let all: Vec<u64> = (0..count).collect();
        let mut reversed = all.clone();
        reversed.reverse();
        let leaf_run: Vec<u64> = (10..266)
            .map(|n| tlog_tiles::stored_hash_index(0, n))
            .collect();
        let scattered = vec![
            tlog_tiles::stored_hash_index(0, 5),
            tlog_tiles::stored_hash_index(0, 5),
            tlog_tiles::stored_hash_index(0, 6),
            tlog_tiles::stored_hash_index(3, 2),
            tlog_tiles::stored_hash_index(0, 7),
            tlog_tiles::stored_hash_index(0, 299),
            tlog_tiles::stored_hash_index(0, 0),
        ];
        for batch in [&all, &reversed, &leaf_run, &scattered] {
            assert_eq!(
                sql.read_hashes(batch).expect("read"),
                mem.read_hashes(batch).expect("read"),
            );
        }
        for missing in [
            vec![tlog_tiles::stored_hash_index(0, size)],
            vec![
                tlog_tiles::stored_hash_index(0, size - 1),
                tlog_tiles::stored_hash_index(0, size),
            ],
            vec![tlog_tiles::stored_hash_index(1, size / 2)],
            vec![tlog_tiles::stored_hash_index(0, 1 << 62)],
        ] {
            assert!(
                matches!(
                    sql.read_hashes(&missing),
                    Err(tlog_tiles::Error::IndexesNotInTree)
                ),
                "{missing:?}"
            );
        }
    }

    #[test]
    fn tile_paths_round_trip_and_reject_non_canonical_forms() {
        for (path, want) in [
            ("tile/0/000", (Some(0), 0, 256)),
            ("tile/0/x001/234", (Some(0), 1234, 256)),
            ("tile/1/x001/234.p/5", (Some(1), 1234, 5)),
            ("tile/entries/000", (None, 0, 256)),
            ("tile/entries/x001/x234/067.p/255", (None, 1_234_067, 255)),
        ] {
            let t = parse_tile_path(path).unwrap_or_else(|| panic!("{path} should parse"));
            assert_eq!((t.level, t.n, t.width), want, "{path}");
            assert_eq!(format_tile_path(&t), path);
        }
        for bad in [
            "tile/0/0",
            "tile/00/000",
            "tile/0/x000/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/05",
            "tile/64/000",
            "tile/data/000",
            "tile/8/0/000",
            "tile/0/1234",
            "tile/0/x1/234",
            "tiles/0/000",
            "tile/entries/000/",
            "tile/0/x18446744073709551/615",
        ] {
            assert!(parse_tile_path(bad).is_none(), "{bad} must be rejected");
        }
    }
}
