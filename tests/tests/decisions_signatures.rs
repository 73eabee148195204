//! T17 (forged and mutated signatures), T18 (replays), T19 (Sybil quorum) and decision signatures
//! checked by GnuPG's `gpgv`, against a real coordinator with fake builders.

mod decisions_support;

use decisions_support::*;
use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::types::KeyFlags;

fn flip_base64_char(armored: &str) -> String {
    // Change one character in the middle of the first base64 body line.
    let mut lines: Vec<String> = armored.lines().map(str::to_string).collect();
    let i = lines
        .iter()
        .position(|l| l.len() > 40 && !l.starts_with("-----"))
        .expect("an armor body line");
    let mut b = lines[i].clone().into_bytes();
    let j = b.len() / 2;
    b[j] = if b[j] == b'A' { b'B' } else { b'A' };
    lines[i] = String::from_utf8(b).expect("ascii");
    lines.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_mutated_and_non_signing_key_signatures_are_refused_and_never_counted() {
    let b1 = Builder::new("b1");
    let b2 = Builder::new("b2");
    // A trusted certificate (RSA, so its encryption-only subkey *can* mathematically sign) with a
    // certification-only primary, a transport-encryption-only subkey and no signing subkey.
    let (odd, _) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::RSA2k)
        .add_userid("odd <odd@lockstep.invalid>")
        .add_transport_encryption_subkey()
        .generate()
        .expect("RSA cert");
    let fx = Fixture::start("t17", &[&b1, &b2], 2).await;
    write_cert(fx.dir.path(), "odd.asc", &odd);
    std::fs::write(
        &fx.policy_path,
        policy_text(
            &[("b1", "b1.asc"), ("b2", "b2.asc"), ("odd", "odd.asc")],
            2,
            "",
        ),
    )
    .expect("policy");
    assert_eq!(fx.reload_policy().await.0, 200);

    let job = fx.enqueue("forged", "1.0").await;
    let deb: &[u8] = b"bytes of x";
    let (_, good) = fx.prepare(&b1, &job, &[("x_1.0_amd64.deb", deb)]).await;

    // Unknown key.
    let stranger = Builder::new("stranger");
    let (s, v) = fx
        .attest(&stranger, &job, &[("x_1.0_amd64.deb", deb)])
        .await;
    assert_eq!(s, 403, "unknown key: {v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("not a trusted builder"),
        "{v}"
    );

    // Bit flip in the signature.
    let mut up = good.clone();
    up.signature = flip_base64_char(&good.signature);
    let (s, v) = fx.post_attestation(&up).await;
    assert!(s == 403 || s == 400, "flipped signature: {s} {v}");

    // Bit flip in the payload (still canonical JSON).
    let up = restate(&good, |st| st.image.digest = "sha256:tesT".into());
    let (s, v) = fx.post_attestation(&up).await;
    assert_eq!(s, 403, "mutated payload: {v}");

    // Truncations.
    let mut up = good.clone();
    up.signature.truncate(good.signature.len() / 2);
    let (s, v) = fx.post_attestation(&up).await;
    assert!(s == 403 || s == 400, "truncated signature: {s} {v}");
    let mut up = good.clone();
    up.statement.truncate(good.statement.len() - 10);
    let (s, v) = fx.post_attestation(&up).await;
    assert_eq!(s, 400, "truncated statement: {v}");

    // Non-canonical JSON, correctly signed.
    let st: serde_json::Value = serde_json::from_str(&good.statement).expect("json");
    let mut up = good.clone();
    up.statement = serde_json::to_string_pretty(&st).expect("json");
    up.signature = b1.key.sign_detached(up.statement.as_bytes()).expect("sign");
    let (s, v) = fx.post_attestation(&up).await;
    assert_eq!(s, 400, "non-canonical: {v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("canonical"),
        "{v}"
    );

    // Signed by the certification-only primary and by the encryption-only subkey of a trusted cert.
    let as_odd = restate(&good, |st| {
        st.builder.fingerprint = odd.fingerprint().to_hex();
        st.builder.name = "odd".into();
    });
    let p = StandardPolicy::new();
    let keys: Vec<_> = odd
        .keys()
        .unencrypted_secret()
        .map(|k| k.key().clone().role_into_unspecified())
        .collect();
    assert_eq!(keys.len(), 2);
    for key in &keys {
        let flags = odd
            .keys()
            .with_policy(&p, None)
            .find(|k| k.key().fingerprint() == key.fingerprint())
            .and_then(|k| k.key_flags())
            .unwrap_or_else(KeyFlags::empty);
        assert!(
            !flags.for_signing(),
            "the test key must not be signing-capable"
        );
        let mut up = as_odd.clone();
        up.signature = sign_raw(key, up.statement.as_bytes(), None, None);
        let (s, v) = fx.post_attestation(&up).await;
        assert_eq!(s, 403, "non-signing key {flags:?}: {v}");
    }

    // Nothing counted; the coordinator still serves; a real vote still counts.
    let row = fx.status("forged").await;
    assert_eq!(row["state"], "pending");
    assert_eq!(row["builders"].as_array().map(Vec::len), Some(0), "{row}");
    let (s, _) = fx.get_json("/api/v1/health").await;
    assert_eq!(s, 200);
    let (s, v) = fx.post_attestation(&good).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        fx.status("forged").await["builders"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_attestations_are_refused_for_other_jobs_and_counted_once() {
    let b1 = Builder::new("b1");
    let b2 = Builder::new("b2");
    let fx = Fixture::start("t18", &[&b1, &b2], 2).await;
    let a = fx.enqueue("replay", "1.0").await;
    let other_version = fx.enqueue("replay", "2.0").await;
    let other_package = fx.enqueue("another", "1.0").await;
    let other_job = fx.enqueue_opts("replay", "1.0", true).await;
    assert_ne!(other_job.job_id, a.job_id);
    let deb: &[u8] = b"deb";
    let (_, up) = fx.prepare(&b1, &a, &[("replay_1.0_amd64.deb", deb)]).await;

    let (s, v) = fx.post_attestation(&up).await;
    assert_eq!((s, v["created"].as_bool()), (201, Some(true)), "{v}");
    let (s, v) = fx.post_attestation(&up).await;
    assert_eq!(
        (s, v["created"].as_bool()),
        (200, Some(false)),
        "same twice: {v}"
    );

    // Pointing the signed statement at another job breaks the signature.
    for target in [&other_version, &other_package, &other_job] {
        let moved = restate(&up, |st| {
            st.job_id = target.job_id.clone();
            st.source = target.source.clone();
            st.version = target.version.clone();
            st.dsc_sha256 = target.dsc.sha256;
            st.source_files = target.files.clone();
        });
        let (s, v) = fx.post_attestation(&moved).await;
        assert_eq!(s, 403, "replay into {}: {v}", target.job_id);
    }
    // A freshly signed statement naming another job but the first job's source is refused too.
    let re = restate(&up, |st| st.job_id = other_version.job_id.clone());
    let mut re = re;
    re.signature = b1.key.sign_detached(re.statement.as_bytes()).expect("sign");
    let (s, v) = fx.post_attestation(&re).await;
    assert_eq!(s, 422, "statement for another job's source: {v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not match job"),
        "{v}"
    );

    for src in ["another"] {
        let row = fx.status(src).await;
        assert_eq!(row["builders"].as_array().map(Vec::len), Some(0), "{row}");
    }
    let (_, rows) = fx.get_json("/api/v1/status?source=replay").await;
    for row in rows.as_array().expect("rows") {
        let n = row["builders"].as_array().map_or(0, Vec::len);
        if row["version"] == "1.0" {
            assert_eq!(n, 1, "counted once: {row}");
            assert_eq!(row["state"], "pending");
        } else {
            assert_eq!(n, 0, "{row}");
        }
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_twice_and_a_primary_with_its_subkey_are_one_identity() {
    // One cert whose primary key can sign too, plus a signing subkey.
    let (cert, _) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_primary_key_flags(KeyFlags::empty().set_certification().set_signing())
        .add_userid("sybil <s@lockstep.invalid>")
        .add_signing_subkey()
        .generate()
        .expect("cert");
    let sybil = Builder {
        name: "sybil".into(),
        key: signing_key_of(&cert),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    write_cert(dir.path(), "sybil.asc", &cert);
    write_cert(dir.path(), "sybil-copy.asc", &cert);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_text(
            &[("sybil", "sybil.asc"), ("sybil-again", "sybil-copy.asc")],
            2,
            "",
        ),
    )
    .expect("policy");
    let fx = Fixture::start_with_policy("t19", dir, policy).await;
    let (_, health) = fx.get_json("/api/v1/health").await;
    assert_eq!(
        health["builders"].as_array().map(Vec::len),
        Some(1),
        "{health}"
    );

    let j1 = fx.enqueue("sybil", "1.0").await;
    let j2 = fx.enqueue_opts("sybil", "1.0", true).await;
    let deb: &[u8] = b"sybil deb";
    // Job 1: signed by the subkey (SigningKey picks the signing subkey).
    let (s, v) = fx
        .attest(&sybil, &j1, &[("sybil_1.0_amd64.deb", deb)])
        .await;
    assert_eq!(s, 201, "{v}");
    // Job 2: the same bytes, signed by the primary key.
    let (_, up) = fx
        .prepare(&sybil, &j2, &[("sybil_1.0_amd64.deb", deb)])
        .await;
    let primary = cert
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .expect("secret")
        .role_into_unspecified();
    let mut up2 = up.clone();
    up2.signature = sign_raw(&primary, up2.statement.as_bytes(), None, None);
    let (s, v) = fx.post_attestation(&up2).await;
    assert_eq!(s, 201, "primary-key vote is stored as evidence: {v}");
    let row = fx.status("sybil").await;
    assert_eq!(
        row["state"], "pending",
        "one identity cannot reach 2: {row}"
    );
    assert_eq!(row["builders"].as_array().map(Vec::len), Some(1), "{row}");
    assert!(fx
        .decisions(&j1)
        .await
        .iter()
        .all(|d| d["decision"]["state"] != "ship"));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_decision_signature_verifies_with_gpgv_and_tampering_fails() {
    let b1 = Builder::new("b1");
    let b2 = Builder::new("b2");
    let fx = Fixture::start("gpgv", &[&b1, &b2], 2).await;
    let job = fx.enqueue("signed", "1.0").await;
    let deb: &[u8] = b"agreed bytes";
    assert_eq!(
        fx.attest(&b1, &job, &[("signed_1.0_amd64.deb", deb)])
            .await
            .0,
        201
    );
    let (s, v) = fx.attest(&b2, &job, &[("signed_1.0_amd64.deb", deb)]).await;
    assert_eq!((s, v["state"].as_str()), (201, Some("ship")), "{v}");
    let decisions = fx.decisions(&job).await;
    let last = decisions.last().expect("a decision");
    assert_eq!(last["decision"]["state"], "ship");

    let key = fx
        .http
        .get(format!("{}/api/v1/keys/coordinator?format=binary", fx.url))
        .send()
        .await
        .expect("GET key")
        .bytes()
        .await
        .expect("key bytes");
    let work = tempfile::tempdir().expect("tempdir");
    let ring = work.path().join("coordinator.gpg");
    std::fs::write(&ring, &key).expect("keyring");
    let data = work.path().join("decision.json");
    let sig = work.path().join("decision.json.asc");
    std::fs::write(&data, last["canonical"].as_str().expect("canonical")).expect("data");
    std::fs::write(&sig, last["signature"].as_str().expect("signature")).expect("sig");
    let gpgv = |data: &std::path::Path| {
        std::process::Command::new("gpgv")
            .env("GNUPGHOME", work.path())
            .arg("--keyring")
            .arg(&ring)
            .arg(&sig)
            .arg(data)
            .output()
            .expect("gpgv runs (apt-get install gpgv)")
    };
    let out = gpgv(&data);
    assert!(
        out.status.success(),
        "gpgv refused a good decision: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tampered = work.path().join("tampered.json");
    std::fs::write(
        &tampered,
        last["canonical"]
            .as_str()
            .expect("canonical")
            .replace("\"ship\"", "\"hold\""),
    )
    .expect("tampered");
    assert!(
        !gpgv(&tampered).status.success(),
        "gpgv accepted a tampered decision"
    );
    fx.stop().await;
}
