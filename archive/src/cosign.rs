//! Witness cosignatures in the C2SP `tlog-cosignature` v1 format.
//!
//! A witness that has verified a checkpoint (its signature, and its consistency with the last
//! checkpoint the witness cosigned) adds one signed-note signature line to it:
//!
//! - key type 0x04 (Ed25519 cosignature); key ID = first 4 bytes of
//!   `SHA-256(name || "\n" || 0x04 || public key)`; verifier key `name+<hex id>+base64(0x04 || key)`;
//! - signed message = `"cosignature/v1\ntime <unix seconds>\n"` followed by the checkpoint body;
//! - signature bytes = 8-byte big-endian timestamp || 64-byte Ed25519 signature.
//!
//! `signed_note` 0.2 knows only the plain Ed25519 type (0x01), so this module implements the
//! cosignature type on top of its [`Note`], [`Signature`] and [`signed_note::Verifier`] trait.
//! Like [`crate::proof`], nothing here touches storage; every function takes public data and
//! never panics on malformed input.

use base64::prelude::*;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use signed_note::{Note, Signature, VerifierList};

use crate::proof::ProofError;

/// Signature type identifier of an Ed25519 cosignature (C2SP signed-note registry).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Length of a cosignature: timestamp (8) + Ed25519 signature (64).
const COSIG_LEN: usize = 72;

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_COSIGNATURE_V1]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The message a cosignature signs.
fn signed_message(checkpoint_body: &[u8], timestamp: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(checkpoint_body);
    m
}

/// A witness's signing key.
pub struct WitnessKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessKey")
            .field("verifier_key", &self.verifier_key())
            .finish_non_exhaustive()
    }
}

impl WitnessKey {
    /// A witness key named `name` (a signed-note key name, e.g. "witness.example/w1") from a
    /// 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<WitnessKey, ProofError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(ProofError::Malformed(format!(
                "witness name {name:?} is not a valid signed-note key name (non-empty, no spaces, \
                 no '+')"
            )));
        }
        Ok(WitnessKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key in signed-note form: `name+<hex key id>+base64(0x04 || public key)`.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key().to_bytes();
        let mut enc = vec![ALG_COSIGNATURE_V1];
        enc.extend_from_slice(&public);
        format!(
            "{}+{:08x}+{}",
            self.name,
            key_id(&self.name, &public),
            BASE64_STANDARD.encode(enc)
        )
    }

    /// Cosigns a verified checkpoint note: returns the note with this witness's signature line
    /// appended (replacing an earlier cosignature by the same key).
    pub fn cosign(&self, note_text: &str, timestamp: u64) -> Result<String, ProofError> {
        let mut note = Note::from_bytes(note_text.as_bytes())
            .map_err(|e| ProofError::Malformed(format!("signed note: {e}")))?;
        let mut sig = timestamp.to_be_bytes().to_vec();
        sig.extend_from_slice(
            &self
                .key
                .sign(&signed_message(note.text(), timestamp))
                .to_bytes(),
        );
        let public = self.key.verifying_key().to_bytes();
        let line = Signature::new(self.name.clone(), key_id(&self.name, &public), sig)
            .map_err(|e| ProofError::Malformed(format!("cosignature line: {e}")))?;
        // Rebuild the note with the existing signatures plus ours.
        let text = note.text().to_vec();
        let mut sigs: Vec<Signature> = signature_lines(note_text)?
            .into_iter()
            .filter(|s| !(s.name() == line.name() && s.id() == line.id()))
            .collect();
        sigs.push(line);
        note = Note::new(&text, &sigs).map_err(|e| ProofError::Malformed(e.to_string()))?;
        String::from_utf8(note.to_bytes())
            .map_err(|_| ProofError::Malformed("note is not UTF-8".into()))
    }
}

/// The signature lines of a note, parsed.
pub fn signature_lines(note_text: &str) -> Result<Vec<Signature>, ProofError> {
    let (_, sigs) = note_text
        .rsplit_once("\n\n")
        .ok_or_else(|| ProofError::Malformed("signed note has no signature block".into()))?;
    sigs.trim_end_matches('\n')
        .split('\n')
        .map(|l| {
            Signature::from_bytes(l.as_bytes())
                .map_err(|e| ProofError::Malformed(format!("signature line {l:?}: {e}")))
        })
        .collect()
}

/// Verifies cosignatures by one witness key.
#[derive(Clone, Debug)]
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parses a cosignature verifier key `name+<hex id>+base64(0x04 || key)`.
    pub fn new(vkey: &str) -> Result<CosignatureVerifier, ProofError> {
        let bad = |why: &str| {
            ProofError::Malformed(format!(
                "witness key {vkey:?}: {why}; expected name+<8 hex digits>+<base64 of 0x04 and \
                 a 32-byte Ed25519 key>"
            ))
        };
        let (name, rest) = vkey.split_once('+').ok_or_else(|| bad("no '+'"))?;
        let (id_hex, b64) = rest.split_once('+').ok_or_else(|| bad("no key id"))?;
        if !signed_note::is_key_name_valid(name) || id_hex.len() != 8 {
            return Err(bad("bad name or key id"));
        }
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key id is not hex"))?;
        let enc = BASE64_STANDARD
            .decode(b64)
            .map_err(|_| bad("key is not base64"))?;
        if enc.len() != 33 || enc[0] != ALG_COSIGNATURE_V1 {
            return Err(bad("not an Ed25519 cosignature (type 0x04) key"));
        }
        let public: [u8; 32] = enc[1..].try_into().map_err(|_| bad("key length"))?;
        if key_id(name, &public) != id {
            return Err(bad("key id does not match the key"));
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad("not an Ed25519 point"))?;
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// The timestamp of a valid cosignature `sig` over `checkpoint_body`, if it verifies.
    fn check(&self, checkpoint_body: &[u8], sig: &[u8]) -> Option<u64> {
        if sig.len() != COSIG_LEN {
            return None;
        }
        let ts = u64::from_be_bytes(sig[..8].try_into().ok()?);
        let s = ed25519_dalek::Signature::from_slice(&sig[8..]).ok()?;
        self.key
            .verify_strict(&signed_message(checkpoint_body, ts), &s)
            .ok()
            .map(|()| ts)
    }
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.check(msg, sig).is_some()
    }
}

/// Checks that `note_text` carries a valid cosignature by `witness_key` and returns its
/// timestamp. Other signatures (the log's, other witnesses') are ignored here; check the log's
/// with [`crate::proof::verify_checkpoint`].
pub fn verify_cosignature(note_text: &str, witness_key: &str) -> Result<u64, ProofError> {
    let v = CosignatureVerifier::new(witness_key)?;
    let note = Note::from_bytes(note_text.as_bytes())
        .map_err(|e| ProofError::Malformed(format!("signed note: {e}")))?;
    note.verify(&VerifierList::new(vec![Box::new(v.clone())]))
        .map_err(|e| ProofError::BadSignature(format!("cosignature by {}: {e}", v.name)))?;
    // Note::verify accepted a signature by this key; find its timestamp.
    signature_lines(note_text)?
        .iter()
        .filter(|s| s.name() == v.name && s.id() == v.id)
        .find_map(|s| v.check(note.text(), s.signature()))
        .ok_or_else(|| ProofError::BadSignature(format!("no valid cosignature by {}", v.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: &str = "example.com/log\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— example.com/log AAAAAQE=\n";

    #[test]
    fn cosignature_round_trips_and_rejects_tampering() {
        let w = WitnessKey::from_seed("witness.test/w1", [7u8; 32]).expect("valid name");
        let cosigned = w.cosign(CP, 1_700_000_000).expect("cosign");
        assert!(cosigned.starts_with("example.com/log\n3\n"));
        assert_eq!(signature_lines(&cosigned).expect("lines").len(), 2);
        assert_eq!(
            verify_cosignature(&cosigned, &w.verifier_key()),
            Ok(1_700_000_000)
        );
        // Another witness's key does not verify it.
        let other = WitnessKey::from_seed("witness.test/w1", [8u8; 32]).expect("valid name");
        assert!(verify_cosignature(&cosigned, &other.verifier_key()).is_err());
        // A changed size in the body breaks it.
        let tampered = cosigned.replacen("\n3\n", "\n4\n", 1);
        assert!(verify_cosignature(&tampered, &w.verifier_key()).is_err());
        // Cosigning twice keeps one line per key.
        let again = w.cosign(&cosigned, 1_700_000_001).expect("cosign");
        assert_eq!(signature_lines(&again).expect("lines").len(), 2);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "name",
            "name+zz+AAAA",
            "name+00000000+AQID",
            "na me+00000000+BAAA",
        ] {
            assert!(CosignatureVerifier::new(bad).is_err(), "{bad:?}");
        }
    }
}
