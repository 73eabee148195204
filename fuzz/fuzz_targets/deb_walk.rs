//! `.deb` / ar / tar walking (the coordinator's `debfile` reader, used on builders' and
//! developers' uploads for diffs and the apt repository): never panics, stays within its limits,
//! and only ever reports paths as data.
//!
//! The reader takes a path, so each input is written to one reused temporary file. Limits are
//! small so a decompression bomb costs milliseconds rather than the default caps' gigabytes.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lockstep_coordinator::debfile::{control_fields, read_deb, Limits};

const LIMITS: Limits = Limits {
    max_member: 4 * 1024 * 1024,
    max_file: 256 * 1024,
    max_unpacked: 8 * 1024 * 1024,
    max_entries: 1000,
};

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch().path().join("input.deb");
    let mut f = std::fs::File::create(&path).expect("create the scratch file");
    f.write_all(data).expect("write the scratch file");
    drop(f);
    let Ok(c) = read_deb(&path, LIMITS) else {
        return;
    };
    assert!(!c.members.is_empty(), "a .deb with no members was accepted");
    assert!(c.control_files.len() <= LIMITS.max_entries);
    assert!(c.data_files.len() <= LIMITS.max_entries);
    for f in c.control_files.iter().chain(&c.data_files) {
        if f.sha256.is_some() {
            assert!(f.size <= LIMITS.max_file || f.path.ends_with("control"));
        }
    }
    if let Some(text) = &c.control {
        let _ = control_fields(text);
    }
});
