//! The quorum policy file (TOML): who may vote, and how many votes a package needs.
//!
//! ```toml
//! default_threshold = 2
//! [[builders]]
//! name = "buildd-1"
//! key = "keys/buildd-1.asc"          # relative to the policy file
//! [[packages]]
//! pattern = "openssl*"                # a name or a glob
//! threshold = 3
//! [[developers]]                      # whose signed .changes uploads are accepted as evidence
//! name = "alice"
//! key = "keys/alice.asc"
//! developer_mismatch = "flag"         # or "hold" (top-level key; place it before the tables)
//! require_witness = false             # top-level: hold ship until a listed witness cosigned
//! [[witnesses]]
//! name = "witness-1"
//! key = "witness.example/w1+1a2b3c4d+BASE64"   # as `lockstep witness` prints it
//! ```
//!
//! Loading is two-stage: [`RawPolicy`] is what the file says, [`Policy::resolve`] turns it into a
//! validated policy with its keyring loaded. A policy that does not resolve is refused as a whole,
//! so the caller can keep the previous one in force.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::signing::{Keyring, SigningError};

/// Default number of distinct trusted builders that must agree.
pub const DEFAULT_THRESHOLD: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path} is not valid: {message}")]
    Invalid { path: String, message: String },
    #[error("builder {name:?}: key file {path}: {source}")]
    Key {
        name: String,
        path: String,
        #[source]
        source: SigningError,
    },
}

/// The policy as written in the file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub default_threshold: Option<usize>,
    /// Accept the largest agreeing group when builders disagree. Off unless said: disagreement holds.
    #[serde(default)]
    pub majority: bool,
    /// Require a witness cosignature on the checkpoint before a ship decision.
    #[serde(default)]
    pub require_witness: bool,
    /// What a developer upload that differs from the agreed bytes does: `flag` (default) or `hold`.
    pub developer_mismatch: Option<String>,
    /// What builders agreeing on bytes that differ from the distribution's published binaries
    /// does: `flag` (default: shown in every view) or `hold`.
    pub official_mismatch: Option<String>,
    #[serde(default)]
    pub builders: Vec<RawBuilder>,
    #[serde(default)]
    pub developers: Vec<RawBuilder>,
    /// Witnesses whose checkpoint cosignatures count for `require_witness`.
    #[serde(default)]
    pub witnesses: Vec<RawWitness>,
    #[serde(default)]
    pub packages: Vec<RawPackageRule>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuilder {
    pub name: String,
    /// Path to the armored or binary public certificate, relative to the policy file.
    pub key: PathBuf,
    /// Votes recorded before this time do not count.
    pub not_before: Option<DateTime<Utc>>,
    /// Votes recorded after this time do not count.
    pub not_after: Option<DateTime<Utc>>,
}

/// A transparency-log witness: `key` is its cosignature verifier key in signed-note form
/// (`name+<8 hex digits>+<base64>`, as `lockstep witness` prints it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWitness {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPackageRule {
    pub pattern: String,
    pub threshold: usize,
}

/// A trusted builder identity.
#[derive(Clone, Debug)]
pub struct TrustedBuilder {
    pub name: String,
    pub fingerprint: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// Validity of the OpenPGP certificate itself (expiry, revocation), read from the key file.
    pub key: KeyValidity,
}

/// What the certificate says about its own validity, judged against the log's clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValidity {
    /// When the primary key expires (its self-signature's expiration), if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// A revocation certificate merged into the key file.
    pub revoked: Option<Revocation>,
}

/// An OpenPGP revocation of a builder's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Creation time of the revocation signature.
    pub at: DateTime<Utc>,
    /// Hard (compromised, or no reason given): every vote is void, whenever it was recorded.
    /// Soft (retired, superseded): votes recorded before `at` still count.
    pub hard: bool,
    /// The reason code and text the revocation gives.
    pub reason: String,
}

/// Why a builder's vote recorded at some time does not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Outside the policy's `not_before`/`not_after`.
    OutsidePolicyWindow,
    /// Recorded after the certificate expired.
    Expired(DateTime<Utc>),
    /// The certificate is revoked (hard, or soft before the vote).
    Revoked(Revocation),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::OutsidePolicyWindow => {
                f.write_str("outside its validity window in the policy")
            }
            Invalid::Expired(t) => write!(f, "key expired at {}", t.to_rfc3339()),
            Invalid::Revoked(r) => write!(
                f,
                "key revoked at {} ({}{})",
                r.at.to_rfc3339(),
                if r.hard { "hard: " } else { "soft: " },
                r.reason
            ),
        }
    }
}

impl TrustedBuilder {
    /// May a vote recorded (by the log's clock) at `at` count?
    pub fn valid_at(&self, at: DateTime<Utc>) -> bool {
        self.check_at(at).is_ok()
    }

    /// Like [`Self::valid_at`], saying why not. The time is the archive record's, never the
    /// signature's own creation time, which whoever holds the key can choose.
    pub fn check_at(&self, at: DateTime<Utc>) -> Result<(), Invalid> {
        if let Some(r) = &self.key.revoked {
            if r.hard || at >= r.at {
                return Err(Invalid::Revoked(r.clone()));
            }
        }
        if let Some(t) = self.key.expires_at {
            if at >= t {
                return Err(Invalid::Expired(t));
            }
        }
        if !(self.not_before.is_none_or(|t| at >= t) && self.not_after.is_none_or(|t| at <= t)) {
            return Err(Invalid::OutsidePolicyWindow);
        }
        Ok(())
    }
}

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub default_threshold: usize,
    pub majority: bool,
    pub require_witness: bool,
    /// Witnesses whose cosignatures count (verifier keys checked by the coordinator).
    pub witnesses: Vec<RawWitness>,
    pub developer_mismatch_holds: bool,
    /// Hold when the builders agree but the distribution's binaries differ.
    pub official_mismatch_holds: bool,
    pub builders: Vec<TrustedBuilder>,
    pub builder_keyring: Keyring,
    pub developer_keyring: Keyring,
    pub rules: Vec<(glob::Pattern, usize)>,
    /// Where it was loaded from, if from a file.
    pub path: Option<PathBuf>,
}

impl Policy {
    /// Reads and resolves a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let raw: RawPolicy = toml::from_str(&text).map_err(|e| PolicyError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut policy = Self::resolve(raw, base, &path.display().to_string())?;
        policy.path = Some(path.to_path_buf());
        Ok(policy)
    }

    /// Validates a raw policy; key paths are relative to `base`.
    pub fn resolve(raw: RawPolicy, base: &Path, origin: &str) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: origin.to_string(),
            message,
        };
        let default_threshold = raw.default_threshold.unwrap_or(DEFAULT_THRESHOLD);
        if default_threshold == 0 {
            return Err(invalid("default_threshold must be at least 1".into()));
        }
        let developer_mismatch_holds = match raw.developer_mismatch.as_deref() {
            None | Some("flag") => false,
            Some("hold") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "developer_mismatch must be \"flag\" or \"hold\", not {other:?}"
                )))
            }
        };
        let official_mismatch_holds = match raw.official_mismatch.as_deref() {
            None | Some("flag") => false,
            Some("hold") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "official_mismatch must be \"flag\" or \"hold\", not {other:?}"
                )))
            }
        };
        let mut rules = Vec::new();
        for r in &raw.packages {
            if r.threshold == 0 {
                return Err(invalid(format!(
                    "package rule {:?}: threshold must be at least 1",
                    r.pattern
                )));
            }
            let pat = glob::Pattern::new(&r.pattern)
                .map_err(|e| invalid(format!("package rule {:?}: {e}", r.pattern)))?;
            rules.push((pat, r.threshold));
        }
        let (builders, builder_keyring) = load_identities(&raw.builders, base)?;
        let (_, developer_keyring) = load_identities(&raw.developers, base)?;
        for w in &raw.witnesses {
            let parts: Vec<&str> = w.key.splitn(3, '+').collect();
            if parts.len() != 3 || parts[1].len() != 8 || parts[0].is_empty() {
                return Err(invalid(format!(
                    "witness {:?}: key {:?} is not a signed-note verifier key \
                     (name+<8 hex digits>+<base64>, as `lockstep witness` prints it)",
                    w.name, w.key
                )));
            }
        }
        if raw.require_witness && raw.witnesses.is_empty() {
            return Err(invalid(
                "require_witness = true but no [[witnesses]] are listed; add the witness keys \
                 or turn require_witness off"
                    .into(),
            ));
        }
        Ok(Policy {
            default_threshold,
            majority: raw.majority,
            require_witness: raw.require_witness,
            witnesses: raw.witnesses.clone(),
            developer_mismatch_holds,
            official_mismatch_holds,
            builders,
            builder_keyring,
            developer_keyring,
            rules,
            path: None,
        })
    }

    /// Threshold for a source package: the first matching rule, else the default.
    pub fn threshold_for(&self, source: &str) -> usize {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(source))
            .map_or(self.default_threshold, |(_, k)| *k)
    }

    /// The trusted builder with this primary fingerprint.
    pub fn builder(&self, fingerprint: &str) -> Option<&TrustedBuilder> {
        self.builders
            .iter()
            .find(|b| b.fingerprint.eq_ignore_ascii_case(fingerprint))
    }
}

fn load_identities(
    list: &[RawBuilder],
    base: &Path,
) -> Result<(Vec<TrustedBuilder>, Keyring), PolicyError> {
    let mut out: Vec<TrustedBuilder> = Vec::new();
    let mut ring = Keyring::new();
    for b in list {
        let path = base.join(&b.key);
        let key_err = |source| PolicyError::Key {
            name: b.name.clone(),
            path: path.display().to_string(),
            source,
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            key_err(SigningError::KeyFile {
                path: path.display().to_string(),
                source: e,
            })
        })?;
        for cert in Keyring::parse_certs(&bytes).map_err(key_err)? {
            let fingerprint = cert.fingerprint().to_hex();
            ring.add(cert);
            // The same key listed twice is one identity.
            if out.iter().any(|t| t.fingerprint == fingerprint) {
                continue;
            }
            out.push(TrustedBuilder {
                name: b.name.clone(),
                fingerprint,
                not_before: b.not_before,
                not_after: b.not_after,
                key: KeyValidity::default(),
            });
        }
    }
    // Validity from the merged certificates: a revocation in a second file listing the same key
    // applies too.
    for t in &mut out {
        if let Some(cert) = ring.get(&t.fingerprint) {
            t.key = crate::signing::key_validity(cert);
        }
    }
    Ok((out, ring))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;

    #[test]
    fn loads_and_picks_thresholds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate("b1").expect("keygen");
        std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
        std::fs::write(
            dir.path().join("keys/b1.asc"),
            key.public_armored().expect("armor"),
        )
        .expect("write");
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "default_threshold = 2\n[[builders]]\nname = \"b1\"\nkey = \"keys/b1.asc\"\n\
             [[builders]]\nname = \"b1-again\"\nkey = \"keys/b1.asc\"\n\
             [[packages]]\npattern = \"openssl*\"\nthreshold = 3\n",
        )
        .expect("write");
        let p = Policy::load(&path).expect("loads");
        assert_eq!(p.builders.len(), 1, "the same key twice is one identity");
        assert_eq!(p.threshold_for("hello"), 2);
        assert_eq!(p.threshold_for("openssl"), 3);
        assert!(p.builder(&key.fingerprint()).is_some());
    }

    #[test]
    fn broken_policy_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "default_threshold = 0\n").expect("write");
        let e = Policy::load(&path).expect_err("refused");
        assert!(e.to_string().contains("at least 1"), "{e}");
        std::fs::write(&path, "[[builders]]\nname = \"x\"\nkey = \"missing.asc\"\n")
            .expect("write");
        let e = Policy::load(&path).expect_err("refused");
        assert!(e.to_string().contains("missing.asc"), "{e}");
        std::fs::write(&path, "threshold = 2\n").expect("write");
        assert!(Policy::load(&path).is_err(), "unknown fields are refused");
    }
}
