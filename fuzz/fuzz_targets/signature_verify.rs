//! OpenPGP signature verification (`Keyring::verify_detached` / `verify_clearsigned`, the gate
//! for every attestation, `.buildinfo` and developer `.changes`).
//!
//! A key is generated once per process and signs one payload detached and clearsigned. Inputs
//! are arbitrary signatures and documents, arbitrary certificates, or edits of the honest
//! signatures and documents. Never a panic; a detached signature verifies only over the honest
//! payload; a clearsigned document verifies only if its text is the honest text (up to what
//! the cleartext framework itself ignores: line endings and trailing whitespace); and the
//! plain-shape fast path (`proto/src/cleartext.rs`) and sequoia's own reader
//! (`verify_*_general`) accept the same inputs and read the same signer and text.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use lockstep_proto::signing::{Keyring, SigningKey};

const PAYLOAD: &[u8] = b"{\"schema\":\"lockstep.statement.v1\",\"job_id\":\"fuzz\"}\n\
Source: hello\nVersion: 2.10-3\nChecksums-Sha256:\n 00 1 hello_2.10-3_amd64.deb\n";

struct Honest {
    keyring: Keyring,
    detached: Vec<u8>,
    clearsigned: Vec<u8>,
}

fn honest() -> &'static Honest {
    static H: OnceLock<Honest> = OnceLock::new();
    H.get_or_init(|| {
        let key = SigningKey::generate("Fuzz <fuzz@lockstep.invalid>").expect("keygen");
        let mut keyring = Keyring::new();
        keyring.add(key.cert());
        let detached = key.sign_detached(PAYLOAD).expect("sign").into_bytes();
        let clearsigned = key.clearsign(PAYLOAD).expect("clearsign");
        keyring
            .verify_detached(PAYLOAD, &detached)
            .expect("the honest signature verifies");
        let (_, text) = keyring
            .verify_clearsigned(&clearsigned)
            .expect("the honest clearsigned document verifies");
        assert_eq!(normalise(&text), normalise(PAYLOAD));
        Honest {
            keyring,
            detached,
            clearsigned,
        }
    })
}

/// The text as the cleartext signature framework hashes it: lines without trailing spaces,
/// tabs or carriage returns, no trailing empty lines.
fn normalise(b: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = b
        .split(|&c| c == b'\n')
        .map(|l| {
            let end = l
                .iter()
                .rposition(|&c| !matches!(c, b' ' | b'\t' | b'\r'))
                .map_or(0, |i| i + 1);
            l[..end].to_vec()
        })
        .collect();
    while lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

fn edit(u: &mut Unstructured, mut b: Vec<u8>) -> ArbResult<Vec<u8>> {
    for _ in 0..u.int_in_range(1u8..=4)? {
        match u.int_in_range(0u8..=3)? {
            0 if !b.is_empty() => {
                let i = u.choose_index(b.len())?;
                b[i] ^= u.int_in_range(1u8..=255)?;
            }
            1 => {
                let i = u.int_in_range(0..=b.len())?;
                b.insert(i, u.arbitrary()?);
            }
            2 if !b.is_empty() => {
                let i = u.choose_index(b.len())?;
                b.remove(i);
            }
            _ => {
                let i = u.int_in_range(0..=b.len())?;
                b.truncate(i);
            }
        }
    }
    Ok(b)
}

fn check_detached(h: &Honest, data: &[u8], sig: &[u8]) {
    let fast = h.keyring.verify_detached(data, sig);
    let general = h.keyring.verify_detached_general(data, sig);
    match (&fast, &general) {
        (Ok(a), Ok(b)) => assert_eq!(a.key_fingerprint, b.key_fingerprint),
        (Err(_), Err(_)) => {}
        _ => panic!("the plain-shape path and sequoia disagree: {fast:?} / {general:?}"),
    }
    if fast.is_ok() {
        assert_eq!(
            data, PAYLOAD,
            "a detached signature verified over other data"
        );
    }
}

fn check_clearsigned(h: &Honest, doc: &[u8]) {
    let fast = h.keyring.verify_clearsigned(doc);
    let general = h.keyring.verify_clearsigned_general(doc);
    match (&fast, &general) {
        (Ok((a, ta)), Ok((b, tb))) => {
            assert_eq!(a.key_fingerprint, b.key_fingerprint);
            assert_eq!(ta, tb, "the plain-shape path and sequoia read different texts");
        }
        (Err(_), Err(_)) => {}
        _ => panic!("the plain-shape path and sequoia disagree: {fast:?} / {general:?}"),
    }
    if let Ok((_, text)) = fast {
        assert_eq!(
            normalise(&text),
            normalise(PAYLOAD),
            "a clearsigned document verified with other text: {:?}",
            String::from_utf8_lossy(&text)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let h = honest();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match mode % 5 {
        0 => {
            // data NUL signature
            let (d, s) = match rest.iter().position(|&c| c == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (PAYLOAD, rest),
            };
            check_detached(h, d, s);
        }
        1 => check_clearsigned(h, rest),
        2 => {
            if let Ok(sig) = edit(&mut u, h.detached.clone()) {
                let d = if u.arbitrary().unwrap_or(false) {
                    edit(&mut u, PAYLOAD.to_vec()).unwrap_or_else(|_| PAYLOAD.to_vec())
                } else {
                    PAYLOAD.to_vec()
                };
                check_detached(h, &d, &sig);
            }
        }
        3 => {
            if let Ok(doc) = edit(&mut u, h.clearsigned.clone()) {
                check_clearsigned(h, &doc);
            }
        }
        _ => {
            // Arbitrary certificates: parsing and a keyring of them must not panic.
            if let Ok(certs) = Keyring::parse_certs(rest) {
                let mut k = Keyring::new();
                for c in certs {
                    k.add(c);
                }
                let _ = k.verify_detached(PAYLOAD, &h.detached);
                let _ = k.verify_clearsigned(&h.clearsigned);
            }
        }
    }
});
