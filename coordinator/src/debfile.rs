//! Bounded, read-only walking of Debian binary packages (`.deb`): the outer `ar` archive, the
//! `control.tar.*` and `data.tar.*` members, and the `control` file.
//!
//! The input is untrusted (whatever a builder uploaded), so everything is bounded and nothing is
//! extracted to disk: members and files beyond a size cap are listed but not hashed, the number of
//! tar entries is capped, link targets are recorded as text and never followed, and paths are kept
//! as data (lossy UTF-8), never joined to a directory.
//!
//! Crates: `ar` and `tar` read the two container formats (rather than a hand-written parser);
//! `flate2`, `liblzma` and `ruzstd` decompress the gzip, xz and zstd members dpkg-deb writes.

use std::io::{self, Read};
use std::path::Path;

use lockstep_proto::digest::Sha256Digest;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bounds on what is read from one `.deb`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest `ar` member that is decompressed and walked.
    pub max_member: u64,
    /// Largest file inside a tar member that is hashed.
    pub max_file: u64,
    /// Most decompressed bytes read from one tar member.
    pub max_unpacked: u64,
    /// Most entries listed from one tar member.
    pub max_entries: usize,
}

impl Default for Limits {
    /// Generous for real packages (Debian's largest data.tar members are a few GiB; most are far
    /// smaller), small enough that a hostile upload cannot exhaust the coordinator.
    fn default() -> Self {
        Limits {
            max_member: 2 * 1024 * 1024 * 1024,
            max_file: 512 * 1024 * 1024,
            max_unpacked: 4 * 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// Largest `control` file read into memory.
pub const MAX_CONTROL: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("cannot read the .deb: {0}")]
    Io(#[from] io::Error),
    #[error("not a Debian binary package: {0}")]
    NotADeb(String),
    #[error("member {member}: {message}")]
    Member { member: String, message: String },
}

/// One member of the outer `ar` archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// One entry of a tar member, as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    /// The path exactly as stored (lossy UTF-8), never resolved against a directory.
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `other`.
    pub kind: &'static str,
    pub size: u64,
    /// Permission bits, octal text (`0755`).
    pub mode: String,
    pub owner: String,
    /// Regular files up to the size cap.
    pub sha256: Option<Sha256Digest>,
    /// Symlink or hardlink target as recorded; never followed.
    pub link_target: Option<String>,
}

/// What one `.deb` contains.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Contents {
    pub members: Vec<Member>,
    /// The `control` file's text (from control.tar.*).
    pub control: Option<String>,
    pub control_files: Vec<FileEntry>,
    pub data_files: Vec<FileEntry>,
    /// What was skipped because of a limit.
    pub notes: Vec<String>,
}

/// Reads only the `control` file of a `.deb` (for apt's Packages index).
pub fn read_control(path: &Path) -> Result<String, DebError> {
    let limits = Limits {
        max_entries: 10_000,
        ..Limits::default()
    };
    read(path, limits, false)?
        .control
        .ok_or_else(|| DebError::NotADeb("control.tar has no ./control file".into()))
}

/// Walks a `.deb` within `limits`.
pub fn read_deb(path: &Path, limits: Limits) -> Result<Contents, DebError> {
    read(path, limits, true)
}

fn read(path: &Path, limits: Limits, with_data: bool) -> Result<Contents, DebError> {
    let file = std::fs::File::open(path)?;
    let mut ar = ar::Archive::new(file);
    let mut out = Contents::default();
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(|e| DebError::NotADeb(format!("bad ar archive: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        let size = entry.header().size();
        if first && name != "debian-binary" {
            return Err(DebError::NotADeb(format!(
                "first member is {name:?}, not debian-binary"
            )));
        }
        first = false;
        let mut hashing = HashingReader::new(&mut entry);
        let walk = (name.starts_with("control.tar") || (with_data && name.starts_with("data.tar")))
            && size <= limits.max_member;
        if walk {
            let is_control = name.starts_with("control.tar");
            let result = walk_tar(&name, &mut hashing, limits, is_control);
            match result {
                Ok((files, control, notes)) => {
                    if is_control {
                        out.control_files = files;
                        out.control = control;
                    } else {
                        out.data_files = files;
                    }
                    out.notes.extend(notes);
                }
                Err(e) => out.notes.push(format!("{name}: not walked: {e}")),
            }
        } else if size > limits.max_member {
            out.notes.push(format!(
                "{name}: {size} bytes, above the {} byte cap; hashed, not unpacked",
                limits.max_member
            ));
        }
        // Hash the rest of the member (all of it when not walked).
        io::copy(&mut hashing, &mut io::sink())?;
        out.members.push(Member {
            name,
            size,
            sha256: hashing.finish(),
        });
    }
    if first {
        return Err(DebError::NotADeb("empty ar archive".into()));
    }
    Ok(out)
}

type Walked = (Vec<FileEntry>, Option<String>, Vec<String>);

fn walk_tar(
    member: &str,
    raw: &mut dyn Read,
    limits: Limits,
    want_control: bool,
) -> Result<Walked, DebError> {
    let err = |message: String| DebError::Member {
        member: member.to_string(),
        message,
    };
    let decoder: Box<dyn Read + '_> = if member.ends_with(".tar") {
        Box::new(raw)
    } else if member.ends_with(".tar.gz") {
        Box::new(flate2::read::GzDecoder::new(raw))
    } else if member.ends_with(".tar.xz") {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(raw))
    } else if member.ends_with(".tar.zst") {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(raw).map_err(|e| err(format!("zstd: {e}")))?,
        )
    } else {
        return Err(err("unknown compression".into()));
    };
    let capped = CappedReader {
        inner: decoder,
        left: limits.max_unpacked,
    };
    let mut tar = tar::Archive::new(capped);
    let mut files = Vec::new();
    let mut control = None;
    let mut notes = Vec::new();
    for entry in tar.entries().map_err(|e| err(e.to_string()))? {
        let mut entry = entry.map_err(|e| err(format!("bad tar entry: {e}")))?;
        if files.len() >= limits.max_entries {
            notes.push(format!(
                "{member}: more than {} entries; the rest not listed",
                limits.max_entries
            ));
            break;
        }
        let header = entry.header();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let et = header.entry_type();
        let kind = match et {
            tar::EntryType::Regular | tar::EntryType::Continuous => "file",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            tar::EntryType::Fifo => "fifo",
            _ => "other",
        };
        let size = header.size().map_err(|e| err(e.to_string()))?;
        let mode = format!(
            "{:04o}",
            header.mode().map_err(|e| err(e.to_string()))? & 0o7777
        );
        let owner = format!(
            "{}/{}",
            header.uid().unwrap_or_default(),
            header.gid().unwrap_or_default()
        );
        let link_target = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let mut sha256 = None;
        if kind == "file" {
            if want_control && (path == "./control" || path == "control") && size <= MAX_CONTROL {
                let mut text = Vec::new();
                (&mut entry).take(MAX_CONTROL).read_to_end(&mut text)?;
                sha256 = Some(Sha256Digest::of(&text));
                control = Some(String::from_utf8_lossy(&text).into_owned());
            } else if size <= limits.max_file {
                let mut h = HashingReader::new(&mut entry);
                io::copy(&mut h, &mut io::sink())?;
                sha256 = Some(h.finish());
            } else {
                notes.push(format!(
                    "{member}: {path}: {size} bytes, above the {} byte cap; not hashed",
                    limits.max_file
                ));
            }
        }
        files.push(FileEntry {
            path,
            kind,
            size,
            mode,
            owner,
            sha256,
            link_target,
        });
    }
    Ok((files, control, notes))
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }
    fn finish(self) -> Sha256Digest {
        Sha256Digest(self.hasher.finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Fails (rather than silently truncating) once more than `left` bytes were read.
struct CappedReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(
                "decompressed member exceeds the size cap (possible decompression bomb)",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Parses a control paragraph into (field, value) pairs, keeping continuation lines.
pub fn control_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push('\n');
                last.1.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_keep_continuations() {
        let f = control_fields("Package: x\nDescription: a\n more\n .\nVersion: 1\n\nIgnored: y\n");
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].1, "a\n more\n .");
    }

    #[test]
    fn garbage_is_not_a_deb() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.deb");
        std::fs::write(&p, b"not an ar archive at all").expect("write");
        assert!(read_deb(&p, Limits::default()).is_err());
    }
}
