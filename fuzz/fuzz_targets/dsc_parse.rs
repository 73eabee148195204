//! `.dsc` parsing (`lockstep_proto::dsc::parse`): never panics, and whatever it accepts obeys
//! the promises the rest of the system relies on (plain file names, valid name and version,
//! at least one file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_proto::dsc;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dsc::strip_cleartext(text);
        let _ = dsc::upstream_version(text);
    }
    let Ok(d) = dsc::parse(data) else {
        return;
    };
    assert!(!d.files.is_empty(), "accepted a .dsc without files");
    for f in &d.files {
        assert!(
            dsc::check_file_name(&f.name).is_ok(),
            "accepted an unsafe file name {:?}",
            f.name
        );
        assert!(!f.name.contains('/') && f.name != ".." && f.name != ".");
    }
    assert!(dsc::check_name_version(&d.source, &d.version).is_ok());
    let _ = dsc::build_jobs(&d.architecture, "amd64");
    let _ = dsc::upstream_version(&d.version);
});
