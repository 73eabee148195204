//! Issue 3: the log witness — it cosigns a consistent log (C2SP tlog-cosignature), the
//! coordinator serves the cosigned checkpoint, `require_witness` holds a ship until a listed
//! witness cosigned a checkpoint covering the decision, and T16: two different checkpoints for
//! one size make the witness refuse and keep both as evidence.

mod archive_support;
#[path = "decisions_support/mod.rs"]
mod decisions_support;

use archive_support::{cli, text};
use decisions_support::{policy_text, Builder, Fixture};
use lockstep_archive::NewRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_cosigns_a_consistent_log_gates_ship_and_refuses_a_split_view() {
    let (b1, b2) = (Builder::new("b1"), Builder::new("b2"));
    let f = Fixture::start("witness", &[&b1, &b2], 2).await;
    let state = tempfile::tempdir().expect("tempdir");
    let st = state.path().to_str().expect("utf-8");
    let key = f.service.archive.verifier_key();

    // First run: the key is generated; the coordinator does not know the witness yet (403).
    let o = cli(
        &f.url,
        &["witness", "--state", st, "--once", "--log-key", &key],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("[[witnesses]]"), "{}", text(&o));
    let wkey = std::fs::read_to_string(state.path().join("witness.pub")).expect("witness.pub");
    let wkey = wkey.trim().to_string();
    let mode = std::fs::metadata(state.path().join("witness-key"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("key file");
    assert_eq!(mode, 0o600, "the witness key is private");

    // The operator lists the witness and requires it.
    let policy = policy_text(
        &[("b1", "b1.asc"), ("b2", "b2.asc")],
        2,
        &format!("require_witness = true\n[[witnesses]]\nname = \"w1\"\nkey = \"{wkey}\"\n"),
    );
    std::fs::write(&f.policy_path, policy).expect("policy");
    let (s, v) = f.reload_policy().await;
    assert_eq!(s, 200, "{v}");

    // Two builders agree: the package waits for the witness instead of shipping.
    let job = f.enqueue("hello", "1.0").await;
    let name = format!("hello_1.0_{}.deb", job.arch);
    for b in [&b1, &b2] {
        let (s, v) = f.attest(b, &job, &[(&name, b"same bytes")]).await;
        assert_eq!(s, 201, "{v}");
    }
    let row = f.status("hello").await;
    assert_eq!(row["state"], "pending", "{row}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or("")
            .contains("awaiting witness cosignature"),
        "{row}"
    );

    // The witness checks consistency from what it saw and cosigns; the package ships.
    let o = cli(&f.url, &["witness", "--state", st, "--once"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("cosigned size"), "{}", text(&o));
    assert_eq!(f.status("hello").await["state"], "ship");
    let served = f
        .http
        .get(format!("{}/log/checkpoint", f.url))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    lockstep_archive::proof::verify_checkpoint(&served, &key).expect("log signature");
    lockstep_archive::cosign::verify_cosignature(&served, &wkey).expect("cosignature served");
    let cosigned = f
        .http
        .get(format!("{}/log/checkpoint.cosigned", f.url))
        .send()
        .await
        .expect("GET");
    assert_eq!(cosigned.status(), 200);
    let cosigned = cosigned.text().await.expect("text");
    lockstep_archive::cosign::verify_cosignature(&cosigned, &wkey).expect("cosigned note");
    // Nothing new: nothing to do.
    let o = cli(&f.url, &["witness", "--state", st, "--once"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("already cosigned"), "{}", text(&o));
    // A cosignature by a key the policy does not list is refused.
    let stranger =
        lockstep_archive::cosign::WitnessKey::from_seed("stranger", [9; 32]).expect("key");
    let (s, v) = f
        .post_json(
            "/api/v1/log/cosignatures",
            &serde_json::json!({ "note": stranger.cosign(&served, 1).expect("cosign") }),
        )
        .await;
    assert_eq!(
        s, 200,
        "the listed witness's line is still on the served note: {v}"
    );
    let bare = served
        .lines()
        .filter(|l| !l.starts_with("— w1") && !l.contains(wkey.split('+').next().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let (s, v) = f
        .post_json(
            "/api/v1/log/cosignatures",
            &serde_json::json!({ "note": stranger.cosign(&bare, 1).expect("cosign") }),
        )
        .await;
    assert_eq!(s, 403, "{v}");

    // T16: a second log with the same key and the same size but other entries (a split view).
    let size = f.service.archive.log_size().expect("size");
    let fork_dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(fork_dir.path().join("data/archive")).expect("mkdir");
    std::fs::copy(
        f.dir.path().join("data/archive/log-key"),
        fork_dir.path().join("data/archive/log-key"),
    )
    .expect("copy log key");
    let fork_policy = fork_dir.path().join("policy.toml");
    std::fs::write(&fork_policy, "default_threshold = 1\n").expect("policy");
    let g = Fixture::start_with_policy("witness-fork", fork_dir, fork_policy).await;
    for i in 0..size {
        g.service
            .archive
            .append_record(NewRecord {
                kind: "attestation".into(),
                source: "hello".into(),
                version: "1.0".into(),
                arch: "amd64".into(),
                job_id: None,
                signer: None,
                dedup_key: None,
                body: format!("forged history {i}").into_bytes(),
                signature: None,
                blobs: vec![],
            })
            .expect("append");
    }
    g.service.archive.checkpoint().expect("checkpoint");
    assert_eq!(g.service.archive.log_size().expect("size"), size);
    let o = cli(&g.url, &["witness", "--state", st, "--once"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("split view"), "{}", text(&o));
    let evidence: Vec<_> = std::fs::read_dir(state.path().join("evidence"))
        .expect("evidence dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(evidence.len(), 2, "{evidence:?}");
    let notes: Vec<String> = evidence
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    for n in &notes {
        let info = lockstep_archive::proof::verify_checkpoint(n, &key).expect("both signed");
        assert_eq!(info.size, size);
    }
    assert_ne!(notes[0], notes[1], "the two conflicting notes are kept");
    // The witness still holds its last good state: the honest log is "already cosigned".
    let o = cli(&f.url, &["witness", "--state", st, "--once"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    g.stop().await;
    f.stop().await;
}
