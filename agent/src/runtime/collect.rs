//! Host-side collection of build outputs, written for a hostile build.
//!
//! The build user could leave anything in its output directory: symlinks to the agent's key,
//! hard links to host files it could see, FIFOs that block a reader, device nodes, odd names.
//! Only the top level of the output directory is looked at, and every entry whose name ends like
//! an output (`.deb`, `.udeb`, `.ddeb`, `.buildinfo`, `.changes`) must be a plain, singly-linked
//! regular file with a plain name, or the whole build is refused with
//! [`RuntimeError::BadOutput`]. Files are opened with `O_NOFOLLOW | O_NONBLOCK` and checked again
//! through the open descriptor before a byte is read. Collection runs after the build container
//! has been removed, so nothing in the container can change the directory meanwhile.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use lockstep_proto::digest::hash_reader;

use super::{OutputFile, RuntimeError};

/// Suffixes of files a Debian build produces and the agent hashes.
const OUTPUT_SUFFIXES: [&str; 5] = [".deb", ".udeb", ".ddeb", ".buildinfo", ".changes"];

/// More output files than any real source package produces (the largest produce a few hundred).
const MAX_OUTPUTS: usize = 4096;

/// What a build left behind, hashed.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// `.deb`, `.udeb` and `.ddeb` files, sorted by name.
    pub(crate) artifacts: Vec<OutputFile>,
    pub(crate) buildinfo: Option<OutputFile>,
    pub(crate) changes: Option<OutputFile>,
}

/// Whether `name` is an acceptable output file name:
/// `^[A-Za-z0-9][A-Za-z0-9.+~_-]*\.(deb|udeb|ddeb|buildinfo|changes)$`.
pub(crate) fn is_valid_output_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    first_ok
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+.~_-".contains(&b))
        && OUTPUT_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// Whether a directory entry claims to be an output: its name ends like one, whatever else is in it.
fn looks_like_output(name: &[u8]) -> bool {
    OUTPUT_SUFFIXES.iter().any(|s| name.ends_with(s.as_bytes()))
}

/// Walks `dir` (top level only), validates every would-be output and hashes it. Blocking.
pub(crate) fn collect_outputs(dir: &Path) -> Result<Collected, RuntimeError> {
    let io_err = |what: &str, e: std::io::Error| {
        RuntimeError::Infrastructure(format!("{what} {}: {e}", dir.display()))
    };
    // The directory itself must still be the directory the runtime created, not a symlink the
    // build swapped in.
    let dir_meta = std::fs::symlink_metadata(dir).map_err(|e| io_err("stat", e))?;
    if !dir_meta.file_type().is_dir() {
        return Err(RuntimeError::BadOutput(format!(
            "output directory {} was replaced by a non-directory",
            dir.display()
        )));
    }

    let mut out = Collected::default();
    let mut seen = 0usize;
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("read", e))? {
        let entry = entry.map_err(|e| io_err("read", e))?;
        let raw_name = entry.file_name();
        if !looks_like_output(raw_name.as_encoded_bytes()) {
            continue;
        }
        seen += 1;
        if seen > MAX_OUTPUTS {
            return Err(RuntimeError::BadOutput(format!(
                "more than {MAX_OUTPUTS} output files"
            )));
        }
        let name = match raw_name.to_str() {
            Some(n) if is_valid_output_name(n) => n.to_owned(),
            _ => {
                return Err(RuntimeError::BadOutput(format!(
                    "output file name not allowed: {raw_name:?}"
                )))
            }
        };
        let path = dir.join(&name);
        let file = open_plain_file(&path, &name)?;
        let (sha256, size) = hash_reader(&file)
            .map_err(|e| RuntimeError::Infrastructure(format!("hashing {name}: {e}")))?;
        let output = OutputFile {
            name: name.clone(),
            path,
            sha256,
            size,
        };
        if name.ends_with(".buildinfo") {
            put_single(&mut out.buildinfo, output, "buildinfo")?;
        } else if name.ends_with(".changes") {
            put_single(&mut out.changes, output, "changes")?;
        } else {
            out.artifacts.push(output);
        }
    }
    out.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A build produces one `.buildinfo` and one `.changes`; more is not a Debian build.
fn put_single(
    slot: &mut Option<OutputFile>,
    file: OutputFile,
    kind: &str,
) -> Result<(), RuntimeError> {
    if let Some(first) = slot {
        return Err(RuntimeError::BadOutput(format!(
            "more than one .{kind}: {} and {}",
            first.name, file.name
        )));
    }
    *slot = Some(file);
    Ok(())
}

/// Opens `path` only if it is a regular file with one link, checked before and after opening.
fn open_plain_file(path: &Path, name: &str) -> Result<File, RuntimeError> {
    let bad = |why: &str| RuntimeError::BadOutput(format!("{name}: {why}"));
    let before = std::fs::symlink_metadata(path)
        .map_err(|e| RuntimeError::Infrastructure(format!("stat {name}: {e}")))?;
    check_plain(&before).map_err(bad)?;
    // O_NOFOLLOW: a symlink swapped in after the check fails to open (ELOOP) instead of being
    // followed; O_NONBLOCK: a FIFO swapped in cannot block the agent.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => bad("is a symbolic link"),
            _ => RuntimeError::Infrastructure(format!("open {name}: {e}")),
        })?;
    let after = file
        .metadata()
        .map_err(|e| RuntimeError::Infrastructure(format!("fstat {name}: {e}")))?;
    check_plain(&after).map_err(bad)?;
    if (before.dev(), before.ino()) != (after.dev(), after.ino()) {
        return Err(bad("changed while being opened"));
    }
    Ok(file)
}

/// Why metadata is not that of a plain, singly-linked regular file.
fn check_plain(meta: &std::fs::Metadata) -> Result<(), &'static str> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        Err("is a symbolic link")
    } else if !ft.is_file() {
        Err("is not a regular file (directory, device, FIFO or socket)")
    } else if meta.nlink() != 1 {
        Err("is a hard link")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn output_names_follow_the_allowed_pattern() {
        for ok in [
            "hello_2.10-3_amd64.deb",
            "hello-dbgsym_2.10-3_amd64.ddeb",
            "x_1.0~rc1+b2_all.udeb",
            "hello_2.10-3_amd64.buildinfo",
            "hello_2.10-3_amd64.changes",
        ] {
            assert!(is_valid_output_name(ok), "{ok}");
        }
        for bad in [
            ".deb",
            "..evil.deb",
            "-x.deb",
            "a/b.deb",
            "a b.deb",
            "a.deb.txt",
            "hello.dsc",
            "é.deb",
        ] {
            assert!(!is_valid_output_name(bad), "{bad}");
        }
    }

    #[test]
    fn plain_outputs_are_hashed_and_sorted_and_other_files_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("b_1_all.deb"), b"b").expect("write");
        std::fs::write(dir.path().join("a_1_all.deb"), b"a").expect("write");
        std::fs::write(dir.path().join("a_1.buildinfo"), b"i").expect("write");
        std::fs::write(dir.path().join("a_1.dsc"), b"d").expect("write");
        symlink("/etc/passwd", dir.path().join("a_1.tar.xz")).expect("symlink");
        let got = collect_outputs(dir.path()).expect("collects");
        let names: Vec<_> = got.artifacts.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a_1_all.deb", "b_1_all.deb"]);
        assert_eq!(
            got.artifacts[0].sha256,
            lockstep_proto::Sha256Digest::of(b"a")
        );
        assert_eq!(got.artifacts[0].size, 1);
        assert_eq!(got.buildinfo.expect("buildinfo").name, "a_1.buildinfo");
        assert!(got.changes.is_none());
    }

    fn assert_refused(setup: impl FnOnce(&Path)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ok_1_all.deb"), b"ok").expect("write");
        setup(dir.path());
        match collect_outputs(dir.path()) {
            Err(RuntimeError::BadOutput(_)) => {}
            other => panic!("expected BadOutput, got {other:?}"),
        }
    }

    #[test]
    fn symlinked_outputs_are_refused() {
        assert_refused(|d| symlink("/etc/shadow", d.join("evil.deb")).expect("symlink"));
    }

    #[test]
    fn hard_linked_outputs_are_refused() {
        assert_refused(|d| {
            std::fs::hard_link(d.join("ok_1_all.deb"), d.join("twin_1_all.deb")).expect("link")
        });
    }

    #[test]
    fn directories_and_odd_names_are_refused() {
        assert_refused(|d| std::fs::create_dir(d.join("dir_1_all.deb")).expect("mkdir"));
        assert_refused(|d| std::fs::write(d.join("..evil.deb"), b"x").expect("write"));
        assert_refused(|d| std::fs::write(d.join("sp ace.changes"), b"x").expect("write"));
        assert_refused(|d| {
            let fifo = d.join("fifo_1_all.deb");
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo runs");
            assert!(status.success());
        });
    }

    #[test]
    fn a_symlinked_output_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        symlink("/etc", dir.path().join("out")).expect("symlink");
        assert!(matches!(
            collect_outputs(&dir.path().join("out")),
            Err(RuntimeError::BadOutput(_))
        ));
    }
}
