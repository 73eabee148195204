//! Cheap figures about the archive for operators: how many bytes are stored, how many bytes the
//! records refer to, and so how much content addressing saves. Two aggregate queries over the
//! `blobs` and `record_blobs` tables; no blob file is read.

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

#[cfg(test)]
mod tests {
    use super::*;

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
