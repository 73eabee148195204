//! Issue 3: developer uploads (`lockstep upload`) — accepted from a listed developer key, refused
//! for an unknown key or a file that does not match the signed checksums, archived with blob
//! links (the uploader's copy even when the bytes deduplicate), flagged when the builders agree
//! on other bytes; and the lookups over them.

mod archive_support;
#[path = "decisions_support/mod.rs"]
mod decisions_support;

use archive_support::{cli, text, write_upload};
use decisions_support::{policy_text, Builder, Fixture};
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::signing::SigningKey;

async fn fixture(test: &str, builders: &[&Builder], dev: &SigningKey, extra: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("keys")).expect("mkdir");
    for b in builders {
        std::fs::write(
            dir.path().join(format!("keys/{}.asc", b.name)),
            b.key.public_armored().expect("armor"),
        )
        .expect("write");
    }
    std::fs::write(
        dir.path().join("keys/dev.asc"),
        dev.public_armored().expect("armor"),
    )
    .expect("write");
    let names: Vec<(String, String)> = builders
        .iter()
        .map(|b| (b.name.clone(), format!("{}.asc", b.name)))
        .collect();
    let refs: Vec<(&str, &str)> = names
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut policy = policy_text(&refs, 2, extra);
    policy.push_str("[[developers]]\nname = \"dev\"\nkey = \"keys/dev.asc\"\n");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).expect("policy");
    Fixture::start_with_policy(test, dir, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developer_upload_is_archived_and_refused_for_unknown_keys_and_bad_checksums() {
    let dev = SigningKey::generate("Dev <dev@lockstep.invalid>").expect("keygen");
    let f = fixture("upload", &[], &dev, "").await;
    let work = tempfile::tempdir().expect("tempdir");
    let deb: &[u8] = b"developer deb";
    let bi: &[u8] = b"Format: 1.0\nSource: hello\n";
    let changes = write_upload(
        &work.path().join("ok"),
        &dev,
        "hello",
        "2.10-3",
        &[
            ("hello_2.10-3_amd64.deb", deb),
            ("hello_2.10-3_amd64.buildinfo", bi),
        ],
    );
    let o = cli(
        &f.url,
        &["upload", changes.to_str().expect("utf-8"), "--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["signer"], dev.fingerprint().as_str());
    assert_eq!(v["records"][0]["arch"], "amd64");
    assert_eq!(v["records"][0]["created"], true);
    let id = v["records"][0]["record_id"].as_i64().expect("id");
    // Uploading again is idempotent: the same record.
    let o = cli(
        &f.url,
        &["upload", changes.to_str().expect("utf-8"), "--json"],
    );
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(again["records"][0]["record_id"], id);
    assert_eq!(again["records"][0]["created"], false);

    // lookup by the .deb's digest names the developer upload and the file.
    let d = Sha256Digest::of(deb).to_hex();
    let o = cli(&f.url, &["lookup", &d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["stored"], true);
    let recs = v["records"].as_array().expect("records");
    assert_eq!(recs.len(), 1, "{v}");
    assert_eq!(recs[0]["kind"], "developer-upload");
    assert!(recs[0]["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .any(|b| b["name"] == "hello_2.10-3_amd64.deb" && b["role"] == "deb"));
    let o = cli(
        &f.url,
        &["lookup", "--builder", &dev.fingerprint(), "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v.as_array().expect("list").len(), 1, "{v}");
    // The key history shows the developer key the policy trusts.
    let o = cli(&f.url, &["keys", "history", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        v[0]["trusted"]["developers"][0],
        dev.fingerprint().as_str(),
        "{v}"
    );
    // And the upload is in the log: an inclusion proof for its record verifies.
    let o = cli(&f.url, &["proof", "inclusion", &id.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Unknown key: refused by the coordinator (403), nothing archived.
    let stranger = SigningKey::generate("Mallory <m@lockstep.invalid>").expect("keygen");
    let changes = write_upload(
        &work.path().join("stranger"),
        &stranger,
        "hello",
        "2.10-4",
        &[("hello_2.10-4_amd64.deb", b"mallory deb")],
    );
    let o = cli(&f.url, &["upload", changes.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not a known developer"), "{}", text(&o));
    assert!(text(&o).contains("403"), "{}", text(&o));

    // A file changed after signing: the CLI refuses before uploading anything.
    let dir = work.path().join("tampered");
    let changes = write_upload(
        &dir,
        &dev,
        "hello",
        "2.10-5",
        &[("hello_2.10-5_amd64.deb", b"honest deb")],
    );
    std::fs::write(dir.join("hello_2.10-5_amd64.deb"), b"backdoored deb").expect("tamper");
    let o = cli(&f.url, &["upload", changes.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("does not match"), "{}", text(&o));
    // …and the coordinator refuses it too when a client skips that check (the listed bytes
    // were never stored): 422, naming the file.
    let signed = std::fs::read(&changes).expect("read");
    let sha = f.put_blob(&signed).await;
    let (s, v) = f
        .post_json(
            "/api/v1/uploads",
            &serde_json::json!({ "changes_sha256": sha }),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("hello_2.10-5_amd64.deb"),
        "{v}"
    );
    let (_, v) = f
        .get_json(&format!("/api/v1/lookup/signer/{}", dev.fingerprint()))
        .await;
    assert_eq!(
        v.as_array().expect("list").len(),
        1,
        "refused uploads leave no record: {v}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_binary_that_differs_from_the_agreed_bytes_is_flagged_or_held_by_policy() {
    for hold in [false, true] {
        let (b1, b2) = (Builder::new("b1"), Builder::new("b2"));
        let dev = SigningKey::generate("Dev <dev@lockstep.invalid>").expect("keygen");
        let extra = if hold {
            "developer_mismatch = \"hold\""
        } else {
            ""
        };
        let f = fixture(&format!("devmm-{hold}"), &[&b1, &b2], &dev, extra).await;
        let job = f.enqueue("hello", "1.0").await;
        let name = format!("hello_1.0_{}.deb", job.arch);
        let agreed: &[u8] = b"builders' bytes";
        for b in [&b1, &b2] {
            let (s, v) = f.attest(b, &job, &[(&name, agreed)]).await;
            assert_eq!(s, 201, "{v}");
        }
        assert_eq!(f.status("hello").await["state"], "ship");
        let work = tempfile::tempdir().expect("tempdir");
        let changes = write_upload(
            work.path(),
            &dev,
            "hello",
            "1.0",
            &[(&name, b"developer's other bytes")],
        );
        let o = cli(&f.url, &["upload", changes.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let st = f.status("hello").await;
        let mm = st["developer_mismatch"].as_array().expect("field");
        assert_eq!(mm.len(), 1, "{st}");
        assert!(mm[0].as_str().unwrap_or("").contains(&name), "{st}");
        let decisions = f.decisions(&job).await;
        let last = &decisions.last().expect("a decision")["decision"];
        assert_eq!(last["developer_mismatch"].as_array().map(Vec::len), Some(1));
        if hold {
            assert_eq!(st["state"], "hold", "{st}");
            assert_eq!(last["state"], "hold");
            assert!(
                st["reason"].as_str().unwrap_or("").contains("developer"),
                "{st}"
            );
        } else {
            assert_eq!(st["state"], "ship", "flagged, not held: {st}");
            assert!(
                st["reason"].as_str().unwrap_or("").contains("flagged"),
                "{st}"
            );
        }
        f.stop().await;
    }
}
