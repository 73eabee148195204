//! Content-addressed, write-once blob files under `<dir>/blobs/`.
//!
//! A blob named by SHA-256 digest `abcd…` lives at `blobs/ab/cd/abcd…`, mode 0444. Writes stream
//! into `blobs/tmp/`, hashing as they go (constant memory), are fsynced, and then appear at the
//! final name through `hard_link`, which fails if the name exists: an existing blob is never
//! replaced. Only complete, synced, verified files ever appear under a final name; a crash leaves
//! at most a stray file in `blobs/tmp/`, which `BlobStore::open` clears.
//!
//! This module only touches the file system; recording alarms is the caller's job.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use lockstep_proto::digest::{hash_file, Hasher, Sha256Digest, HASH_BUF};
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

/// How a file's contents are forced to stable storage. A seam so tests can inject fsync failure;
/// production always uses [`File::sync_all`].
pub(crate) type SyncFn = fn(&File) -> io::Result<()>;

/// The blob directory.
#[derive(Debug)]
pub(crate) struct BlobStore {
    root: PathBuf,
    sync: SyncFn,
}

/// Removes a temp file on drop unless disarmed, so every early return cleans up.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the file may never have been fully created. A leftover is harmless
            // (it never has a final name) and is cleared by the next `open`.
            let _ = fs::remove_file(&self.path);
        }
    }
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
        })
    }

    #[cfg(test)]
    pub(crate) fn with_sync(mut self, sync: SyncFn) -> Self {
        self.sync = sync;
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

    /// Streams `reader` into the store. See the module documentation for the protocol.
    pub(crate) fn put(
        &self,
        expected: Option<Sha256Digest>,
        mut reader: impl Read,
        max_size: u64,
    ) -> Result<BlobPut, ArchiveError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = TempFile {
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
        let mut buf = vec![0u8; HASH_BUF];
        loop {
            let n = match reader.read(&mut buf) {
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
        // The first fsync error is fatal: after a failed fsync the page cache state is unknown,
        // and retrying can report success for data that was never written.
        (self.sync)(&file).map_err(io_ctx(format!("fsyncing {}", tmp.path.display())))?;
        drop(file);

        let final_path = self.final_path(&digest);
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

        match fs::hard_link(&tmp.path, &final_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Never replace. Decide whether the existing file is the same blob.
                let (existing, existing_size) = hash_file(&final_path).map_err(io_ctx(format!(
                    "re-reading existing blob {}",
                    final_path.display()
                )))?;
                if existing == digest {
                    return Ok(BlobPut {
                        digest,
                        size: existing_size,
                        created: false,
                    });
                }
                return Err(ArchiveError::Collision { digest });
            }
            Err(e) => {
                return Err(ArchiveError::io(
                    format!("linking blob to {}", final_path.display()),
                    e,
                ))
            }
        }
        fs::remove_file(&tmp.path)
            .map_err(io_ctx(format!("removing temp file {}", tmp.path.display())))?;
        tmp.armed = false;
        self.fsync_dir(&leaf_dir)?;

        // Trust nothing: read back what is now under the final name.
        let (reread, reread_size) = hash_file(&final_path).map_err(io_ctx(format!(
            "re-reading new blob {}",
            final_path.display()
        )))?;
        if reread != digest || reread_size != size {
            return Err(ArchiveError::Corrupt(format!(
                "blob {digest} read back from {} hashes to {reread} ({reread_size} bytes) right \
                 after being written",
                final_path.display()
            )));
        }
        Ok(BlobPut {
            digest,
            size,
            created: true,
        })
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
