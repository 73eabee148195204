//! Helpers shared by the `archive_*` tests (issue 3): running the real `lockstep` binary against a
//! coordinator, copying and tampering with a data directory behind the service's back, and
//! making developer-signed `.changes` uploads.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::signing::SigningKey;

/// Runs `lockstep --coordinator URL ARGS…`.
pub fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(lockstep_tests::lockstep_bin("lockstep"))
        .arg("--coordinator")
        .arg(url)
        .args(args)
        .output()
        .expect("the lockstep binary runs")
}

/// stdout + stderr of a run, for assertion messages and searching.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `cp -a src dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .expect("cp runs");
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// Runs SQL on an archive database as an attacker with disk access would: the immutability
/// triggers are dropped first (the archive's audit must notice their absence too, so callers
/// recreate nothing).
pub fn tamper_sql(archive_dir: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(archive_dir.join("archive.sqlite")).expect("open db");
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER {t}"))
            .expect("drop trigger");
    }
    conn.execute_batch(sql).expect("tamper SQL runs");
}

/// Writes `files` and a `.changes` listing them, clearsigned by `key`, into `dir`; returns the
/// path of the `.changes`.
pub fn write_upload(
    dir: &Path,
    key: &SigningKey,
    source: &str,
    version: &str,
    files: &[(&str, &[u8])],
) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut sums = String::new();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write file");
        sums.push_str(&format!(
            " {} {} {name}\n",
            Sha256Digest::of(bytes).to_hex(),
            bytes.len()
        ));
    }
    let changes = format!(
        "Format: 1.8\nDate: Mon, 01 Jan 2024 00:00:00 +0000\nSource: {source}\n\
         Architecture: amd64\nVersion: {version}\nDistribution: unstable\n\
         Maintainer: Dev <dev@lockstep.invalid>\nChanges:\n {source} ({version}) unstable; urgency=medium\n .\n   * Test upload.\n\
         Checksums-Sha256:\n{sums}"
    );
    let signed = key.clearsign(changes.as_bytes()).expect("clearsign");
    let path = dir.join(format!("{source}_{version}_amd64.changes"));
    std::fs::write(&path, signed).expect("write .changes");
    path
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    lockstep_tests::free_port().expect("a free loopback port")
}
