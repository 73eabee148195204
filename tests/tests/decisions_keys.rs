//! T20: revoked, expired and SHA-1 keys. A revocation merged into a builder's certificate and
//! loaded with a policy reload discounts its votes and re-evaluates the decision it contributed
//! to; an expired key's votes are refused by the log's clock even when the signature is backdated;
//! a SHA-1 signature never counts.

mod decisions_support;

use std::time::{Duration, SystemTime};

use decisions_support::*;
use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::types::HashAlgorithm;

fn cert(name: &str) -> (openpgp::Cert, openpgp::packet::Signature) {
    CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .add_userid(format!("{name} <{name}@lockstep.invalid>"))
        .add_signing_subkey()
        .generate()
        .expect("cert")
}

fn signing_subkey(
    cert: &openpgp::Cert,
) -> openpgp::packet::Key<openpgp::packet::key::SecretParts, openpgp::packet::key::UnspecifiedRole>
{
    cert.keys()
        .subkeys()
        .unencrypted_secret()
        .next()
        .expect("a signing subkey")
        .key()
        .clone()
        .role_into_unspecified()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_after_it_voted_turns_ship_into_hold_naming_the_key() {
    let (c1, revocation) = cert("b1");
    let b1 = Builder {
        name: "b1".into(),
        key: signing_key_of(&c1),
    };
    let b2 = Builder::new("b2");
    let dir = tempfile::tempdir().expect("tempdir");
    write_cert(dir.path(), "b1.asc", &c1);
    std::fs::write(
        dir.path().join("keys/b2.asc"),
        b2.key.public_armored().expect("armor"),
    )
    .expect("key");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_text(&[("b1", "b1.asc"), ("b2", "b2.asc")], 2, ""),
    )
    .expect("policy");
    let fx = Fixture::start_with_policy("t20rev", dir, policy).await;
    let job = fx.enqueue("revoked", "1.0").await;
    let deb: &[u8] = b"deb";
    assert_eq!(
        fx.attest(&b1, &job, &[("revoked_1.0_amd64.deb", deb)])
            .await
            .0,
        201
    );
    assert_eq!(
        fx.attest(&b2, &job, &[("revoked_1.0_amd64.deb", deb)])
            .await
            .0,
        201
    );
    assert_eq!(fx.status("revoked").await["state"], "ship");

    // The operator merges the revocation certificate into b1's key file and reloads.
    let (revoked, _) = c1
        .clone()
        .insert_packets(revocation)
        .expect("merge revocation");
    write_cert(fx.dir.path(), "b1.asc", &revoked);
    let (s, v) = fx.reload_policy().await;
    assert_eq!(s, 200, "{v}");

    let row = fx.status("revoked").await;
    assert_eq!(row["state"], "hold", "{row}");
    let decisions = fx.decisions(&job).await;
    let last = &decisions.last().expect("decisions")["decision"];
    assert_eq!(last["state"], "hold", "{last}");
    let reason = last["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("revoked") && reason.contains("b1"),
        "reason names the key: {reason}"
    );
    assert!(
        reason.contains(&c1.fingerprint().to_hex()[24..]),
        "reason names the fingerprint: {reason}"
    );
    assert!(
        last["supersedes"].is_string(),
        "a new record superseding the ship: {last}"
    );
    assert_eq!(
        decisions[decisions.len() - 2]["decision"]["state"],
        "ship",
        "history kept"
    );

    // New votes from the revoked key are refused with a reason.
    let job2 = fx.enqueue("revoked", "2.0").await;
    let (s, v) = fx
        .attest(&b1, &job2, &[("revoked_2.0_amd64.deb", deb)])
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("revoked"), "{v}");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_and_a_sha1_signature_are_refused() {
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let (expired, _) = CertBuilder::new()
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_creation_time(now - 3 * day)
        .set_validity_period(day)
        .add_userid("old <old@lockstep.invalid>")
        .add_signing_subkey()
        .generate()
        .expect("cert");
    let (c3, _) = cert("b3");
    let b2 = Builder::new("b2");
    let b3 = Builder {
        name: "b3".into(),
        key: signing_key_of(&c3),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    write_cert(dir.path(), "old.asc", &expired);
    write_cert(dir.path(), "b3.asc", &c3);
    std::fs::write(
        dir.path().join("keys/b2.asc"),
        b2.key.public_armored().expect("armor"),
    )
    .expect("key");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_text(
            &[("old", "old.asc"), ("b2", "b2.asc"), ("b3", "b3.asc")],
            2,
            "",
        ),
    )
    .expect("policy");
    let fx = Fixture::start_with_policy("t20exp", dir, policy).await;
    let job = fx.enqueue("expiry", "1.0").await;
    let deb: &[u8] = b"deb";
    let (_, up) = fx
        .prepare(&b2, &job, &[("expiry_1.0_amd64.deb", deb)])
        .await;

    // Expired key, signature backdated into the key's validity: the log's clock decides.
    let mut old = restate(&up, |st| {
        st.builder.fingerprint = expired.fingerprint().to_hex();
        st.builder.name = "old".into();
    });
    old.signature = sign_raw(
        &signing_subkey(&expired),
        old.statement.as_bytes(),
        None,
        Some(now - 2 * day - Duration::from_secs(3600)),
    );
    let (s, v) = fx.post_attestation(&old).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("expired"), "{v}");

    // SHA-1 signature from a valid trusted key.
    let mut sha1 = restate(&up, |st| {
        st.builder.fingerprint = b3.fpr();
        st.builder.name = "b3".into();
    });
    sha1.signature = sign_raw(
        &signing_subkey(&c3),
        sha1.statement.as_bytes(),
        Some(HashAlgorithm::SHA1),
        None,
    );
    let (s, v) = fx.post_attestation(&sha1).await;
    assert_eq!(s, 403, "SHA-1: {v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("collision resistance"),
        "refused by the standard policy's SHA-1 rule: {v}"
    );

    // Only the one good vote (b2) counts: pending, not ship.
    let (s, v) = fx.post_attestation(&up).await;
    assert_eq!(s, 201, "{v}");
    let row = fx.status("expiry").await;
    assert_eq!(row["state"], "pending", "{row}");
    assert_eq!(row["builders"].as_array().map(Vec::len), Some(1), "{row}");
    fx.stop().await;
}
