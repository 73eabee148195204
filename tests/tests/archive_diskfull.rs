//! Issue 3, T10: the archive volume fills up (a 2 MiB tmpfs as the coordinator's data dir).
//! Uploads are refused cleanly with 507 and a message saying the disk is full; nothing torn
//! appears under a final blob name; once space is freed the same upload succeeds.

mod archive_support;
#[path = "decisions_support/mod.rs"]
mod decisions_support;

use std::process::Command;

use archive_support::{cli, text};
use decisions_support::Fixture;
use lockstep_proto::digest::Sha256Digest;

/// Unmounts on drop, so a failing test does not leave the mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_full_archive_volume_refuses_uploads_cleanly_and_recovers_when_space_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&data)
        .status()
        .expect("mount runs (the test suite runs as root)");
    assert!(st.success(), "mount -t tmpfs failed: run the suite as root");
    let mount = Mount(data.clone());
    // Ballast to free later.
    std::fs::write(data.join("ballast"), vec![0u8; 512 * 1024]).expect("ballast");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "default_threshold = 1\n").expect("policy");
    let mut f = Fixture::start_with_policy("t10", dir, policy).await;

    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..40u32 {
        let bytes: Vec<u8> = (0..300 * 1024u32)
            .map(|j| (j.wrapping_mul(31).wrapping_add(i * 7919) % 251) as u8)
            .collect();
        let d = Sha256Digest::of(&bytes);
        let r = f
            .http
            .put(format!("{}/api/v1/blobs/{d}", f.url))
            .body(bytes.clone())
            .send()
            .await
            .expect("PUT");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        if status == 201 {
            stored.push((d, bytes));
            continue;
        }
        assert_eq!(status, 507, "a full volume answers 507: {body}");
        assert!(body.contains("disk full"), "{body}");
        refused = Some((d, bytes));
        break;
    }
    let (d, bytes) = refused.expect("the 2 MiB volume fills up within 40 uploads of 300 KiB");
    assert!(
        !stored.is_empty(),
        "some uploads fit before the volume filled"
    );
    // The batch upload (`POST /api/v1/blobs`, what agents use) answers the same 507, and stores
    // none of its blobs, not even the small one.
    let small = b"a small blob in a batch that cannot be stored".to_vec();
    let form = reqwest::multipart::Form::new()
        .part(
            Sha256Digest::of(&small).to_hex(),
            reqwest::multipart::Part::bytes(small.clone()),
        )
        .part(d.to_hex(), reqwest::multipart::Part::bytes(bytes.clone()));
    let r = f
        .http
        .post(format!("{}/api/v1/blobs", f.url))
        .multipart(form)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 507, "a full volume answers 507 to a batch: {body}");
    assert!(
        body.contains("disk full") && body.contains("of the blob batch"),
        "{body}"
    );
    assert!(f
        .service
        .archive
        .blob_path(&Sha256Digest::of(&small))
        .is_none());
    // Nothing torn: the refused blob has no final name, no temp file is left, and every
    // acknowledged blob verifies.
    assert!(f.service.archive.blob_path(&d).is_none());
    let tmp = f.service.archive.blob_root().join("tmp");
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
    let o = cli(
        "http://127.0.0.1:1",
        &["verify", "--data-dir", data.to_str().expect("utf-8")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Free space; the same upload now succeeds.
    std::fs::remove_file(data.join("ballast")).expect("free space");
    let r = f
        .http
        .put(format!("{}/api/v1/blobs/{d}", f.url))
        .body(bytes.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        r.status().as_u16(),
        201,
        "{}",
        r.text().await.unwrap_or_default()
    );
    for (d, b) in &stored {
        let got = f
            .http
            .get(format!("{}/api/v1/blobs/{d}", f.url))
            .send()
            .await
            .expect("GET")
            .bytes()
            .await
            .expect("body");
        assert_eq!(&got[..], &b[..], "acknowledged blob {d} intact");
    }
    let kept = std::mem::replace(&mut f.dir, tempfile::tempdir().expect("tempdir"));
    f.stop().await;
    drop(mount);
    drop(kept);
}
