//! [`Archive`]: the one handle the coordinator holds. It owns the blob store, the database
//! connection and the log key, and is the only place that combines them (for example turning a
//! blob collision into an alarm row).
//!
//! All methods are synchronous and may block on disk I/O and fsync; async callers use
//! `spawn_blocking`. Share an `Archive` with `Arc`.
//!
//! Connections. One read-write connection, behind a `std::sync::Mutex` (never held across an
//! `.await`; there are none here), does every write. Reads use a small pool of read-only
//! connections: in WAL mode they see every committed transaction and never wait for a writer's
//! fsync, so status pages, proofs and quorum evaluation go on while an append commits.
//!
//! Appends are group-committed ([`crate::group`]): records appended concurrently share one
//! transaction that also stores a signed checkpoint covering them, so one fsync makes a whole
//! group durable and provable, and every acknowledged record is in a signed checkpoint.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use chrono::Utc;
use lockstep_proto::digest::Sha256Digest;
use rusqlite::Connection;

use crate::blobs::{BlobPut, BlobStore, PutBlobsError};
use crate::error::ArchiveError;
use crate::group::GroupCommit;
use crate::log::{self, LogKey};
use crate::records::{self, format_time, Alarm, NewRecord, Record, RecordRef};
use crate::stats::{CommitCounters, CommitStats};
use crate::verify::{self, VerifyReport};

/// File name of the database inside the archive directory.
pub const DB_FILE: &str = "archive.sqlite";
/// File name of the log's Ed25519 seed inside the archive directory.
pub const KEY_FILE: &str = "log-key";
/// Directory of content-addressed blobs inside the archive directory.
pub const BLOB_DIR: &str = "blobs";

/// Most callers one group commit takes (each with its own records).
const MAX_GROUP: usize = 512;
/// Idle read-only connections kept for reuse (more are opened under load, then closed).
const MAX_IDLE_READERS: usize = 32;

/// What one caller of [`Archive::append_records`] gets back.
type AppendResult = Result<Vec<RecordRef>, ArchiveError>;

/// One caller's records in a group commit.
struct Append {
    recs: Vec<NewRecord>,
    /// Appends that must have committed for these records to be stored.
    after: Vec<AppendTicket>,
    ticket: AppendTicket,
}

/// An append that is queued for the group commit, or was: whether it committed is known once it
/// was answered. [`Archive::append_records_then`] hands it out so that later appends can be
/// made to depend on it ([`Archive::append_records_after`]) before it is durable.
#[derive(Clone, Debug)]
pub struct AppendTicket(Arc<TicketState>);

#[derive(Debug, Default)]
struct TicketState {
    committed: Mutex<Option<bool>>,
    settled: Condvar,
}

impl AppendTicket {
    fn new() -> Self {
        AppendTicket(Arc::default())
    }

    fn settle(&self, committed: bool) {
        *self.0.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        self.0.settled.notify_all();
    }

    /// `Some(true)` once the append committed, `Some(false)` once it was refused or its group
    /// failed, `None` while it waits for (or is in) a group commit.
    pub fn committed(&self) -> Option<bool> {
        *self.0.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the append committed (`true`) or failed (`false`). Call it only while the
    /// append's own caller is, or soon will be, waiting for it (it may have to lead the group).
    pub fn wait(&self) -> bool {
        let mut c = self.0.committed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(done) = *c {
                return done;
            }
            c = self.0.settled.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn is(&self, other: &AppendTicket) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Settles the tickets of a group that were not settled, as failed.
struct SettleOnDrop<'a>(&'a [Append]);

impl Drop for SettleOnDrop<'_> {
    fn drop(&mut self) {
        for append in self.0 {
            if append.ticket.committed().is_none() {
                append.ticket.settle(false);
            }
        }
    }
}

/// The write-once archive: blobs, immutable records and their transparency log.
pub struct Archive {
    db_path: PathBuf,
    blobs: BlobStore,
    /// The one writer.
    db: Mutex<Connection>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
    /// Appends waiting for (or in) the next group commit.
    appends: GroupCommit<Append, AppendResult>,
    /// What those commits did, for operators and the benchmark.
    commits: CommitCounters,
    origin: String,
    key: LogKey,
}

/// A pooled read-only connection, returned to the pool on drop.
pub(crate) struct Reader<'a> {
    pool: &'a Mutex<Vec<Connection>>,
    conn: Option<Connection>,
}

impl Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("db_path", &self.db_path)
            .field("origin", &self.origin)
            .field("verifier_key", &self.key.verifier_key)
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// Opens or creates the archive under `dir`: `dir/blobs/`, `dir/archive.sqlite` and the log
    /// key `dir/log-key` (created, mode 0600, on first open). `log_origin` is the checkpoint
    /// origin line and the key name, e.g. "lockstep.example/log".
    pub fn open(dir: &Path, log_origin: &str) -> Result<Archive, ArchiveError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ArchiveError::io(format!("creating archive directory {}", dir.display()), e)
        })?;
        let key = log::load_or_create_key(&dir.join(KEY_FILE), log_origin)?;
        let blobs = BlobStore::open(&dir.join(BLOB_DIR))?;
        let db_path = dir.join(DB_FILE);
        let conn = crate::db::open(&db_path)?;
        Ok(Archive {
            db_path,
            blobs,
            db: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            appends: GroupCommit::new(MAX_GROUP),
            commits: CommitCounters::default(),
            origin: log_origin.to_owned(),
            key,
        })
    }

    /// A read-only connection from the pool (opened if none is idle). It sees everything
    /// committed before each of its statements starts.
    pub(crate) fn reader(&self) -> Result<Reader<'_>, ArchiveError> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => crate::db::open_read_only(&self.db_path)?,
        };
        Ok(Reader {
            pool: &self.readers,
            conn: Some(conn),
        })
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written append: the open
        // rusqlite transaction rolls back when dropped during unwinding. So a poisoned lock
        // still guards a consistent connection.
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- blobs ----

    /// Streams `reader` into the store (see [`crate::blobs`]). `expected`: refuse unless the
    /// bytes hash to it. Identical bytes already stored → `created: false`. A stored file that
    /// no longer matches its name → [`ArchiveError::Collision`] and an alarm.
    ///
    /// Each call makes its blob durable on its own (about three fsyncs); to store several files
    /// at once use [`Archive::put_blobs`].
    pub fn put_blob(
        &self,
        expected: Option<Sha256Digest>,
        reader: impl std::io::Read,
        max_size: u64,
    ) -> Result<BlobPut, ArchiveError> {
        let put = self
            .blobs
            .put(expected, reader, max_size)
            .inspect_err(|e| self.blob_alarm(e, "put_blob"))?;
        records::register_blob(&self.conn(), &put.digest, put.size)?;
        Ok(put)
    }

    /// Stores a batch of blobs: each item is (expected digest if any, bytes), with the same
    /// checks and outcomes per item as [`Archive::put_blob`] — refused unless it hashes to the
    /// expected digest and fits in `max_size`; `created: false` for bytes already stored
    /// (earlier, or earlier in this batch); a stored file that no longer matches its name is a
    /// [`ArchiveError::Collision`] and an alarm. Returns one [`BlobPut`] per item, in order.
    ///
    /// The durability work is shared by the whole batch (see [`crate::blobs`]): one `syncfs` of
    /// the archive's file system after every item is written and before any gets its final name,
    /// one after the links, one read-back per new blob, and one SQLite transaction registering
    /// every blob of the batch — instead of about three fsyncs per blob. Items are read one after
    /// the other (memory stays bounded); the batch's bytes sit in `blobs/tmp/` until linked, so
    /// keep a batch's total size reasonable.
    ///
    /// On error, [`PutBlobsError::item`] says which item was at fault (`None`: the batch as a
    /// whole, e.g. a failed sync or the registration commit) and **no blob of the batch is
    /// registered**: the batch is acknowledged as a whole or not at all.
    /// - An item that cannot be read, is too large or does not match its expected digest fails
    ///   the batch before anything is linked: nothing of the batch is stored.
    /// - A failed first sync: likewise nothing is stored.
    /// - A collision (with its alarm), a failed second sync, a blob that does not read back or a
    ///   failed registration: blobs the batch already linked stay under their final names. Their
    ///   data was synced before they were linked and they hash to their names, so they are
    ///   correct content-addressed blobs; `verify` accepts them, and putting the same bytes again
    ///   (single or batch) reports them with `created: false` and registers them.
    pub fn put_blobs<R: std::io::Read>(
        &self,
        items: impl IntoIterator<Item = (Option<Sha256Digest>, R)>,
        max_size: u64,
    ) -> Result<Vec<BlobPut>, PutBlobsError> {
        let puts = self
            .blobs
            .put_batch(items, max_size)
            .inspect_err(|e| self.blob_alarm(&e.error, "put_blobs"))?;
        self.register_blobs(&puts)
            .map_err(|error| PutBlobsError { item: None, error })?;
        Ok(puts)
    }

    /// Registers blobs in one transaction (one commit): all of them or none.
    fn register_blobs(&self, puts: &[BlobPut]) -> Result<(), ArchiveError> {
        if puts.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for put in puts {
            records::register_blob(&tx, &put.digest, put.size)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Raises the alarm a failed blob write calls for: a stored file that does not match its name
    /// (collision) or a new blob that did not read back (corrupt). `operation` names the caller.
    fn blob_alarm(&self, e: &ArchiveError, operation: &str) {
        match e {
            ArchiveError::Collision { digest } => {
                let path = self.blobs.final_path(digest);
                self.alarm(
                    "blob-collision",
                    &digest.to_hex(),
                    &format!(
                        "an upload of {digest} found {} already present with different content \
                         (tampered or corrupt); the file was left as is",
                        path.display()
                    ),
                );
            }
            ArchiveError::Corrupt(msg) => self.alarm("blob-corrupt", operation, msg),
            _ => {}
        }
    }

    /// Records an alarm; if even that fails, the failure is logged (the original error is what
    /// the caller needs to see).
    fn alarm(&self, kind: &str, subject: &str, detail: &str) {
        if let Err(e) = records::raise_alarm(&self.conn(), kind, subject, detail) {
            tracing::error!(error = %e, alarm = kind, subject, detail, "could not record alarm");
        }
    }

    pub fn has_blob(&self, d: &Sha256Digest) -> bool {
        self.blobs.path(d).is_some()
    }

    /// Path of a stored blob, if present. Open it read-only; never write to it.
    pub fn blob_path(&self, d: &Sha256Digest) -> Option<PathBuf> {
        self.blobs.path(d)
    }

    pub fn blob_size(&self, d: &Sha256Digest) -> Option<u64> {
        self.blobs.size(d)
    }

    // ---- records ----

    /// Appends a record and its log leaf in one transaction. Idempotent on `dedup_key`: same key
    /// and identical body → the existing record with `created: false`; different body →
    /// [`ArchiveError::Conflict`] and an alarm.
    pub fn append_record(&self, rec: NewRecord) -> Result<RecordRef, ArchiveError> {
        let mut refs = self.append_owned(vec![rec])?;
        Ok(refs
            .pop()
            .expect("append_records returns one ref per record"))
    }

    /// Appends several records, all or none, durably and under a signed checkpoint: when this
    /// returns `Ok`, the records, their log leaves and a checkpoint covering them are committed
    /// (fsynced). Same dedup rules as [`Archive::append_record`]; a conflict in any record refuses
    /// all of this caller's records.
    ///
    /// Concurrent callers are group-committed: each caller's records go in a savepoint of one
    /// shared transaction, followed by one checkpoint and one commit. A refused caller (conflict,
    /// bad request) is rolled back alone; a failure of the transaction itself (I/O, a full disk,
    /// a log that no longer matches its last checkpoint) fails every caller of that group and
    /// stores nothing.
    pub fn append_records(&self, recs: &[NewRecord]) -> Result<Vec<RecordRef>, ArchiveError> {
        self.append_owned(recs.to_vec())
    }

    /// [`Archive::append_records`], storing the records only if every append in `after` has
    /// committed: if one of them was refused or its group failed, these are refused with
    /// [`ArchiveError::Aborted`] and nothing of them is stored. The appends in `after` must
    /// already be queued (tickets come from [`Archive::append_records_then`]); they commit
    /// first, in the same group or an earlier one.
    pub fn append_records_after(
        &self,
        recs: Vec<NewRecord>,
        after: &[AppendTicket],
    ) -> Result<Vec<RecordRef>, ArchiveError> {
        self.append_records_then(recs, after, |_| {})
    }

    /// [`Archive::append_records_after`], calling `queued` with this append's ticket as soon as
    /// it is queued, before waiting for the commit. Whatever the caller appends from then on
    /// (in `queued` or another thread it lets go on) is committed after these records, so it can
    /// already count on them, and depend on them with the ticket. `queued` must not wait for
    /// other appends.
    pub fn append_records_then(
        &self,
        recs: Vec<NewRecord>,
        after: &[AppendTicket],
        queued: impl FnOnce(AppendTicket),
    ) -> Result<Vec<RecordRef>, ArchiveError> {
        let ticket = AppendTicket::new();
        let mine = ticket.clone();
        self.appends.submit_then(
            Append {
                recs,
                after: after.to_vec(),
                ticket,
            },
            || queued(mine),
            |group| self.commit_group(&group),
            || {
                Err(ArchiveError::Corrupt(
                    "the group commit carrying this append failed unexpectedly; it was not \
                     acknowledged"
                        .into(),
                ))
            },
        )
    }

    fn append_owned(&self, recs: Vec<NewRecord>) -> AppendResult {
        self.append_records_then(recs, &[], |_| {})
    }

    /// Commits one group (see [`Archive::append_records`]): one result per caller.
    /// Settles every caller's ticket before anyone is answered, so an append that depends on
    /// one of these finds its outcome.
    fn commit_group(&self, group: &[Append]) -> Vec<AppendResult> {
        // Even if this panics, or answers fewer callers than it got: nobody waits for a ticket
        // that never settles.
        let _unsettled = SettleOnDrop(group);
        let mut conn = self.conn();
        let started = Instant::now();
        let results = self.commit_group_results(&mut conn, group);
        self.commits.record(group.len(), started.elapsed());
        for (append, result) in group.iter().zip(&results) {
            append.ticket.settle(result.is_ok());
        }
        results
    }

    fn commit_group_results(&self, conn: &mut Connection, group: &[Append]) -> Vec<AppendResult> {
        match self.commit_group_in(conn, group) {
            Ok(results) => results,
            Err(GroupFailure { error, checkpoint }) => {
                if checkpoint && matches!(error, ArchiveError::Corrupt(_)) {
                    // The rollback took the alarm the refused checkpoint raised with it; raise it
                    // again outside the transaction (the committed log is what is inconsistent).
                    let _ = log::checkpoint(conn, &self.origin, &self.key);
                }
                let mut out = Vec::with_capacity(group.len());
                for _ in 1..group.len() {
                    out.push(Err(error.duplicate()));
                }
                out.insert(0, Err(error));
                out
            }
        }
    }

    fn commit_group_in(
        &self,
        conn: &mut Connection,
        group: &[Append],
    ) -> Result<Vec<AppendResult>, GroupFailure> {
        let now = format_time(&Utc::now());
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results: Vec<AppendResult> = Vec::with_capacity(group.len());
        for (i, Append { recs, after, .. }) in group.iter().enumerate() {
            // An append it depends on is earlier in this group (its savepoint's outcome) or in
            // a group already answered (its ticket).
            let dependency_failed =
                after
                    .iter()
                    .any(|t| match group[..i].iter().position(|a| a.ticket.is(t)) {
                        Some(j) => results[j].is_err(),
                        None => t.committed() != Some(true),
                    });
            if dependency_failed {
                results.push(Err(ArchiveError::Aborted(
                    "an append these records depend on was not committed".into(),
                )));
                continue;
            }
            let sp = tx.savepoint()?;
            let mut refs = Vec::with_capacity(recs.len());
            let mut refused = None;
            for rec in recs {
                match records::append(&sp, rec, &now) {
                    Ok(r) => refs.push(r),
                    Err(e @ (ArchiveError::Conflict { .. } | ArchiveError::BadRequest(_))) => {
                        refused = Some((rec, e));
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some((rec, e)) = refused else {
                sp.commit()?;
                results.push(Ok(refs));
                continue;
            };
            sp.finish()?; // rolls back this caller's records only
            if let ArchiveError::Conflict { dedup_key } = &e {
                let detail = format!(
                    "a record for {}/{}/{} of kind {} was submitted with dedup key \
                     {dedup_key:?} but different content than the stored one; refused",
                    rec.source, rec.version, rec.arch, rec.kind
                );
                records::raise_alarm(&tx, "record-conflict", dedup_key, &detail)?;
            }
            results.push(Err(e));
        }
        log::checkpoint(&tx, &self.origin, &self.key).map_err(|error| GroupFailure {
            error,
            checkpoint: true,
        })?;
        tx.commit()?;
        Ok(results)
    }

    /// What the group commit has done since this archive was opened (see [`CommitStats`]).
    pub fn commit_stats(&self) -> CommitStats {
        self.commits.snapshot()
    }

    pub fn record(&self, id: i64) -> Result<Option<Record>, ArchiveError> {
        records::by_id(&*self.reader()?, id)
    }

    /// Records for a (source, version, arch) key, in append order, optionally of one kind.
    pub fn records_for(
        &self,
        source: &str,
        version: &str,
        arch: &str,
        kind: Option<&str>,
    ) -> Result<Vec<Record>, ArchiveError> {
        records::by_key(&*self.reader()?, source, version, arch, kind)
    }

    /// Records of one kind, in append order.
    pub fn records_by_kind(&self, kind: &str) -> Result<Vec<Record>, ArchiveError> {
        records::by_kind(&*self.reader()?, kind)
    }

    /// Records of one kind, in append order, handed to `each` one at a time (an error from
    /// `each` ends the walk and is returned).
    pub fn each_record_of_kind(
        &self,
        kind: &str,
        each: impl FnMut(Record) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        records::each_by_kind(&*self.reader()?, kind, each)
    }

    /// Records that link the blob with this digest, in append order.
    pub fn records_with_blob(&self, d: &Sha256Digest) -> Result<Vec<Record>, ArchiveError> {
        records::with_blob(&*self.reader()?, d)
    }

    /// Every alarm ever raised, oldest first.
    pub fn alarms(&self) -> Result<Vec<Alarm>, ArchiveError> {
        records::alarms(&*self.reader()?)
    }

    // ---- transparency log ----

    pub fn log_size(&self) -> Result<u64, ArchiveError> {
        log::size_in(&*self.reader()?)
    }

    /// Signs and stores a checkpoint for the current size and returns the signed note. Cheap: if
    /// the size has not changed since the last checkpoint, that one is returned. Refuses (and
    /// raises an alarm) if the stored tree no longer reproduces the previous checkpoint.
    pub fn checkpoint(&self) -> Result<String, ArchiveError> {
        log::checkpoint(&self.conn(), &self.origin, &self.key)
    }

    pub fn latest_checkpoint(&self) -> Result<Option<String>, ArchiveError> {
        Ok(log::latest(&*self.reader()?)?.map(|(_, _, note)| note))
    }

    /// The log's verifier key, `name+hash+base64key` (signed-note form).
    pub fn verifier_key(&self) -> String {
        self.key.verifier_key.clone()
    }

    /// The log origin (also the key name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Bytes of a C2SP tlog-tiles resource: `tile/<L>/<N>[.p/<W>]` (hash tile) or
    /// `tile/entries/<N>[.p/<W>]` (entry bundle). `Ok(None)`: not (yet) in the tree.
    pub fn tile(&self, path: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        log::tile(&*self.reader()?, path)
    }

    /// Inclusion proof for leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<[u8; 32]>, ArchiveError> {
        log::inclusion_proof(&*self.reader()?, index, size)
    }

    /// Consistency proof from the tree of `old` leaves to the tree of `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>, ArchiveError> {
        log::consistency_proof(&*self.reader()?, old, new)
    }

    /// Root hash of the tree of the first `size` leaves.
    pub fn root_hash(&self, size: u64) -> Result<[u8; 32], ArchiveError> {
        log::root_hash(&*self.reader()?, size)
    }

    // ---- audit ----

    /// Re-checks every blob, record, stored hash and checkpoint (see [`crate::verify`]) and
    /// returns every problem found. Runs on its own read-only connection; appends continue.
    pub fn verify(&self) -> Result<VerifyReport, ArchiveError> {
        verify::run(&self.db_path, &self.blobs, &self.key.verifier_key)
    }

    /// The archive directory's blob root (for operators and tests).
    pub fn blob_root(&self) -> &Path {
        self.blobs.root()
    }
}

/// Why a whole group failed: the error, and whether signing its checkpoint is what failed.
struct GroupFailure {
    error: ArchiveError,
    checkpoint: bool,
}

impl From<ArchiveError> for GroupFailure {
    fn from(error: ArchiveError) -> Self {
        GroupFailure {
            error,
            checkpoint: false,
        }
    }
}

impl From<rusqlite::Error> for GroupFailure {
    fn from(e: rusqlite::Error) -> Self {
        ArchiveError::from(e).into()
    }
}
