//! Client-side verification for auditors, witnesses and the coordinator: RFC 6962 inclusion and
//! consistency proofs and signed checkpoints. Nothing here touches the archive's storage; every
//! function takes only public data and never panics on malformed input.
//!
//! The proof checks are `tlog_tiles::check_record` / `check_tree`; checkpoints are parsed by
//! `tlog_tiles::Checkpoint` and verified by `signed_note`.

use serde::{Deserialize, Serialize};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

/// Longest proof accepted: a tree of at most 2⁶⁴ leaves has at most 64 levels.
const MAX_PROOF_LEN: usize = 64;

/// Why a proof or checkpoint was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    /// The proof does not lead to the claimed root: the log may be lying or the data is wrong.
    #[error("proof does not verify against the given root; do not trust this log entry or tree")]
    Invalid,
    /// The question itself is impossible (index outside the tree, shrinking tree, …).
    #[error("bad proof request: {0}")]
    BadInput(String),
    /// The checkpoint or verifier key text is not well-formed.
    #[error("malformed checkpoint or key: {0}")]
    Malformed(String),
    /// The checkpoint is not signed by the given key, or the signature is wrong.
    #[error("checkpoint signature does not verify with the given key: {0}")]
    BadSignature(String),
}

/// A verified checkpoint's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
}

/// Hash of the empty tree (SHA-256 of the empty string), RFC 6962 §2.1.
pub const EMPTY_ROOT: [u8; 32] = tlog_tiles::EMPTY_HASH.0;

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    tlog_tiles::record_hash(data).0
}

/// RFC 6962 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: [u8; 32], right: [u8; 32]) -> [u8; 32] {
    tlog_tiles::node_hash(Hash(left), Hash(right)).0
}

fn to_hashes(proof: &[[u8; 32]]) -> Result<Vec<Hash>, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::Invalid);
    }
    Ok(proof.iter().map(|h| Hash(*h)).collect())
}

/// Checks that the leaf with hash `leaf_hash` is at `index` in the tree of `size` leaves with
/// root `root`.
pub fn verify_inclusion(
    leaf_hash: [u8; 32],
    index: u64,
    size: u64,
    proof: &[[u8; 32]],
    root: [u8; 32],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::BadInput(format!(
            "leaf {index} cannot be in a tree of size {size}"
        )));
    }
    let p = to_hashes(proof)?;
    tlog_tiles::check_record(&p, size, Hash(root), index, Hash(leaf_hash))
        .map_err(|_| ProofError::Invalid)
}

/// Checks that the tree of `new_size` leaves with root `new_root` extends the tree of `old_size`
/// leaves with root `old_root`.
pub fn verify_consistency(
    old_size: u64,
    old_root: [u8; 32],
    new_size: u64,
    new_root: [u8; 32],
    proof: &[[u8; 32]],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::BadInput(format!(
            "old size {old_size} is larger than new size {new_size}"
        )));
    }
    if old_size == 0 {
        // Everything extends the empty tree; the proof is empty by definition.
        if old_root != EMPTY_ROOT || !proof.is_empty() || (new_size == 0 && new_root != EMPTY_ROOT)
        {
            return Err(ProofError::Invalid);
        }
        return Ok(());
    }
    let p = to_hashes(proof)?;
    tlog_tiles::check_tree(&p, new_size, Hash(new_root), old_size, Hash(old_root))
        .map_err(|_| ProofError::Invalid)
}

/// Verifies a signed-note checkpoint against a verifier key (`name+hash+base64key`) and returns
/// its contents. The checkpoint's origin must equal the key name. Extra signatures by unknown
/// keys (e.g. witness cosignatures) are allowed; at least one must be by `verifier_key`.
pub fn verify_checkpoint(
    note_text: &str,
    verifier_key: &str,
) -> Result<CheckpointInfo, ProofError> {
    let verifier = StandardVerifier::new(verifier_key)
        .map_err(|e| ProofError::Malformed(format!("verifier key {verifier_key:?}: {e}")))?;
    let key_name = signed_note::Verifier::name(&verifier).to_owned();
    let note = Note::from_bytes(note_text.as_bytes())
        .map_err(|e| ProofError::Malformed(format!("signed note: {e}")))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| ProofError::BadSignature(e.to_string()))?;
    let cp = Checkpoint::from_bytes(note.text())
        .map_err(|e| ProofError::Malformed(format!("checkpoint body: {e}")))?;
    if cp.origin() != key_name {
        return Err(ProofError::Malformed(format!(
            "checkpoint origin {:?} does not match the key name {key_name:?}",
            cp.origin()
        )));
    }
    Ok(CheckpointInfo {
        origin: cp.origin().to_owned(),
        size: cp.size(),
        root: cp.hash().0,
    })
}
