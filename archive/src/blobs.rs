//! Content-addressed, write-once blob files under `<dir>/blobs/`.
//!
//! A blob named by SHA-256 digest `abcd…` lives at `blobs/ab/cd/abcd…`, mode 0444. Writes stream
//! into `blobs/tmp/`, hashing as they go (constant memory), are fsynced, and then appear at the
//! final name through `hard_link`, which fails if the name exists: an existing blob is never
//! replaced. Only complete, synced, verified files ever appear under a final name; a crash leaves
//! at most a stray file in `blobs/tmp/`, which `BlobStore::open` clears.
//!
//! Batches (`BlobStore::put_batch`) keep that protocol and share its syncs: every item is
//! streamed and hashed into its own temp file and made read-only (no fsync per file), while a
//! helper thread creates the `ab/cd/` directories they will need; then one `syncfs(2)` of the
//! store's file system makes the data of all of them durable *before* any of them gets a final
//! name; then every temp file is linked to its final name (same never-replace rules as a single
//! put) and its temp name removed; then one more `syncfs` makes the new directories and names
//! durable while every new blob is read back and re-hashed. Two syncs per batch instead of two
//! to four fsyncs per blob (issue 7, P1). The links and read-backs, independent small file-system
//! operations, are spread over two threads.
//!
//! This module only touches the file system; recording alarms is the caller's job.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use lockstep_proto::digest::{Hasher, Sha256Digest, HASH_BUF};
use serde::{Deserialize, Serialize};

use crate::error::{io_ctx, ArchiveError};

/// Mode of a stored blob: read-only for everyone, so even the archive's own user cannot
/// accidentally rewrite it in place.
const BLOB_MODE: u32 = 0o444;

/// The outcome of storing a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPut {
    pub digest: Sha256Digest,
    pub size: u64,
    /// `false` when identical bytes were already stored (deduplicated).
    pub created: bool,
}

/// Why [`crate::Archive::put_blobs`] failed, and which item of the batch was at fault.
///
/// What a failed batch leaves behind is described at [`crate::Archive::put_blobs`]; in short,
/// nothing of it is ever registered, and nothing is ever under a final name unless its data was
/// synced first and it hashes to its name.
#[derive(Debug)]
pub struct PutBlobsError {
    /// Position (from 0, in the order given) of the item at fault: its bytes did not match the
    /// expected digest, went over the size limit or could not be read, or its final name holds
    /// other bytes ([`ArchiveError::Collision`]) or it did not read back
    /// ([`ArchiveError::Corrupt`]). `None`: the batch failed as a whole (a sync, the registration
    /// commit).
    pub item: Option<usize>,
    /// What went wrong; callers branch on it as on the error of [`crate::Archive::put_blob`].
    pub error: ArchiveError,
}

impl fmt::Display for PutBlobsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.item {
            Some(i) => write!(f, "item {i} (from 0) of the blob batch: {}", self.error),
            None => write!(f, "blob batch: {}", self.error),
        }
    }
}

impl std::error::Error for PutBlobsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The message of `error` is already part of ours; go on with what caused it.
        self.error.source()
    }
}

/// How data is forced to stable storage. A seam so tests can inject sync failure; production
/// uses [`File::sync_all`] for a single put and [`syncfs`] for a batch.
pub(crate) type SyncFn = fn(&File) -> io::Result<()>;

/// `syncfs(2)` of the file system holding `f`: writes back and flushes everything dirty on it
/// (file data, inodes, directories), like `sync -f`. Since Linux 5.8 it also reports writeback
/// errors that happened on that file system since the descriptor was opened.
fn syncfs(f: &File) -> io::Result<()> {
    rustix::fs::syncfs(f).map_err(io::Error::from)
}

/// The blob directory.
#[derive(Debug)]
pub(crate) struct BlobStore {
    root: PathBuf,
    /// Makes one file durable (single puts and their directories).
    sync: SyncFn,
    /// Makes the whole file system of the store durable (batches).
    sync_fs: SyncFn,
}

/// An item streamed into `tmp/` and hashed, not synced and without a final name yet.
struct Staged {
    tmp: TempFile,
    /// Still open (a single put fsyncs it); batches close it at once.
    file: File,
    digest: Sha256Digest,
    size: u64,
}

/// What linking a temp file to its final name found.
enum Linked {
    /// The name is new: this temp file is now the blob.
    Created,
    /// Identical bytes were already there (this many); the temp file was not used.
    Existing(u64),
}

/// Removes a temp file on drop unless disarmed, so every early return cleans up.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// The temp name is gone (removed, or the file was linked and then removed): nothing to do
    /// on drop.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the file may never have been fully created. A leftover is harmless
            // (at most a second name of a complete, synced blob) and is cleared by the next
            // `open`.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// SHA-256 and length of the file at `path`, read through `buf` (one buffer for a whole batch
/// instead of one allocation per file).
fn hash_path(path: &Path, buf: &mut [u8]) -> io::Result<(Sha256Digest, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Hasher::new();
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finish())
}

/// Runs `f` on every item, spread over this thread and a helper (each with its own read buffer),
/// and returns the results in item order. For the per-blob work of a batch (links, read-backs):
/// mostly kernel work on independent files, which two cores do in about half the time.
fn on_two_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T, &mut [u8]) -> R + Sync) -> Vec<R> {
    if items.len() < 8 {
        let mut buf = vec![0u8; HASH_BUF];
        return items.iter().map(|item| f(item, &mut buf)).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut buf = vec![0u8; HASH_BUF];
        let mut done = Vec::new();
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(k) else {
                return done;
            };
            done.push((k, f(item, &mut buf)));
        }
    };
    let (mut done, theirs) = std::thread::scope(|scope| {
        let helper = scope.spawn(work);
        let mine = work();
        let theirs = helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (mine, theirs)
    });
    done.extend(theirs);
    done.sort_unstable_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, r)| r).collect()
}

impl BlobStore {
    /// Opens (creating if needed) the blob directory and clears leftovers of interrupted writes.
    pub(crate) fn open(root: &Path) -> Result<Self, ArchiveError> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_ctx(format!("creating {}", tmp.display())))?;
        for entry in fs::read_dir(&tmp).map_err(io_ctx(format!("listing {}", tmp.display())))? {
            let entry = entry.map_err(io_ctx(format!("listing {}", tmp.display())))?;
            // These are unacknowledged partial uploads from a crash; they never had a final name.
            let _ = fs::remove_file(entry.path());
        }
        Ok(Self {
            root: root.to_path_buf(),
            sync: File::sync_all,
            sync_fs: syncfs,
        })
    }

    /// Opens an existing blob directory for reading only (audits): nothing is created or
    /// cleared, so an audit never disturbs a running coordinator's in-flight uploads.
    pub(crate) fn open_existing(root: &Path) -> Result<Self, ArchiveError> {
        if !root.is_dir() {
            return Err(ArchiveError::NotFound(format!(
                "{} is not a blob directory; point at an archive directory (with blobs/ and \
                 archive.sqlite) or a coordinator data directory",
                root.display()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            sync: File::sync_all,
            sync_fs: syncfs,
        })
    }

    /// Replaces every durability call (file and directory fsyncs, and the batches' `syncfs`).
    #[cfg(test)]
    pub(crate) fn with_sync(mut self, sync: SyncFn) -> Self {
        self.sync = sync;
        self.sync_fs = sync;
        self
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Final location of a blob, whether or not it exists.
    pub(crate) fn final_path(&self, d: &Sha256Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    pub(crate) fn path(&self, d: &Sha256Digest) -> Option<PathBuf> {
        let p = self.final_path(d);
        p.is_file().then_some(p)
    }

    pub(crate) fn size(&self, d: &Sha256Digest) -> Option<u64> {
        fs::metadata(self.final_path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    fn fsync_dir(&self, dir: &Path) -> Result<(), ArchiveError> {
        let f = File::open(dir).map_err(io_ctx(format!("opening {}", dir.display())))?;
        (self.sync)(&f).map_err(io_ctx(format!("fsyncing directory {}", dir.display())))
    }

    /// Syncs the whole file system holding the store (one `syncfs`).
    fn sync_store(&self) -> Result<(), ArchiveError> {
        let f =
            File::open(&self.root).map_err(io_ctx(format!("opening {}", self.root.display())))?;
        (self.sync_fs)(&f).map_err(io_ctx(format!(
            "syncing the file system of {}",
            self.root.display()
        )))
    }

    /// Streams `reader` into a new temp file, hashing as it goes, refuses it unless it hashes to
    /// `expected` (if given) and fits in `max_size`, and makes it read-only. Nothing is synced.
    /// The temp file is removed when the returned [`TempFile`] is dropped armed, or on any error.
    fn stage(
        &self,
        expected: Option<Sha256Digest>,
        mut reader: impl Read,
        max_size: u64,
        buf: &mut [u8],
    ) -> Result<Staged, ArchiveError> {
        let tmp_dir = self.root.join("tmp");
        let tmp = TempFile {
            path: tmp_dir.join(format!(
                "{}-{:016x}.part",
                std::process::id(),
                rand::random::<u64>()
            )),
            armed: true,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp.path)
            .map_err(io_ctx(format!("creating temp file {}", tmp.path.display())))?;

        let mut hasher = Hasher::new();
        loop {
            let n = match reader.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::io("reading the upload", e)),
            };
            if hasher.len() + n as u64 > max_size {
                return Err(ArchiveError::TooLarge { limit: max_size });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(io_ctx(format!("writing temp file {}", tmp.path.display())))?;
        }
        let (digest, size) = hasher.finish();
        if let Some(expected) = expected {
            if expected != digest {
                return Err(ArchiveError::DigestMismatch {
                    expected,
                    actual: digest,
                });
            }
        }

        // Read-only before it can ever get a final name.
        file.set_permissions(Permissions::from_mode(BLOB_MODE))
            .map_err(io_ctx(format!("chmod of {}", tmp.path.display())))?;
        Ok(Staged {
            tmp,
            file,
            digest,
            size,
        })
    }

    /// Creates the `ab/cd/` directory of `digest` if missing and returns it, and fsyncs every
    /// directory whose entries changed (a single put).
    fn leaf_dir(&self, digest: &Sha256Digest) -> Result<PathBuf, ArchiveError> {
        let final_path = self.final_path(digest);
        let leaf_dir = final_path
            .parent()
            .expect("final_path always has two parent directories")
            .to_path_buf();
        if !leaf_dir.is_dir() {
            let mid = leaf_dir
                .parent()
                .expect("leaf_dir is <root>/ab/cd, so it has a parent");
            let new_mid = !mid.is_dir();
            fs::create_dir_all(&leaf_dir)
                .map_err(io_ctx(format!("creating {}", leaf_dir.display())))?;
            // Make the new directory entries themselves durable: only a directory whose entries
            // changed needs an fsync (each one costs a journal commit, ~3 ms here; issue 7, P1).
            self.fsync_dir(mid)?;
            if new_mid {
                self.fsync_dir(&self.root)?;
            }
        }
        Ok(leaf_dir)
    }

    /// Creates the `ab/cd/` directory of `digest` if missing, with as few system calls as
    /// possible (usually one `mkdir`) and no fsync: a batch makes it durable with its second
    /// `syncfs`.
    fn make_leaf_dir(&self, digest: &Sha256Digest) -> Result<(), ArchiveError> {
        let final_path = self.final_path(digest);
        let leaf_dir = final_path
            .parent()
            .expect("final_path always has two parent directories");
        let mkdir = |dir: &Path| match fs::create_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        };
        match mkdir(leaf_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mid = leaf_dir
                    .parent()
                    .expect("leaf_dir is <root>/ab/cd, so it has a parent");
                mkdir(mid).and_then(|()| mkdir(leaf_dir))
            }
            other => other,
        }
        .map_err(io_ctx(format!("creating {}", leaf_dir.display())))
    }

    /// What linking a (synced) temp file to `final_path`, the final name of `digest`, came to,
    /// never replacing an existing file: identical bytes already there → [`Linked::Existing`];
    /// other bytes → [`ArchiveError::Collision`]. `buf`: read buffer for that comparison.
    fn link_outcome(
        &self,
        linked: io::Result<()>,
        final_path: &Path,
        digest: &Sha256Digest,
        buf: &mut [u8],
    ) -> Result<Linked, ArchiveError> {
        match linked {
            Ok(()) => Ok(Linked::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Never replace. Decide whether the existing file is the same blob.
                let (existing, existing_size) = hash_path(final_path, buf).map_err(io_ctx(
                    format!("re-reading existing blob {}", final_path.display()),
                ))?;
                if existing == *digest {
                    Ok(Linked::Existing(existing_size))
                } else {
                    Err(ArchiveError::Collision { digest: *digest })
                }
            }
            Err(e) => Err(ArchiveError::io(
                format!("linking blob to {}", final_path.display()),
                e,
            )),
        }
    }

    /// Links the synced temp file at `tmp` to the final name of `digest` (see
    /// [`BlobStore::link_outcome`]). Links first and creates `ab/cd/` only when the link finds it
    /// missing: it mostly exists already (a batch creates the directories it needs while it
    /// streams, and an archive in use has most of them).
    fn link_in_batch(
        &self,
        tmp: &Path,
        digest: &Sha256Digest,
        buf: &mut [u8],
    ) -> Result<Linked, ArchiveError> {
        let final_path = self.final_path(digest);
        let mut linked = fs::hard_link(tmp, &final_path);
        if matches!(&linked, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            self.make_leaf_dir(digest)?;
            linked = fs::hard_link(tmp, &final_path);
        }
        self.link_outcome(linked, &final_path, digest, buf)
    }

    /// Trust nothing: reads back what is now under the final name of `digest`.
    fn read_back(
        &self,
        digest: &Sha256Digest,
        size: u64,
        buf: &mut [u8],
    ) -> Result<(), ArchiveError> {
        let final_path = self.final_path(digest);
        let (reread, reread_size) = hash_path(&final_path, buf).map_err(io_ctx(format!(
            "re-reading new blob {}",
            final_path.display()
        )))?;
        if reread != *digest || reread_size != size {
            return Err(ArchiveError::Corrupt(format!(
                "blob {digest} read back from {} hashes to {reread} ({reread_size} bytes) right \
                 after being written",
                final_path.display()
            )));
        }
        Ok(())
    }

    /// Streams `reader` into the store. See the module documentation for the protocol.
    pub(crate) fn put(
        &self,
        expected: Option<Sha256Digest>,
        reader: impl Read,
        max_size: u64,
    ) -> Result<BlobPut, ArchiveError> {
        let mut buf = vec![0u8; HASH_BUF];
        let Staged {
            mut tmp,
            file,
            digest,
            size,
        } = self.stage(expected, reader, max_size, &mut buf)?;
        // The first fsync error is fatal: after a failed fsync the page cache state is unknown,
        // and retrying can report success for data that was never written.
        (self.sync)(&file).map_err(io_ctx(format!("fsyncing {}", tmp.path.display())))?;
        drop(file);

        let leaf_dir = self.leaf_dir(&digest)?;
        let final_path = self.final_path(&digest);
        let linked = fs::hard_link(&tmp.path, &final_path);
        match self.link_outcome(linked, &final_path, &digest, &mut buf)? {
            Linked::Created => {}
            Linked::Existing(existing_size) => {
                return Ok(BlobPut {
                    digest,
                    size: existing_size,
                    created: false,
                })
            }
        }
        fs::remove_file(&tmp.path)
            .map_err(io_ctx(format!("removing temp file {}", tmp.path.display())))?;
        tmp.armed = false;
        self.fsync_dir(&leaf_dir)?;

        self.read_back(&digest, size, &mut buf)?;
        Ok(BlobPut {
            digest,
            size,
            created: true,
        })
    }

    /// Stores every item (expected digest if any, bytes), each under the same rules as
    /// [`BlobStore::put`], with two `syncfs` in all; see the module documentation for the
    /// protocol. Returns one [`BlobPut`] per item, in order; an item whose bytes are already
    /// stored, by an earlier put or earlier in this batch, gets `created: false`.
    ///
    /// Memory is bounded: items are read one after the other through one buffer, and each
    /// reader and temp file is closed before the next item is read. Disk: the whole batch sits
    /// in `tmp/` until it is linked, so callers bound a batch's total size.
    ///
    /// What an error leaves (`item` names the item at fault, `None` the batch as a whole):
    /// - while streaming an item (read error, size limit, digest mismatch) or at the first sync:
    ///   nothing; every temp file of the batch is removed and no item has a final name;
    /// - while linking (a collision), at the second sync or at the read-back: the items the batch
    ///   linked keep their final names (links run on two threads, so these may include items
    ///   after the one at fault). Their data was synced before they were linked and they hash to
    ///   their names, so they are correct blobs (a single put whose directory fsync fails leaves
    ///   the same); they are not acknowledged, and a later put of the same bytes reports them
    ///   with `created: false`. Temp files are removed either way.
    pub(crate) fn put_batch<R: Read>(
        &self,
        items: impl IntoIterator<Item = (Option<Sha256Digest>, R)>,
        max_size: u64,
    ) -> Result<Vec<BlobPut>, PutBlobsError> {
        let at = |item: usize| {
            move |error: ArchiveError| PutBlobsError {
                item: Some(item),
                error,
            }
        };
        let whole = |error: ArchiveError| PutBlobsError { item: None, error };

        // 1. Stream and hash every item into its own temp file, read-only; no fsync yet. The
        // readers stay on this thread (they need not be `Send`). Meanwhile a helper thread
        // creates the `ab/cd/` directories the items will need: in a young archive most blobs
        // need a new one, and that (inode and block allocation) costs more than streaming a small
        // blob. An empty directory holds no blob, so it needs no ordering with the data sync; the
        // second sync makes it durable.
        // 2. Then one sync of the whole file system (the helper may still be creating
        // directories): the data and mode of every temp file are durable before any of them has
        // a final name. As for a single put, the first sync error is fatal and never retried.
        let mut buf = vec![0u8; HASH_BUF];
        let staged = std::thread::scope(|scope| {
            let (digests, wanted) = std::sync::mpsc::channel::<Sha256Digest>();
            let helper = scope.spawn(move || -> Result<(), ArchiveError> {
                let mut result = Ok(());
                for digest in wanted {
                    if result.is_ok() {
                        result = self.make_leaf_dir(&digest);
                    }
                }
                result
            });
            let streamed = self.stage_all(items, max_size, &mut buf, &digests);
            drop(digests);
            let synced = match &streamed {
                Ok(staged) if !staged.is_empty() => self.sync_store().map_err(whole),
                _ => Ok(()),
            };
            let dirs = helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let staged = streamed?;
            synced?;
            dirs.map_err(whole)?;
            Ok(staged)
        })?;
        if staged.is_empty() {
            return Ok(Vec::new());
        }

        // 3. Final names, for the first item of each digest (a later item with the same bytes
        // reports what the first one stored or found), spread over two threads: link, and once
        // linked remove the temp name (a crash in between leaves it in tmp/, cleared on open).
        // On an error the remaining temp files are removed (drop); blobs already linked stay.
        let mut first_of: HashMap<Sha256Digest, usize> = HashMap::new();
        let mut first = Vec::with_capacity(staged.len());
        let mut jobs = Vec::new();
        for (i, (tmp, digest, size)) in staged.into_iter().enumerate() {
            let f = *first_of.entry(digest).or_insert(i);
            first.push(f);
            if f == i {
                jobs.push((i, tmp, digest, size));
            }
        }
        let outcomes = on_two_threads(&jobs, |(_, tmp, digest, _), buf| {
            let linked = self.link_in_batch(&tmp.path, digest, buf)?;
            if let Linked::Created = linked {
                fs::remove_file(&tmp.path)
                    .map_err(io_ctx(format!("removing temp file {}", tmp.path.display())))?;
            }
            Ok(linked)
        });
        let mut puts: Vec<Option<BlobPut>> = vec![None; first.len()];
        let mut created = Vec::new();
        for ((i, mut tmp, digest, size), outcome) in jobs.into_iter().zip(outcomes) {
            let put = match outcome.map_err(at(i))? {
                Linked::Created => {
                    tmp.disarm(); // its name was removed above
                    created.push(i);
                    BlobPut {
                        digest,
                        size,
                        created: true,
                    }
                }
                Linked::Existing(existing_size) => BlobPut {
                    digest,
                    size: existing_size,
                    created: false,
                },
            };
            puts[i] = Some(put);
        }
        let puts: Vec<BlobPut> = first
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let put = puts[f].expect("every first item was linked or failed the batch");
                if f == i {
                    put
                } else {
                    BlobPut {
                        created: false,
                        ..put
                    }
                }
            })
            .collect();

        // 4. One more sync, on a helper thread: the new directories and final names are durable.
        // 5. Meanwhile, trust nothing: read every new blob back under its final name (it reads
        // the same bytes before or after that sync). Both must succeed before anything is
        // registered.
        let (synced, checked) = std::thread::scope(|scope| {
            let sync = scope.spawn(|| self.sync_store());
            let checked = on_two_threads(&created, |&i, buf| {
                self.read_back(&puts[i].digest, puts[i].size, buf)
                    .map_err(at(i))
            })
            .into_iter()
            .collect::<Result<(), PutBlobsError>>();
            let synced = sync
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (synced, checked)
        });
        // A blob that did not read back is the graver finding (it raises an alarm): first.
        checked?;
        synced.map_err(whole)?;
        Ok(puts)
    }

    /// Step 1 of [`BlobStore::put_batch`]: stages every item in turn, sending each digest to
    /// `digests` (the directory helper) as soon as it is known.
    fn stage_all<R: Read>(
        &self,
        items: impl IntoIterator<Item = (Option<Sha256Digest>, R)>,
        max_size: u64,
        buf: &mut [u8],
        digests: &std::sync::mpsc::Sender<Sha256Digest>,
    ) -> Result<Vec<(TempFile, Sha256Digest, u64)>, PutBlobsError> {
        let mut staged = Vec::new();
        for (i, (expected, reader)) in items.into_iter().enumerate() {
            let Staged {
                tmp, digest, size, ..
            } = self
                .stage(expected, reader, max_size, buf)
                .map_err(|error| PutBlobsError {
                    item: Some(i),
                    error,
                })?;
            // `file` and `reader` are closed here: no descriptor is kept per item. The send only
            // fails if the helper is gone; then linking creates the directory itself.
            let _ = digests.send(digest);
            staged.push((tmp, digest, size));
        }
        Ok(staged)
    }

    /// Every regular file under a final-name directory, with the digest its name claims (None if
    /// the name or place is not a valid blob name). `tmp/` is skipped.
    pub(crate) fn list(&self) -> Result<Vec<(PathBuf, Option<Sha256Digest>)>, ArchiveError> {
        let mut out = Vec::new();
        let read = |dir: &Path| -> Result<Vec<fs::DirEntry>, ArchiveError> {
            let mut entries = Vec::new();
            for e in fs::read_dir(dir).map_err(io_ctx(format!("listing {}", dir.display())))? {
                entries.push(e.map_err(io_ctx(format!("listing {}", dir.display())))?);
            }
            entries.sort_by_key(|e| e.file_name());
            Ok(entries)
        };
        for top in read(&self.root)? {
            if top.file_name() == "tmp" {
                continue;
            }
            if !top.path().is_dir() {
                out.push((top.path(), None));
                continue;
            }
            for mid in read(&top.path())? {
                if !mid.path().is_dir() {
                    out.push((mid.path(), None));
                    continue;
                }
                for leaf in read(&mid.path())? {
                    let path = leaf.path();
                    let claimed = leaf
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<Sha256Digest>().ok())
                        .filter(|d| self.final_path(d) == path);
                    out.push((path, claimed));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing_sync(_: &File) -> io::Result<()> {
        Err(io::Error::other("injected fsync failure"))
    }

    #[test]
    fn failed_fsync_is_an_error_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::open(dir.path())
            .expect("open store")
            .with_sync(failing_sync);
        let err = store
            .put(None, &b"payload"[..], 1 << 20)
            .expect_err("fsync failure must fail the put");
        assert!(
            matches!(err, ArchiveError::Io { .. }),
            "expected Io, got {err:?}"
        );
        assert!(store.path(&Sha256Digest::of(b"payload")).is_none());
        let leftovers = fs::read_dir(dir.path().join("tmp"))
            .expect("tmp dir exists")
            .count();
        assert_eq!(leftovers, 0, "temp file must be removed");
    }

    /// The final-named files under `root` (everything but `tmp/`).
    fn final_names(root: &Path) -> usize {
        BlobStore::open_existing(root)
            .expect("store")
            .list()
            .expect("list")
            .len()
    }

    fn tmp_names(root: &Path) -> usize {
        fs::read_dir(root.join("tmp"))
            .expect("tmp dir exists")
            .count()
    }

    /// What the recording syncs below saw at each call, per store root (the batch syncs the
    /// store through its root directory, from more than one thread): (final-named files, temp
    /// files).
    static SYNC_SEEN: std::sync::Mutex<Vec<(PathBuf, usize, usize)>> =
        std::sync::Mutex::new(Vec::new());

    /// The calls recorded so far for `root`.
    fn seen(root: &Path) -> Vec<(usize, usize)> {
        SYNC_SEEN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(r, ..)| r == root)
            .map(|&(_, finals, temps)| (finals, temps))
            .collect()
    }

    /// Succeeds, recording how many final-named and temp files existed at the time.
    fn recording_sync(f: &File) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let root = fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
        let counts = (final_names(&root), tmp_names(&root));
        SYNC_SEEN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((root, counts.0, counts.1));
        Ok(())
    }

    /// Fails from the second call on for a store (the batch's second `syncfs`), recording like
    /// the above.
    fn second_sync_fails(f: &File) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        recording_sync(f)?;
        let root = fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
        if seen(&root).len() >= 2 {
            return Err(io::Error::other("injected syncfs failure"));
        }
        Ok(())
    }

    fn items(payloads: &[&'static [u8]]) -> Vec<(Option<Sha256Digest>, &'static [u8])> {
        payloads
            .iter()
            .map(|p| (Some(Sha256Digest::of(p)), *p))
            .collect()
    }

    #[test]
    fn a_batch_syncs_twice_and_only_after_the_first_sync_do_final_names_appear() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::open(dir.path())
            .expect("open store")
            .with_sync(recording_sync);
        let root = dir.path().canonicalize().expect("canonical path");
        let puts = store
            .put_batch(items(&[b"one", b"two", b"one", b"three"]), 1 << 20)
            .expect("batch");
        assert_eq!(
            puts.iter().map(|p| p.created).collect::<Vec<_>>(),
            vec![true, true, false, true]
        );
        // First sync: four temp files, no final name yet. Second: three blobs, no temp file.
        assert_eq!(seen(&root), vec![(0, 4), (3, 0)]);
        for p in &puts {
            assert_eq!(store.size(&p.digest), Some(p.size));
        }
    }

    #[test]
    fn a_failed_first_sync_fails_the_batch_and_leaves_no_final_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::open(dir.path())
            .expect("open store")
            .with_sync(failing_sync);
        let err = store
            .put_batch(items(&[b"a", b"b", b"c"]), 1 << 20)
            .expect_err("sync failure must fail the batch");
        assert_eq!(err.item, None, "{err}");
        assert!(
            matches!(err.error, ArchiveError::Io { .. }),
            "expected Io, got {err:?}"
        );
        assert_eq!(final_names(dir.path()), 0);
        assert_eq!(tmp_names(dir.path()), 0, "temp files must be removed");
    }

    #[test]
    fn a_failed_second_sync_fails_the_batch_and_leaves_only_synced_correct_blobs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::open(dir.path())
            .expect("open store")
            .with_sync(second_sync_fails);
        let root = dir.path().canonicalize().expect("canonical path");
        let err = store
            .put_batch(items(&[b"a", b"b"]), 1 << 20)
            .expect_err("sync failure must fail the batch");
        assert_eq!(err.item, None, "{err}");
        assert!(matches!(err.error, ArchiveError::Io { .. }), "{err:?}");
        // The data was synced (first call, before any final name); what is linked hashes to its
        // name, and nothing is left in tmp/.
        assert_eq!(seen(&root), vec![(0, 2), (2, 0)]);
        for p in [&b"a"[..], b"b"] {
            let path = store.path(&Sha256Digest::of(p)).expect("linked");
            assert_eq!(fs::read(path).expect("read"), p);
        }
        assert_eq!(tmp_names(dir.path()), 0);
    }

    #[test]
    fn an_empty_batch_does_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BlobStore::open(dir.path())
            .expect("open store")
            .with_sync(failing_sync);
        let puts = store
            .put_batch(Vec::<(Option<Sha256Digest>, &[u8])>::new(), 1 << 20)
            .expect("nothing to sync");
        assert!(puts.is_empty());
    }

    #[test]
    fn stray_temp_files_are_cleared_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("tmp")).expect("mkdir");
        fs::write(dir.path().join("tmp/123-abc.part"), b"half").expect("write");
        let _store = BlobStore::open(dir.path()).expect("open store");
        assert_eq!(
            fs::read_dir(dir.path().join("tmp"))
                .expect("tmp dir exists")
                .count(),
            0
        );
    }
}
