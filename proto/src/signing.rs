//! OpenPGP signing and verification (sequoia-openpgp, pure-Rust backend).
//!
//! - [`SigningKey`]: an Ed25519 certificate with a signing subkey, generated on first use and
//!   stored 0600 as an armored TSK. It makes detached signatures (statements, decisions) and
//!   cleartext signatures (`.buildinfo`), both accepted by GnuPG's `gpgv`.
//! - [`Keyring`]: public certificates allowed to sign. Verification uses sequoia's
//!   [`StandardPolicy`] (SHA-1 and other broken algorithms are refused) and reports the signing
//!   certificate's *primary* fingerprint, so a primary key and its subkeys are one identity.
//!
//! Whether a verified signer may vote is policy, decided in [`crate::policy`] and
//! [`crate::quorum`], not here.

use std::io::{Read, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use sequoia_openpgp as openpgp;

use openpgp::armor;
use openpgp::cert::prelude::*;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper, VerifierBuilder,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Message, Signer};
use openpgp::serialize::{Serialize, SerializeInto};
use openpgp::{Cert, KeyHandle};

/// Largest signed payload we verify in memory (statements, decisions, .buildinfo, .changes).
pub const MAX_SIGNED_BYTES: usize = 16 * 1024 * 1024;

/// Errors from signing and verification. Callers branch on these: an unknown key or a bad
/// signature is refused and logged, never counted.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("no certificate in the keyring matches the signature's issuer ({0})")]
    UnknownKey(String),
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    #[error("malformed OpenPGP data: {0}")]
    Malformed(String),
    #[error("the key has no usable signing key under the standard policy: {0}")]
    NoSigningKey(String),
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signed data larger than {MAX_SIGNED_BYTES} bytes")]
    TooLarge,
}

fn malformed(e: impl std::fmt::Display) -> SigningError {
    SigningError::Malformed(format!("{e:#}"))
}

/// A secret OpenPGP certificate that signs as one builder or coordinator identity.
#[derive(Clone)]
pub struct SigningKey {
    cert: Cert,
    /// The signing (sub)key, selected under the standard policy once: selecting it validates the
    /// certificate's binding signatures, which cost more than the signature itself (issue 7, P3).
    signer: CachedSigner,
}

/// A selected signing key and until when the selection holds (its expiry, if any).
#[derive(Clone)]
struct CachedSigner {
    signer: KeySigner,
    valid_until: Option<std::time::SystemTime>,
}

/// What makes the signatures. sequoia's `KeyPair` decrypts its in-memory-encrypted secret,
/// re-parses it and derives the Ed25519 public key on every signature (issue 7, P3: ~80 % of
/// a signature's cost); an Ed25519 key is therefore expanded once into an
/// `ed25519_dalek::SigningKey` (zeroized on drop), and any other algorithm signs through sequoia.
#[derive(Clone)]
enum KeySigner {
    Ed25519(Ed25519Signer),
    Other(openpgp::crypto::KeyPair),
}

impl KeySigner {
    fn new(keypair: openpgp::crypto::KeyPair) -> Result<Self, SigningError> {
        Ok(match Ed25519Signer::from_keypair(&keypair)? {
            Some(signer) => KeySigner::Ed25519(signer),
            None => KeySigner::Other(keypair),
        })
    }

    fn boxed(&self) -> Box<dyn openpgp::crypto::Signer + Send + Sync> {
        match self {
            KeySigner::Ed25519(s) => Box::new(s.clone()),
            KeySigner::Other(k) => Box::new(k.clone()),
        }
    }
}

/// An OpenPGP (v4, legacy EdDSA) signer over an expanded Ed25519 key.
#[derive(Clone)]
struct Ed25519Signer {
    public: openpgp::packet::Key<
        openpgp::packet::key::PublicParts,
        openpgp::packet::key::UnspecifiedRole,
    >,
    key: ed25519_dalek::SigningKey,
}

impl Ed25519Signer {
    /// `None` if the key is not an Ed25519 key.
    fn from_keypair(kp: &openpgp::crypto::KeyPair) -> Result<Option<Self>, SigningError> {
        use openpgp::crypto::mpi;
        use openpgp::types::{Curve, PublicKeyAlgorithm};
        let public = kp.public();
        let q = match (public.pk_algo(), public.mpis()) {
            (PublicKeyAlgorithm::EdDSA, mpi::PublicKey::EdDSA { curve, q })
                if *curve == Curve::Ed25519 =>
            {
                q
            }
            _ => return Ok(None),
        };
        let (point, _) = q.decode_point(&Curve::Ed25519).map_err(malformed)?;
        let key = kp.secret().map(|secret| match secret {
            mpi::SecretKeyMaterial::EdDSA { scalar } => {
                let bytes = scalar.value_padded(32);
                <[u8; 32]>::try_from(&bytes[..])
                    .ok()
                    .map(|b| ed25519_dalek::SigningKey::from_bytes(&b))
            }
            _ => None,
        });
        let Some(key) = key else {
            return Err(SigningError::Malformed(
                "Ed25519 key without a 32-byte secret scalar".into(),
            ));
        };
        // The secret must belong to the public key the signatures will name.
        if key.verifying_key().as_bytes()[..] != point[..] {
            return Err(SigningError::Malformed(
                "the Ed25519 secret does not match its public key".into(),
            ));
        }
        Ok(Some(Ed25519Signer {
            public: public.clone(),
            key,
        }))
    }
}

impl openpgp::crypto::Signer for Ed25519Signer {
    fn public(
        &self,
    ) -> &openpgp::packet::Key<
        openpgp::packet::key::PublicParts,
        openpgp::packet::key::UnspecifiedRole,
    > {
        &self.public
    }

    fn sign(
        &mut self,
        _hash_algo: openpgp::types::HashAlgorithm,
        digest: &[u8],
    ) -> openpgp::Result<openpgp::crypto::mpi::Signature> {
        use ed25519_dalek::Signer as _;
        // Legacy EdDSA signs the digest itself; r and s are the signature's two halves.
        let sig = self.key.sign(digest).to_bytes();
        Ok(openpgp::crypto::mpi::Signature::EdDSA {
            r: openpgp::crypto::mpi::MPI::new(&sig[..32]),
            s: openpgp::crypto::mpi::MPI::new(&sig[32..]),
        })
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.fingerprint())
    }
}

impl SigningKey {
    /// Generates an Ed25519 certificate with a signing subkey (v4, accepted by bookworm's gpgv).
    pub fn generate(user_id: &str) -> Result<Self, SigningError> {
        let (cert, _revocation) = CertBuilder::new()
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_profile(openpgp::Profile::RFC4880)
            .map_err(malformed)?
            .add_userid(user_id)
            .add_signing_subkey()
            .generate()
            .map_err(malformed)?;
        Self::from_cert(cert)
    }

    fn from_cert(cert: Cert) -> Result<Self, SigningError> {
        let signer = select_signer(&cert)?;
        Ok(Self { cert, signer })
    }

    /// Reads an armored or binary TSK.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SigningError> {
        let cert = Cert::from_bytes(bytes).map_err(malformed)?;
        if !cert.is_tsk() {
            return Err(SigningError::NoSigningKey(
                "the file holds a public certificate, not a secret key".into(),
            ));
        }
        Self::from_cert(cert)
    }

    /// Loads the key at `path`, or generates one and writes it with mode 0600 (created exclusively,
    /// so two processes starting at once cannot overwrite each other's key).
    pub fn load_or_generate(path: &Path, user_id: &str) -> Result<(Self, bool), SigningError> {
        let key_err = |source| SigningError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => return Ok((Self::from_bytes(&bytes)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_err(e)),
        }
        let key = Self::generate(user_id)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(key_err)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(key_err)?;
        f.write_all(&key.secret_armored()?).map_err(key_err)?;
        f.sync_all().map_err(key_err)?;
        Ok((key, true))
    }

    /// Primary fingerprint, upper-case hex: the identity.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// The public certificate.
    pub fn cert(&self) -> Cert {
        self.cert.clone().strip_secret_key_material()
    }

    /// Armored public certificate.
    pub fn public_armored(&self) -> Result<Vec<u8>, SigningError> {
        self.cert().armored().to_vec().map_err(malformed)
    }

    /// Binary public certificate (a keyring file `gpgv --keyring` accepts).
    pub fn public_binary(&self) -> Result<Vec<u8>, SigningError> {
        self.cert().to_vec().map_err(malformed)
    }

    fn secret_armored(&self) -> Result<Vec<u8>, SigningError> {
        self.cert.as_tsk().armored().to_vec().map_err(malformed)
    }

    /// The signing key pair; selected again (and refused if none is left) once the cached
    /// selection's key has expired.
    fn keypair(&self) -> Result<Box<dyn openpgp::crypto::Signer + Send + Sync>, SigningError> {
        match self.signer.valid_until {
            Some(until) if std::time::SystemTime::now() >= until => {
                Ok(select_signer(&self.cert)?.signer.boxed())
            }
            _ => Ok(self.signer.signer.boxed()),
        }
    }

    /// ASCII-armored detached signature over `data`.
    pub fn sign_detached(&self, data: &[u8]) -> Result<String, SigningError> {
        let mut sink = Vec::new();
        {
            let message = Message::new(&mut sink);
            let message = Armorer::new(message)
                .kind(armor::Kind::Signature)
                .build()
                .map_err(malformed)?;
            let mut signer = Signer::new(message, self.keypair()?)
                .map_err(malformed)?
                .detached()
                .build()
                .map_err(malformed)?;
            signer.write_all(data).map_err(malformed)?;
            signer.finalize().map_err(malformed)?;
        }
        String::from_utf8(sink).map_err(malformed)
    }

    /// Cleartext-signed document (`-----BEGIN PGP SIGNED MESSAGE-----`), as debsign makes.
    pub fn clearsign(&self, data: &[u8]) -> Result<Vec<u8>, SigningError> {
        let mut sink = Vec::new();
        {
            let message = Message::new(&mut sink);
            let mut signer = Signer::new(message, self.keypair()?)
                .map_err(malformed)?
                .cleartext()
                .build()
                .map_err(malformed)?;
            signer.write_all(data).map_err(malformed)?;
            signer.finalize().map_err(malformed)?;
        }
        Ok(sink)
    }
}

/// The certificate's signing-capable secret key that is valid now under the standard policy.
fn select_signer(cert: &Cert) -> Result<CachedSigner, SigningError> {
    let policy = StandardPolicy::new();
    let ka = cert
        .keys()
        .unencrypted_secret()
        .with_policy(&policy, None)
        .supported()
        .alive()
        .revoked(false)
        .for_signing()
        .next()
        .ok_or_else(|| SigningError::NoSigningKey(cert.fingerprint().to_hex()))?;
    // The subkey's binding and the primary key's own validity both bound the selection.
    let valid_until = [
        ka.key_expiration_time(),
        ka.valid_cert().primary_key().key_expiration_time(),
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(CachedSigner {
        signer: KeySigner::new(ka.key().clone().into_keypair().map_err(malformed)?)?,
        valid_until,
    })
}

/// A good signature: who made it and when (by the signature's own clock, which a stolen key can
/// backdate: trust decisions after revocation use the log's time instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Primary fingerprint of the signer's certificate: the identity.
    pub fingerprint: String,
    /// Fingerprint of the (sub)key that made the signature.
    pub key_fingerprint: String,
    pub signed_at: Option<DateTime<Utc>>,
}

/// Public certificates whose signatures can be checked.
#[derive(Clone, Default)]
pub struct Keyring {
    certs: Vec<Cert>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.certs.iter().map(|c| c.fingerprint().to_hex()))
            .finish()
    }
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one or more certificates (armored or binary). Secret material is dropped.
    pub fn parse_certs(bytes: &[u8]) -> Result<Vec<Cert>, SigningError> {
        use openpgp::cert::CertParser;
        let mut out = Vec::new();
        for cert in CertParser::from_bytes(bytes).map_err(malformed)? {
            out.push(cert.map_err(malformed)?.strip_secret_key_material());
        }
        if out.is_empty() {
            return Err(SigningError::Malformed(
                "no OpenPGP certificate found".into(),
            ));
        }
        Ok(out)
    }

    /// Adds a certificate, merging it with one of the same fingerprint.
    pub fn add(&mut self, cert: Cert) {
        let cert = cert.strip_secret_key_material();
        if let Some(existing) = self
            .certs
            .iter_mut()
            .find(|c| c.fingerprint() == cert.fingerprint())
        {
            if let Ok(merged) = existing.clone().merge_public(cert) {
                *existing = merged;
                warm(existing);
            }
        } else {
            warm(&cert);
            self.certs.push(cert);
        }
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }

    pub fn get(&self, fingerprint: &str) -> Option<&Cert> {
        self.certs
            .iter()
            .find(|c| c.fingerprint().to_hex().eq_ignore_ascii_case(fingerprint))
    }

    /// Verifies a detached signature over `data`.
    ///
    /// An armored signature in the plain shape is decoded here and sequoia gets the binary
    /// packets, which spares its armor reader ([`crate::cleartext`]); any other input goes to
    /// sequoia as it came.
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> Result<Verified, SigningError> {
        match crate::cleartext::dearmor_signature(signature) {
            Some(packets) => self.verify_detached_general(data, &packets),
            None => self.verify_detached_general(data, signature),
        }
    }

    /// [`Keyring::verify_detached`] through sequoia alone, armor and all. Public for the
    /// differential tests and the fuzz target, which check that both agree.
    #[doc(hidden)]
    pub fn verify_detached_general(
        &self,
        data: &[u8],
        signature: &[u8],
    ) -> Result<Verified, SigningError> {
        let policy = StandardPolicy::new();
        let helper = Helper::new(&self.certs);
        let mut v = DetachedVerifierBuilder::from_bytes(signature)
            .map_err(malformed)?
            .with_policy(&policy, None, helper)
            .map_err(|e| classify(&self.certs, e))?;
        v.verify_bytes(data).map_err(|e| classify(&self.certs, e))?;
        v.into_helper().into_result()
    }

    /// Verifies a cleartext-signed document and returns the signer and the signed text.
    ///
    /// A document in the plain shape (as GnuPG, debsign and [`SigningKey::clearsign`] write it)
    /// is taken apart here and its text verified against its binary signature packets as a
    /// detached signature: the same signature check over the same text, in about 40 % of the
    /// instructions of sequoia's cleartext reader ([`crate::cleartext`]). Any other document goes
    /// to sequoia whole.
    pub fn verify_clearsigned(&self, doc: &[u8]) -> Result<(Verified, Vec<u8>), SigningError> {
        if doc.len() > MAX_SIGNED_BYTES {
            return Err(SigningError::TooLarge);
        }
        match crate::cleartext::split_clearsigned(doc) {
            Some(parts) => {
                let verified = self.verify_detached_general(&parts.text, &parts.signature)?;
                Ok((verified, parts.text))
            }
            None => self.verify_clearsigned_general(doc),
        }
    }

    /// [`Keyring::verify_clearsigned`] through sequoia's cleartext reader alone. Public for the
    /// differential tests and the fuzz target, which check that both agree.
    #[doc(hidden)]
    pub fn verify_clearsigned_general(
        &self,
        doc: &[u8],
    ) -> Result<(Verified, Vec<u8>), SigningError> {
        if doc.len() > MAX_SIGNED_BYTES {
            return Err(SigningError::TooLarge);
        }
        let policy = StandardPolicy::new();
        let helper = Helper::new(&self.certs);
        let mut v = VerifierBuilder::from_bytes(doc)
            .map_err(malformed)?
            .with_policy(&policy, None, helper)
            .map_err(|e| classify(&self.certs, e))?;
        let mut content = Vec::new();
        v.read_to_end(&mut content)
            .map_err(|e| classify(&self.certs, e.into()))?;
        if !v.message_processed() {
            return Err(SigningError::Malformed(
                "signed message was not fully processed".into(),
            ));
        }
        let verified = v.into_helper().into_result()?;
        Ok((verified, content))
    }
}

/// Whether `doc` (a clearsigned document or an armored signature) is in the plain shape that
/// [`Keyring`] takes apart itself instead of handing it to sequoia's readers. For tests that
/// check the fast path is the one real documents take.
#[doc(hidden)]
pub fn plain_shape(doc: &[u8]) -> bool {
    crate::cleartext::split_clearsigned(doc).is_some()
        || crate::cleartext::dearmor_signature(doc).is_some()
}

/// Verifies a certificate's self-signatures once, now: sequoia remembers the outcome in the
/// certificate, and every verification works on a clone of it, which keeps that state. Without
/// this each clone checked the binding signatures again (issue 7, P3: ~10 % of an attestation's
/// CPU). Revocations and expiry are still judged per verification, at the signature's time.
fn warm(cert: &Cert) {
    for key in cert.keys() {
        let _ = key.self_signatures().count();
        let _ = key.self_revocations().count();
    }
    for uid in cert.userids() {
        let _ = uid.self_signatures().count();
        let _ = uid.self_revocations().count();
    }
}

/// Turns sequoia's error into ours, telling an unknown issuer from a bad signature.
fn classify(_certs: &[Cert], e: anyhow::Error) -> SigningError {
    let text = format!("{e:#}");
    if let Some(SigningError::UnknownKey(k)) = e.downcast_ref::<SigningError>() {
        return SigningError::UnknownKey(k.clone());
    }
    if let Some(se) = e.downcast_ref::<SigningError>() {
        return SigningError::BadSignature(se.to_string());
    }
    if let Some(openpgp::Error::MalformedPacket(_)) | Some(openpgp::Error::MalformedMessage(_)) =
        e.downcast_ref::<openpgp::Error>()
    {
        return SigningError::Malformed(text);
    }
    SigningError::BadSignature(text)
}

/// Collects good signatures from the keyring's certificates.
struct Helper<'a> {
    certs: &'a [Cert],
    good: Vec<Verified>,
    issuers: Vec<String>,
    errors: Vec<String>,
}

impl<'a> Helper<'a> {
    fn new(certs: &'a [Cert]) -> Self {
        Self {
            certs,
            good: Vec::new(),
            issuers: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn into_result(self) -> Result<Verified, SigningError> {
        let mut good = self.good;
        good.dedup_by(|a, b| a.fingerprint == b.fingerprint);
        match good.len() {
            1 => Ok(good.remove(0)),
            0 if !self.errors.is_empty() => Err(SigningError::BadSignature(self.errors.join("; "))),
            0 => Err(SigningError::UnknownKey(self.issuers.join(", "))),
            _ => Err(SigningError::BadSignature(
                "more than one identity signed; exactly one is expected".into(),
            )),
        }
    }
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        self.issuers = ids.iter().map(|h| h.to_hex()).collect();
        Ok(self
            .certs
            .iter()
            .filter(|c| {
                c.keys()
                    .any(|k| ids.iter().any(|id| id.aliases(k.key().key_handle())))
            })
            .cloned()
            .collect())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure.into_iter() {
            match layer {
                MessageLayer::SignatureGroup { results } => {
                    for r in results {
                        match r {
                            Ok(good) => self.good.push(Verified {
                                fingerprint: good.ka.cert().fingerprint().to_hex(),
                                key_fingerprint: good.ka.key().fingerprint().to_hex(),
                                signed_at: good.sig.signature_creation_time().map(DateTime::from),
                            }),
                            Err(openpgp::parse::stream::VerificationError::MissingKey {
                                ..
                            }) => {}
                            Err(e) => self.errors.push(e.to_string()),
                        }
                    }
                }
                MessageLayer::Compression { .. } => {}
                MessageLayer::Encryption { .. } => {
                    return Err(SigningError::Malformed("encrypted message".into()).into())
                }
            }
        }
        if self.good.is_empty() {
            if self.errors.is_empty() {
                return Err(SigningError::UnknownKey(self.issuers.join(", ")).into());
            }
            return Err(SigningError::BadSignature(self.errors.join("; ")).into());
        }
        Ok(())
    }
}

/// Expiry and revocation of a certificate, as [`crate::policy`] judges votes against them.
///
/// Verification itself runs at the current time, so sequoia refuses signatures from keys that are
/// revoked or expired *now* only as of the signature's own creation time, which the signer chooses.
/// The coordinator therefore also compares the archive's record time against what this returns.
pub fn key_validity(cert: &Cert) -> crate::policy::KeyValidity {
    use openpgp::types::{RevocationStatus, RevocationType};
    let policy = StandardPolicy::new();
    let expires_at = cert
        .with_policy(&policy, None)
        .ok()
        .and_then(|vc| vc.primary_key().key_expiration_time())
        .map(DateTime::<Utc>::from);
    let sigs = match cert.revocation_status(&policy, None) {
        RevocationStatus::Revoked(sigs) => sigs,
        _ => Vec::new(),
    };
    let revoked = sigs
        .iter()
        .map(|sig| {
            let (hard, reason) = match sig.reason_for_revocation() {
                Some((code, text)) => (
                    code.revocation_type() == RevocationType::Hard,
                    format!("{code}: {}", String::from_utf8_lossy(text)),
                ),
                None => (true, "no reason given".to_string()),
            };
            crate::policy::Revocation {
                at: sig
                    .signature_creation_time()
                    .map(DateTime::<Utc>::from)
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
                hard,
                reason,
            }
        })
        // A hard revocation wins over a soft one; among equals the earliest counts.
        .min_by_key(|r| (!r.hard, r.at));
    crate::policy::KeyValidity {
        expires_at,
        revoked,
    }
}

/// Writes a certificate in binary form to `path` (for `gpgv --keyring`).
pub fn write_binary_keyring(certs: &[Cert], path: &Path) -> Result<(), SigningError> {
    let mut out = Vec::new();
    for c in certs {
        c.serialize(&mut out).map_err(malformed)?;
    }
    std::fs::write(path, out).map_err(|source| SigningError::KeyFile {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring_of(keys: &[&SigningKey]) -> Keyring {
        let mut k = Keyring::new();
        for key in keys {
            k.add(key.cert());
        }
        k
    }

    #[test]
    fn detached_signature_round_trip_and_tamper() {
        let key = SigningKey::generate("test <t@example.invalid>").expect("keygen");
        let ring = keyring_of(&[&key]);
        let sig = key.sign_detached(b"statement").expect("sign");
        let v = ring
            .verify_detached(b"statement", sig.as_bytes())
            .expect("verifies");
        assert_eq!(v.fingerprint, key.fingerprint());
        assert_ne!(
            v.key_fingerprint, v.fingerprint,
            "signed by the subkey, counted as the primary"
        );
        assert!(ring.verify_detached(b"statemenT", sig.as_bytes()).is_err());
    }

    #[test]
    fn ed25519_keys_sign_through_the_expanded_key_and_reload_the_same() {
        let key = SigningKey::generate("a").expect("keygen");
        assert!(matches!(key.signer.signer, KeySigner::Ed25519(_)));
        let reloaded = SigningKey::from_bytes(&key.secret_armored().expect("tsk")).expect("load");
        let ring = keyring_of(&[&key]);
        for k in [&key, &reloaded] {
            let sig = k.sign_detached(b"decision").expect("sign");
            let v = ring
                .verify_detached(b"decision", sig.as_bytes())
                .expect("verifies");
            assert_eq!(v.fingerprint, key.fingerprint());
        }
    }

    #[test]
    fn a_key_that_expires_while_loaded_stops_signing() {
        let now = std::time::SystemTime::now();
        let (cert, _) = CertBuilder::new()
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_creation_time(now - std::time::Duration::from_secs(58))
            .set_validity_period(std::time::Duration::from_secs(60))
            .add_userid("short-lived")
            .add_signing_subkey()
            .generate()
            .expect("keygen");
        let key = SigningKey::from_cert(cert).expect("valid for two more seconds");
        key.sign_detached(b"x").expect("signs while valid");
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert!(matches!(
            key.sign_detached(b"x"),
            Err(SigningError::NoSigningKey(_))
        ));
    }

    #[test]
    fn unknown_key_is_refused() {
        let key = SigningKey::generate("a").expect("keygen");
        let other = SigningKey::generate("b").expect("keygen");
        let ring = keyring_of(&[&other]);
        let sig = key.sign_detached(b"x").expect("sign");
        match ring.verify_detached(b"x", sig.as_bytes()) {
            Err(SigningError::UnknownKey(_)) => {}
            other => panic!("expected UnknownKey, got {other:?}"),
        }
    }

    #[test]
    fn clearsigned_round_trip() {
        let key = SigningKey::generate("a").expect("keygen");
        let ring = keyring_of(&[&key]);
        let doc = b"Format: 1.0\nSource: hello\n";
        let signed = key.clearsign(doc).expect("sign");
        assert!(signed.starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----"));
        let (v, content) = ring.verify_clearsigned(&signed).expect("verifies");
        assert_eq!(v.fingerprint, key.fingerprint());
        assert_eq!(content, doc);
        let tampered = String::from_utf8(signed)
            .expect("ascii")
            .replace("hello", "hellO");
        assert!(ring.verify_clearsigned(tampered.as_bytes()).is_err());
    }

    #[test]
    fn key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.asc");
        let (k1, created) = SigningKey::load_or_generate(&path, "a").expect("generate");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, created) = SigningKey::load_or_generate(&path, "a").expect("load");
        assert!(!created);
        assert_eq!(k1.fingerprint(), k2.fingerprint());
    }
}
