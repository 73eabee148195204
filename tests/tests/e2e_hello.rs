//! Issue 2's end-to-end test: the real `hello` from the machine's apt sources, a real RabbitMQ,
//! two agents building in Docker, OpenPGP signatures, the archive, the quorum — to `ship`.

use std::process::Command;
use std::time::Duration;

use lockstep_proto::v1::{State, Statement};
use lockstep_tests::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hello_is_rebuilt_by_two_agents_and_ships() {
    let cluster = Cluster::start("e2e-hello", ClusterOptions::default())
        .await
        .expect("cluster starts");

    // Enqueue through the real CLI, as an operator would.
    let out = cluster.cli(&["enqueue", "hello"]);
    assert!(
        out.status.success(),
        "enqueue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("enqueued hello"));

    let rows = cluster
        .wait_decided("hello", Duration::from_secs(1500))
        .await
        .expect("hello is decided");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];
    assert_eq!(row.state, State::Ship, "{row:#?}");

    // The status contract of BRIEF.md, through the CLI.
    let out = cluster.cli(&["status", "hello", "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let arr = json.as_array().expect("a JSON array");
    assert_eq!(arr.len(), 1);
    let o = &arr[0];
    assert_eq!(o["source"], "hello");
    assert_eq!(o["state"], "ship");
    assert!(o["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(o["arch"].as_str().is_some_and(|v| !v.is_empty()));
    let builders: Vec<&str> = o["builders"]
        .as_array()
        .expect("builders array")
        .iter()
        .filter_map(|b| b.as_str())
        .collect();
    assert_eq!(builders.len(), 2, "two distinct fingerprints attested");
    assert_ne!(builders[0], builders[1]);
    for a in &cluster.agents {
        assert!(
            builders.contains(&a.fingerprint.as_str()),
            "{} attested",
            a.name
        );
    }
    let artifacts = o["artifacts"].as_array().expect("artifacts array");
    assert!(artifacts.iter().any(|a| a["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("hello_") && n.ends_with(".deb"))
        && a["sha256"].as_str().is_some_and(|s| s.len() == 64)));

    // Both statements name the same bytes for every artifact.
    let records = cluster
        .coordinator
        .archive
        .records_for("hello", &row.version, &row.arch, Some("attestation"))
        .expect("records");
    assert_eq!(records.len(), 2);
    let statements: Vec<Statement> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("stored statement"))
        .collect();
    assert_eq!(statements[0].artifact_set(), statements[1].artifact_set());
    assert_ne!(
        statements[0].builder.fingerprint,
        statements[1].builder.fingerprint
    );
    assert!(statements[0]
        .recipe
        .build_path
        .contains("/build/reproducible-path/hello-"));

    // gpgv (GnuPG's verifier) accepts each signed .buildinfo with that agent's public key.
    let work = tempfile::tempdir().expect("tempdir");
    for r in &records {
        let agent = cluster
            .agents
            .iter()
            .find(|a| Some(a.fingerprint.as_str()) == r.signer.as_deref())
            .expect("signer is one of the agents");
        let link = r
            .blobs
            .iter()
            .find(|b| b.role == "buildinfo")
            .expect("a signed .buildinfo is linked");
        let signed = cluster
            .coordinator
            .archive
            .blob_path(&link.sha256)
            .expect("the signed .buildinfo is stored");
        let keyring = work.path().join(format!("{}.gpg", agent.name));
        let armored = std::fs::read(&agent.public_key).expect("public key");
        let certs = lockstep_proto::signing::Keyring::parse_certs(&armored).expect("cert");
        lockstep_proto::signing::write_binary_keyring(&certs, &keyring).expect("keyring");
        let out = Command::new("gpgv")
            .arg("--keyring")
            .arg(&keyring)
            .arg(&signed)
            .output()
            .expect("gpgv runs (install gpgv)");
        assert!(
            out.status.success(),
            "gpgv refused {}'s .buildinfo: {}",
            agent.name,
            String::from_utf8_lossy(&out.stderr)
        );
        // A tampered copy is refused.
        let mut bytes = std::fs::read(&signed).expect("read");
        let pos = bytes
            .windows(7)
            .position(|w| w == b"Source:")
            .expect("a .buildinfo has a Source field");
        bytes[pos + 8] ^= 0x01;
        let tampered = work.path().join("tampered.buildinfo");
        std::fs::write(&tampered, bytes).expect("write");
        let out = Command::new("gpgv")
            .arg("--keyring")
            .arg(&keyring)
            .arg(&tampered)
            .output()
            .expect("gpgv runs");
        assert!(
            !out.status.success(),
            "gpgv must refuse a tampered .buildinfo"
        );
    }

    // The decision is signed and verifies through the CLI.
    let out = cluster.cli(&["decision", "hello", &row.version, &row.arch]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("SHIP") && text.contains("signature good"),
        "{text}"
    );

    // Issue 8: hello 2.10-3 was uploaded before bookworm's last toolchain update, so the
    // distribution's .deb differs from the agreed bytes — and the diff names where.
    let mut official = None;
    for _ in 0..240 {
        let rows = cluster.coordinator.status(Some("hello")).expect("status");
        if let Some(o) = rows[0].official.clone() {
            official = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let official = official.expect("the distribution's binaries were recorded");
    assert_eq!(
        official.verdict,
        lockstep_proto::v1::OfficialVerdict::OfficialDiffers,
        "{official:#?}"
    );
    assert!(official
        .artifacts
        .iter()
        .any(|a| a.name.starts_with("hello_") && a.result == "differs"));
    let out = cluster.cli(&["status", "hello"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("official bytes differ"));
    let out = cluster.cli(&["diff", "hello", &row.version, &row.arch]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("distribution")
            && text.contains("data.tar")
            && text.contains("./usr/bin/hello"),
        "the diff names the differing member and file: {text}"
    );

    cluster.stop().await;
}
