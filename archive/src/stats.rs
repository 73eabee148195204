//! Cheap figures about the archive for operators: how many bytes are stored, how many bytes the
//! records refer to, and so how much content addressing saves. Two aggregate queries over the
//! `blobs` and `record_blobs` tables; no blob file is read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::archive::Archive;
use crate::error::ArchiveError;

/// Sizes of the archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveStats {
    /// Distinct blobs stored.
    pub blobs: u64,
    /// Bytes of distinct blobs (what is on disk, before file system overhead).
    pub blob_bytes: u64,
    /// Links from records to blobs (an artifact attested by two builders is two links).
    pub links: u64,
    /// Bytes of all links added up: what would be stored without deduplication.
    pub linked_bytes: u64,
    /// Records stored.
    pub records: u64,
}

impl ArchiveStats {
    /// `linked_bytes / blob_bytes`: 2.0 means every stored byte is referred to twice. Blobs
    /// uploaded but never linked count in `blob_bytes`, so the ratio can be below 1. An empty
    /// archive has ratio 1.
    pub fn dedup_ratio(&self) -> f64 {
        if self.blob_bytes == 0 {
            1.0
        } else {
            self.linked_bytes as f64 / self.blob_bytes as f64
        }
    }
}

impl Archive {
    /// Sizes of the archive (see [`ArchiveStats`]).
    pub fn stats(&self) -> Result<ArchiveStats, ArchiveError> {
        let conn = self.reader()?;
        let (blobs, blob_bytes): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (links, linked_bytes): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM record_blobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let records: i64 = conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
        Ok(ArchiveStats {
            blobs: blobs as u64,
            blob_bytes: blob_bytes as u64,
            links: links as u64,
            linked_bytes: linked_bytes as u64,
            records: records as u64,
        })
    }
}

/// What the group commit has done since the archive was opened: how many commits, how many
/// callers' appends they carried, and how long they took. Appends per commit show how well
/// concurrent uploads share an fsync; the mean commit time shows what the disk costs each group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed (each one fsync, one signed checkpoint), failed ones included.
    pub commits: u64,
    /// Callers' appends carried by those commits, refused ones included.
    pub appends: u64,
    /// Wall time spent in commits, from the transaction's start to its fsync returning.
    pub busy: Duration,
}

impl CommitStats {
    /// Appends carried per commit; 0 before the first commit.
    pub fn appends_per_commit(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.appends as f64 / self.commits as f64
        }
    }

    /// The figures of `self` that happened after `earlier` (a snapshot of the same archive).
    pub fn since(&self, earlier: &CommitStats) -> CommitStats {
        CommitStats {
            commits: self.commits.saturating_sub(earlier.commits),
            appends: self.appends.saturating_sub(earlier.appends),
            busy: self.busy.saturating_sub(earlier.busy),
        }
    }
}

/// The counters behind [`CommitStats`], updated by the group commit's leader.
#[derive(Debug, Default)]
pub(crate) struct CommitCounters {
    commits: AtomicU64,
    appends: AtomicU64,
    busy_nanos: AtomicU64,
}

impl CommitCounters {
    pub(crate) fn record(&self, appends: usize, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.appends.fetch_add(appends as u64, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_figures_add_up_and_subtract_from_an_earlier_snapshot() {
        let c = CommitCounters::default();
        assert_eq!(c.snapshot().appends_per_commit(), 0.0);
        c.record(3, Duration::from_millis(2));
        let first = c.snapshot();
        c.record(5, Duration::from_millis(4));
        let now = c.snapshot();
        assert_eq!(
            now,
            CommitStats {
                commits: 2,
                appends: 8,
                busy: Duration::from_millis(6)
            }
        );
        assert_eq!(now.appends_per_commit(), 4.0);
        assert_eq!(
            now.since(&first),
            CommitStats {
                commits: 1,
                appends: 5,
                busy: Duration::from_millis(4)
            }
        );
    }

    #[test]
    fn the_ratio_of_an_empty_archive_is_one_and_otherwise_links_over_bytes() {
        assert_eq!(ArchiveStats::default().dedup_ratio(), 1.0);
        let s = ArchiveStats {
            blob_bytes: 100,
            linked_bytes: 250,
            ..Default::default()
        };
        assert_eq!(s.dedup_ratio(), 2.5);
    }
}
