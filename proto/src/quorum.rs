//! Quorum evaluation: a pure function from the evidence for one (source, version, arch) to a
//! state and its reason.
//!
//! Rules (BRIEF.md "Quorum and decisions"), failing closed:
//! - only votes from trusted identities, valid at the time the log recorded them, count;
//! - one identity is one vote, however many keys, subkeys or copies it used;
//! - votes are grouped by their set of (artifact name, SHA-256);
//! - **ship**: exactly one group, with at least `threshold` distinct identities;
//! - **hold**: more than one group (unless the policy allows a strict majority), or an identity
//!   that contradicts itself;
//! - **failed**: builders reported failures and the remaining builders cannot reach the threshold;
//! - **pending** otherwise.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::digest::Sha256Digest;
use crate::policy::Policy;
use crate::v1::{ArtifactDigest, State};

/// One verified attestation.
#[derive(Clone, Debug)]
pub struct Vote {
    /// Primary fingerprint of the signer.
    pub fingerprint: String,
    /// Digest of the canonical statement bytes.
    pub statement: Sha256Digest,
    pub artifacts: Vec<ArtifactDigest>,
    /// When the archive recorded it (the log's clock, not the signature's).
    pub recorded_at: DateTime<Utc>,
}

/// A builder's failure report.
#[derive(Clone, Debug)]
pub struct Failure {
    pub fingerprint: String,
    pub kind: String,
    pub reason: String,
}

/// The result of evaluating the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub state: State,
    pub reason: String,
    pub threshold: usize,
    /// Identities counted (for ship: the agreeing group; otherwise every trusted voter).
    pub counted: Vec<String>,
    /// Statement digests counted.
    pub attestations: Vec<Sha256Digest>,
    /// The agreed artifacts when shipping.
    pub artifacts: Vec<ArtifactDigest>,
    /// Identities outside the agreeing (or largest) group when builders disagree.
    pub dissenters: Vec<String>,
}

fn short(fpr: &str) -> &str {
    &fpr[fpr.len().saturating_sub(16)..]
}

/// Evaluates votes and failures for `source` under `policy`.
pub fn evaluate(policy: &Policy, source: &str, votes: &[Vote], failures: &[Failure]) -> Outcome {
    let threshold = policy.threshold_for(source);
    let mut ignored = Vec::new();
    // Votes discounted because their key was revoked: if that leaves too few, hold (fail closed).
    let mut revoked: Vec<String> = Vec::new();
    // One entry per identity: its distinct artifact sets and statements.
    let mut by_identity: BTreeMap<String, (Vec<Vec<ArtifactDigest>>, Vec<Sha256Digest>)> =
        BTreeMap::new();
    for v in votes {
        let Some(builder) = policy.builder(&v.fingerprint) else {
            ignored.push(format!("{} (not a trusted builder)", short(&v.fingerprint)));
            continue;
        };
        if let Err(why) = builder.check_at(v.recorded_at) {
            let note = format!("{} {} ({why})", builder.name, short(&builder.fingerprint));
            if matches!(why, crate::policy::Invalid::Revoked(_)) && !revoked.contains(&note) {
                revoked.push(note.clone());
            }
            if !ignored.contains(&note) {
                ignored.push(note);
            }
            continue;
        }
        let mut set = v.artifacts.clone();
        set.sort();
        let entry = by_identity.entry(builder.fingerprint.clone()).or_default();
        if !entry.0.contains(&set) {
            entry.0.push(set);
        }
        if !entry.1.contains(&v.statement) {
            entry.1.push(v.statement);
        }
    }

    let mut outcome = Outcome {
        state: State::Pending,
        reason: String::new(),
        threshold,
        counted: by_identity.keys().cloned().collect(),
        attestations: by_identity.values().flat_map(|(_, s)| s.clone()).collect(),
        artifacts: Vec::new(),
        dissenters: Vec::new(),
    };

    let self_contradicting: Vec<String> = by_identity
        .iter()
        .filter(|(_, (sets, _))| sets.len() > 1)
        .map(|(f, _)| f.clone())
        .collect();
    if !self_contradicting.is_empty() {
        outcome.state = State::Hold;
        outcome.dissenters = self_contradicting.clone();
        outcome.reason = format!(
            "builder(s) {} attested different artifacts for the same package",
            self_contradicting
                .iter()
                .map(|f| short(f))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return outcome;
    }

    // Group identities by artifact set.
    let mut groups: BTreeMap<Vec<ArtifactDigest>, Vec<String>> = BTreeMap::new();
    for (fpr, (sets, _)) in &by_identity {
        groups.entry(sets[0].clone()).or_default().push(fpr.clone());
    }
    let mut ordered: Vec<(Vec<ArtifactDigest>, Vec<String>)> = groups.into_iter().collect();
    ordered.sort_by_key(|g| std::cmp::Reverse(g.1.len()));

    if ordered.len() > 1 {
        let (top_set, top) = &ordered[0];
        let strict_majority = top.len() > ordered[1].1.len();
        if policy.majority && strict_majority && top.len() >= threshold {
            outcome.state = State::Ship;
            outcome.artifacts = top_set.clone();
            outcome.dissenters = ordered[1..].iter().flat_map(|(_, f)| f.clone()).collect();
            outcome.counted = top.clone();
            outcome.reason = format!(
                "{} of {} builders agree (policy allows a majority); dissent from {}",
                top.len(),
                by_identity.len(),
                outcome
                    .dissenters
                    .iter()
                    .map(|f| short(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return outcome;
        }
        outcome.state = State::Hold;
        outcome.dissenters = if strict_majority {
            ordered[1..].iter().flat_map(|(_, f)| f.clone()).collect()
        } else {
            by_identity.keys().cloned().collect()
        };
        let describe: Vec<String> = ordered
            .iter()
            .map(|(set, f)| {
                let names: Vec<String> = set
                    .iter()
                    .map(|a| format!("{}={}", a.name, &a.sha256.to_hex()[..12]))
                    .collect();
                format!(
                    "[{}] by {}",
                    names.join(" "),
                    f.iter().map(|x| short(x)).collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        outcome.reason = format!("builders disagree: {}", describe.join(" vs "));
        return outcome;
    }

    let agreeing = ordered.first().map_or(0, |(_, f)| f.len());
    if agreeing >= threshold {
        let (set, fprs) = &ordered[0];
        outcome.state = State::Ship;
        outcome.artifacts = set.clone();
        outcome.counted = fprs.clone();
        outcome.reason =
            format!("{agreeing} distinct trusted builders agree (threshold {threshold})");
        return outcome;
    }

    if !revoked.is_empty() {
        outcome.state = State::Hold;
        outcome.reason = format!(
            "{agreeing} of {threshold} agreeing attestations after discounting revoked keys: {}",
            revoked.join(", ")
        );
        return outcome;
    }

    // Can the threshold still be reached?
    let mut failed: Vec<&Failure> = failures
        .iter()
        .filter(|f| policy.builder(&f.fingerprint).is_some())
        .filter(|f| {
            !by_identity.contains_key(
                &policy
                    .builder(&f.fingerprint)
                    .map_or(String::new(), |b| b.fingerprint.clone()),
            )
        })
        .collect();
    failed.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    failed.dedup_by(|a, b| a.fingerprint.eq_ignore_ascii_case(&b.fingerprint));
    let possible = policy.builders.len().saturating_sub(failed.len());
    if !failed.is_empty() && possible < threshold {
        outcome.state = State::Failed;
        outcome.reason = format!(
            "{} of {} trusted builders failed ({}); the threshold {} can no longer be reached",
            failed.len(),
            policy.builders.len(),
            failed
                .iter()
                .map(|f| format!(
                    "{}: {} — {}",
                    policy
                        .builder(&f.fingerprint)
                        .map_or("?", |b| b.name.as_str()),
                    f.kind,
                    f.reason
                ))
                .collect::<Vec<_>>()
                .join("; "),
            threshold
        );
        return outcome;
    }

    outcome.reason = format!("{agreeing} of {threshold} agreeing attestations");
    if !ignored.is_empty() {
        outcome
            .reason
            .push_str(&format!("; ignored: {}", ignored.join(", ")));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TrustedBuilder;
    use crate::signing::Keyring;

    fn policy(n: usize, k: usize) -> Policy {
        Policy {
            default_threshold: k,
            majority: false,
            require_witness: false,
            witnesses: Vec::new(),
            developer_mismatch_holds: false,
            official_mismatch_holds: false,
            builders: (0..n)
                .map(|i| TrustedBuilder {
                    name: format!("b{i}"),
                    fingerprint: format!("{i:040X}"),
                    not_before: None,
                    not_after: None,
                    key: Default::default(),
                })
                .collect(),
            builder_keyring: Keyring::new(),
            developer_keyring: Keyring::new(),
            rules: vec![(glob::Pattern::new("important*").expect("glob"), 3)],
            path: None,
        }
    }

    fn vote(i: usize, sha: &[u8]) -> Vote {
        Vote {
            fingerprint: format!("{i:040X}"),
            statement: Sha256Digest::of(format!("st{i}{sha:?}").as_bytes()),
            artifacts: vec![ArtifactDigest {
                name: "hello_2.10-3_amd64.deb".into(),
                sha256: Sha256Digest::of(sha),
            }],
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn two_agreeing_builders_ship() {
        let o = evaluate(&policy(2, 2), "hello", &[vote(0, b"a"), vote(1, b"a")], &[]);
        assert_eq!(o.state, State::Ship);
        assert_eq!(o.counted.len(), 2);
        assert_eq!(o.artifacts.len(), 1);
    }

    #[test]
    fn one_vote_is_pending_and_the_same_key_twice_counts_once() {
        let p = policy(2, 2);
        assert_eq!(
            evaluate(&p, "hello", &[vote(0, b"a")], &[]).state,
            State::Pending
        );
        let mut again = vote(0, b"a");
        again.statement = Sha256Digest::of(b"other job");
        let o = evaluate(&p, "hello", &[vote(0, b"a"), again], &[]);
        assert_eq!(o.state, State::Pending, "{o:?}");
    }

    #[test]
    fn disagreement_holds_and_names_the_dissenter() {
        let p = policy(3, 2);
        let o = evaluate(
            &p,
            "hello",
            &[vote(0, b"a"), vote(1, b"a"), vote(2, b"b")],
            &[],
        );
        assert_eq!(o.state, State::Hold);
        assert_eq!(o.dissenters, vec![format!("{:040X}", 2)]);
        let mut pm = p.clone();
        pm.majority = true;
        let o = evaluate(
            &pm,
            "hello",
            &[vote(0, b"a"), vote(1, b"a"), vote(2, b"b")],
            &[],
        );
        assert_eq!(
            o.state,
            State::Ship,
            "majority only when the policy says so"
        );
    }

    #[test]
    fn a_revoked_key_discounts_its_votes_and_holds_and_expiry_uses_the_log_time() {
        let mut p = policy(2, 2);
        p.builders[1].key.revoked = Some(crate::policy::Revocation {
            at: Utc::now(),
            hard: true,
            reason: "key compromised".into(),
        });
        let o = evaluate(&p, "hello", &[vote(0, b"a"), vote(1, b"a")], &[]);
        assert_eq!(o.state, State::Hold, "{o:?}");
        assert!(
            o.reason.contains("b1") && o.reason.contains("revoked"),
            "{}",
            o.reason
        );
        let mut p = policy(2, 2);
        p.builders[1].key.expires_at = Some(Utc::now() - chrono::Duration::hours(1));
        let o = evaluate(&p, "hello", &[vote(0, b"a"), vote(1, b"a")], &[]);
        assert_eq!(o.state, State::Pending, "recorded after expiry: {o:?}");
        let mut early = vote(1, b"a");
        early.recorded_at = Utc::now() - chrono::Duration::hours(2);
        let o = evaluate(&p, "hello", &[vote(0, b"a"), early], &[]);
        assert_eq!(o.state, State::Ship, "recorded before expiry: {o:?}");
    }

    #[test]
    fn untrusted_votes_never_count() {
        let p = policy(2, 2);
        let o = evaluate(&p, "hello", &[vote(0, b"a"), vote(7, b"a")], &[]);
        assert_eq!(o.state, State::Pending);
    }

    #[test]
    fn per_package_threshold() {
        let p = policy(3, 2);
        let o = evaluate(&p, "important-lib", &[vote(0, b"a"), vote(1, b"a")], &[]);
        assert_eq!(o.state, State::Pending);
        assert_eq!(o.threshold, 3);
    }

    #[test]
    fn failures_that_make_quorum_impossible_fail() {
        let p = policy(2, 2);
        let f = Failure {
            fingerprint: format!("{:040X}", 1),
            kind: "build".into(),
            reason: "exit 2".into(),
        };
        let o = evaluate(&p, "hello", &[vote(0, b"a")], std::slice::from_ref(&f));
        assert_eq!(o.state, State::Failed);
        let o = evaluate(&policy(3, 2), "hello", &[vote(0, b"a")], &[f]);
        assert_eq!(o.state, State::Pending, "a third builder can still agree");
    }
}
