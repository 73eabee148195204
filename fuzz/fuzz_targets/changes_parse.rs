//! `.changes` parsing (the coordinator's developer-upload parser, run on the signed text):
//! never panics, and accepted files have plain names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_coordinator::uploads::parse_changes;
use lockstep_proto::dsc;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = parse_changes(data) else {
        return;
    };
    assert!(!c.files.is_empty(), "accepted a .changes without files");
    assert!(dsc::check_name_version(&c.source, &c.version).is_ok());
    for f in &c.files {
        assert!(
            dsc::check_file_name(&f.name).is_ok(),
            "accepted an unsafe file name {:?}",
            f.name
        );
    }
});
