//! Service packaging: the systemd units pass `systemd-analyze verify`, the sample configs are
//! what the daemons accept, and bad configuration exits 64 with the key named.

use std::process::Command;

use lockstep_tests::{lockstep_bin, repo_root};

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = lockstep_bin("lockstep-coordinator")
        .parent()
        .expect("binary dir")
        .to_path_buf();
    for unit in ["lockstep-coordinator.service", "lockstep-agent@.service"] {
        let text = std::fs::read_to_string(repo_root().join("systemd").join(unit)).expect("unit");
        assert!(text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"));
        assert!(text.contains("CapabilityBoundingSet="));
        // verify checks that ExecStart exists: point it at the freshly built binaries.
        let text = text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        let name = unit.replace("@.", "@test.");
        std::fs::write(dir.path().join(unit), &text).expect("write");
        std::fs::write(dir.path().join(&name), &text).expect("write");
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("lockstep-coordinator.service")
        .arg("lockstep-agent@test.service")
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze runs");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sample_configs_are_accepted_and_bad_config_exits_64() {
    let root = repo_root();
    let out = Command::new(lockstep_bin("lockstep-coordinator"))
        .arg("--config")
        .arg(root.join("config/coordinator.sample.toml"))
        .arg("check-config")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:8440\""), "{text}");
    assert!(
        text.contains("guest:***@"),
        "the AMQP password is redacted: {text}"
    );

    let out = Command::new(lockstep_bin("lockstep-agent"))
        .arg("--config")
        .arg(root.join("config/agent.sample.toml"))
        .arg("check-config")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"not-an-address\"\n").expect("write");
    let out = Command::new(lockstep_bin("lockstep-coordinator"))
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
    std::fs::write(&bad, "concurency = 2\n").expect("write");
    let out = Command::new(lockstep_bin("lockstep-agent"))
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64), "a misspelt key is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("concurency"));
}
