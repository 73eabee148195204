//! Issue 8: the distribution's own binaries as evidence, checked through the chain
//! (InRelease signature → index SHA-256 → .deb SHA-256), compared with the agreed bytes.

use std::time::Duration;

use lockstep_coordinator::official::{self, OfficialEvidence};
use lockstep_proto::v1::{OfficialVerdict, State};
use lockstep_tests::{Cluster, ClusterOptions};

/// An `Architecture: all` package from the machine's bookworm sources: both agents rebuild it
/// and the result says they reproduce the distribution's published bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agreed_bytes_that_equal_the_published_deb_reproduce_the_official_bytes() {
    let c = Cluster::start("official-repro", ClusterOptions::default())
        .await
        .expect("cluster");
    let out = c.cli(&["enqueue", "ca-certificates=20230311+deb12u1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = c
        .wait_decided("ca-certificates", Duration::from_secs(1200))
        .await
        .expect("decided");
    let row = &rows[0];
    assert_eq!(row.state, State::Ship, "{row:#?}");
    assert_eq!(row.arch, "all");
    // The official evidence is fetched in the background; wait for the verdict.
    let mut verdict = None;
    for _ in 0..240 {
        let rows = c
            .coordinator
            .status(Some("ca-certificates"))
            .expect("status");
        if let Some(o) = rows[0].official.clone() {
            verdict = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cmp = verdict.expect("the official binaries were recorded");
    assert_eq!(cmp.verdict, OfficialVerdict::Reproduces, "{cmp:#?}");
    let deb = cmp
        .artifacts
        .iter()
        .find(|a| a.name == "ca-certificates_20230311+deb12u1_all.deb")
        .expect("the published .deb is compared");
    assert_eq!(deb.result, "identical");
    assert_eq!(deb.official, deb.rebuilt);

    // The recorded evidence is the .deb apt downloads, with its chain.
    let recs = c
        .coordinator
        .archive
        .records_for(
            "ca-certificates",
            "20230311+deb12u1",
            "all",
            Some(official::KIND),
        )
        .expect("records");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].signer.as_deref(), Some(official::DISTRIBUTION));
    let ev: OfficialEvidence = serde_json::from_slice(&recs[0].body).expect("evidence");
    let d = ev
        .debs
        .iter()
        .find(|d| d.package == "ca-certificates")
        .expect("the .deb");
    assert!(d.paragraph.contains(&format!("SHA256: {}", d.sha256)));
    assert!(
        c.coordinator.archive.has_blob(&d.inrelease_sha256),
        "InRelease kept as evidence"
    );
    let dl = tempfile::tempdir().expect("tempdir");
    let path = c
        .coordinator
        .apt
        .download_binary("ca-certificates=20230311+deb12u1", dl.path())
        .await
        .expect("apt downloads the published .deb");
    let (sha, _) = lockstep_proto::digest::hash_file(&path).expect("hash");
    assert_eq!(sha, d.sha256, "sha256 equal to the .deb apt downloads");
    // It is never a builder vote.
    assert!(!row.builders.iter().any(|b| b == official::DISTRIBUTION));
    // The summary counts it as reproducing.
    let out = c.cli(&["summary", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary json");
    assert!(
        v.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["arch"] == "all" && r["reproduces"].as_u64() >= Some(1)),
        "{v}"
    );
    c.stop().await;
}

/// A tampered official `.deb`, index or `InRelease` is refused by the chain check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_official_deb_index_or_inrelease_is_refused() {
    let c = Cluster::start(
        "official-tamper",
        ClusterOptions {
            agents: 0,
            ..Default::default()
        },
    )
    .await
    .expect("cluster");
    c.coordinator
        .apt
        .update_if_stale()
        .await
        .expect("apt update");
    let lists = c.coordinator.apt.lists_dir();
    let found = tokio::task::spawn_blocking(move || {
        official::find_binaries(&lists, "hello", "2.10-3", "amd64")
    })
    .await
    .expect("task")
    .expect("index scan");
    let f = found
        .iter()
        .find(|f| f.fields.get("Package").map(String::as_str) == Some("hello"))
        .expect("hello 2.10-3 is published for amd64");
    let (inrelease, index) = official::index_location(&f.lists_file).expect("location");
    let keyrings = c.coordinator.apt.keyrings();
    official::check_inrelease(&inrelease, &keyrings, &index, &f.index_sha256)
        .expect("the honest chain verifies");

    // A Packages index that does not match what InRelease lists.
    let wrong = lockstep_proto::Sha256Digest::of(b"another index");
    let e = official::check_inrelease(&inrelease, &keyrings, &index, &wrong).expect_err("refused");
    assert!(e.to_string().contains("is not the"), "{e}");

    // An InRelease altered after signing.
    let work = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(&inrelease).expect("InRelease");
    let altered = text.replacen(&f.index_sha256.to_hex(), &wrong.to_hex(), 1);
    assert_ne!(altered, text);
    let bad = work.path().join("InRelease");
    std::fs::write(&bad, altered).expect("write");
    let e = official::check_inrelease(&bad, &keyrings, &index, &wrong).expect_err("refused");
    assert!(e.to_string().contains("does not verify"), "{e}");

    // A .deb whose bytes changed after download.
    let path = c
        .coordinator
        .apt
        .download_binary("hello:amd64=2.10-3", work.path())
        .await
        .expect("download");
    official::check_deb(&path, &f.fields).expect("the published bytes match");
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).expect("write");
    let e = official::check_deb(&path, &f.fields).expect_err("refused");
    assert!(e.to_string().contains("refusing"), "{e}");
    // Nothing was recorded as official.
    assert!(c
        .coordinator
        .archive
        .records_by_kind(official::KIND)
        .expect("records")
        .is_empty());
    c.stop().await;
}
