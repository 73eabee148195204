//! Inclusion and consistency proof verification (`lockstep_archive::proof`).
//!
//! A fixed honest tree of `N` leaves is built here with a plain recursive RFC 6962 reference
//! (MTH, PATH, SUBPROOF from §2.1), independent of the archive's code. Once per process every
//! honest proof of every tree size up to `N` (boundary sizes 0, 1, 2^k and 2^k+1 included) must
//! verify: the reference vectors. Then each input either
//! - takes an honest inclusion or consistency proof and corrupts it (bit flips, truncation,
//!   extension, swapped, duplicated or spliced-in hashes of the same tree), or changes one of
//!   index, size, leaf or root: the verifier must accept exactly the untouched honest proof; or
//! - passes arbitrary numbers and hashes: no panic, whatever the sizes (up to `u64::MAX`).
//!
//! Every decision is also compared with RFC 9162's verification algorithms written out here.
//! Changing a size alone is left to that comparison: a proof does not bind the tree size (the
//! signed checkpoint binds size and root together), so another size with the same path shape is
//! a true claim about a different tree.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use lockstep_archive::proof::{
    leaf_hash, node_hash, verify_consistency, verify_inclusion, EMPTY_ROOT,
};

/// Leaves of the honest tree.
const N: u64 = 40;

type H = [u8; 32];

struct Tree {
    leaves: Vec<H>,
    /// `roots[n]`: root of the first `n` leaves.
    roots: Vec<H>,
}

fn split(n: usize) -> usize {
    // Largest power of two strictly below n (n >= 2).
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn mth(d: &[H]) -> H {
    match d.len() {
        0 => EMPTY_ROOT,
        1 => d[0],
        n => {
            let k = split(n);
            node_hash(mth(&d[..k]), mth(&d[k..]))
        }
    }
}

fn path(m: usize, d: &[H]) -> Vec<H> {
    if d.len() <= 1 {
        return Vec::new();
    }
    let k = split(d.len());
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

fn subproof(m: usize, d: &[H], complete: bool) -> Vec<H> {
    let n = d.len();
    if m == n {
        return if complete { Vec::new() } else { vec![mth(d)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], complete);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

/// RFC 6962 PROOF(m, D[n]); empty for m = 0 (everything extends the empty tree).
fn consistency(m: usize, d: &[H]) -> Vec<H> {
    if m == 0 {
        return Vec::new();
    }
    subproof(m, d, true)
}

/// RFC 9162 §2.1.3.2 inclusion verification, written out step by step as the reference the
/// archive's verifier is compared with.
fn reference_inclusion(leaf: H, index: u64, size: u64, proof: &[H], root: H) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(*p, r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(r, *p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == root
}

/// RFC 9162 §2.1.4.2 consistency verification (same role), with the archive's documented
/// conventions for equal sizes (empty proof, equal roots) and the empty old tree.
fn reference_consistency(old: u64, old_root: H, new: u64, new_root: H, proof: &[H]) -> bool {
    if old > new {
        return false;
    }
    if old == 0 {
        return old_root == EMPTY_ROOT && proof.is_empty() && (new > 0 || new_root == EMPTY_ROOT);
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<H> = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, old_root);
    }
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(*c, fr);
            sr = node_hash(*c, sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(sr, *c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == old_root && sr == new_root && s == 0
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let leaves: Vec<H> = (0..N).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let roots: Vec<H> = (0..=N as usize).map(|n| mth(&leaves[..n])).collect();
        // Reference vectors: every honest proof verifies.
        for n in 0..=N as usize {
            for i in 0..n {
                let p = path(i, &leaves[..n]);
                verify_inclusion(leaves[i], i as u64, n as u64, &p, roots[n])
                    .unwrap_or_else(|e| panic!("honest inclusion {i} in {n} refused: {e}"));
            }
            for m in 0..=n {
                let p = consistency(m, &leaves[..n]);
                verify_consistency(m as u64, roots[m], n as u64, roots[n], &p)
                    .unwrap_or_else(|e| panic!("honest consistency {m} -> {n} refused: {e}"));
            }
        }
        Tree { leaves, roots }
    })
}

fn any_hash(u: &mut Unstructured, t: &Tree) -> ArbResult<H> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => t.leaves[u.int_in_range(0..=N as usize - 1)?],
        1 => t.roots[u.int_in_range(0..=N as usize)?],
        _ => u.arbitrary()?,
    })
}

/// Corrupts `proof` in place with a few random edits.
fn mutate_proof(u: &mut Unstructured, t: &Tree, proof: &mut Vec<H>) -> ArbResult<()> {
    for _ in 0..u.int_in_range(0u8..=4)? {
        match u.int_in_range(0u8..=5)? {
            0 if !proof.is_empty() => {
                let i = u.choose_index(proof.len())?;
                let bit = u.int_in_range(0u16..=255)?;
                proof[i][usize::from(bit / 8)] ^= 1 << (bit % 8);
            }
            1 => {
                let keep = u.int_in_range(0..=proof.len())?;
                proof.truncate(keep);
            }
            2 => {
                let at = u.int_in_range(0..=proof.len())?;
                proof.insert(at, any_hash(u, t)?);
            }
            3 if proof.len() >= 2 => {
                let a = u.choose_index(proof.len())?;
                let b = u.choose_index(proof.len())?;
                proof.swap(a, b);
            }
            4 if !proof.is_empty() => {
                let i = u.choose_index(proof.len())?;
                proof[i] = any_hash(u, t)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Another value for a number: nearby, small or anything, but never the same.
fn other_size(u: &mut Unstructured, was: u64) -> ArbResult<u64> {
    let v = match u.int_in_range(0u8..=2)? {
        0 => was.wrapping_add(u.int_in_range(1u64..=3)?),
        1 => u.int_in_range(0..=N + 2)?,
        _ => u.arbitrary()?,
    };
    Ok(if v == was { was.wrapping_sub(1) } else { v })
}

/// Another hash: a leaf or root of the honest tree, a bit flip, or anything, but never the same.
fn other_hash(u: &mut Unstructured, t: &Tree, was: H) -> ArbResult<H> {
    let mut v = any_hash(u, t)?;
    if v == was {
        v[usize::from(u.int_in_range(0u8..=31)?)] ^= 1 << u.int_in_range(0u8..=7)?;
    }
    Ok(v)
}

/// An honest inclusion claim, then either only its proof corrupted (accepted exactly when the
/// proof is still the honest one) or exactly one of index, size, leaf and root changed with the
/// honest proof (always refused).
///
/// Only one field changes at a time: with several, the fuzzer can state a true fact about
/// another tree (leaf hashes are opaque, so a root of this tree is also the root of a smaller
/// tree whose "leaves" are interior nodes), which a verifier must accept.
fn inclusion_case(u: &mut Unstructured, t: &Tree) -> ArbResult<()> {
    let n = u.int_in_range(1..=N)?;
    let i = u.int_in_range(0..=n - 1)?;
    let honest = path(i as usize, &t.leaves[..n as usize]);
    let (mut index, mut size, mut leaf, mut root) =
        (i, n, t.leaves[i as usize], t.roots[n as usize]);
    let mut proof = honest.clone();
    let what = u.int_in_range(0u8..=4)?;
    match what {
        0 => mutate_proof(u, t, &mut proof)?,
        1 => index = other_size(u, index)?,
        2 => size = other_size(u, size)?,
        3 => leaf = other_hash(u, t, leaf)?,
        _ => root = other_hash(u, t, root)?,
    }
    let accepted = verify_inclusion(leaf, index, size, &proof, root).is_ok();
    assert_eq!(
        accepted,
        reference_inclusion(leaf, index, size, &proof, root),
        "the verifier and RFC 9162's algorithm disagree on leaf {index} in {size}"
    );
    if what == 2 {
        // Another size with the same root can be a true claim about a different tree shape
        // (sizes and roots are bound together by the signed checkpoint, not by the proof);
        // the reference decides.
        return Ok(());
    }
    let unchanged = proof == honest
        && (index, size, leaf, root) == (i, n, t.leaves[i as usize], t.roots[n as usize]);
    assert_eq!(
        accepted,
        unchanged,
        "inclusion of leaf {i} in {n}, change {what}: index {index}, size {size}, proof \
         {proof:?} (honest {honest:?}) was {}",
        if accepted { "accepted" } else { "refused" }
    );
    Ok(())
}

/// The same for consistency proofs. From the empty tree (m = 0) every tree is consistent, so
/// there a changed new size or root is a true claim and is not asserted on.
fn consistency_case(u: &mut Unstructured, t: &Tree) -> ArbResult<()> {
    let n = u.int_in_range(0..=N)?;
    let m = u.int_in_range(0..=n)?;
    let honest = consistency(m as usize, &t.leaves[..n as usize]);
    let (mut old, mut new, mut old_root, mut new_root) =
        (m, n, t.roots[m as usize], t.roots[n as usize]);
    let mut proof = honest.clone();
    let what = u.int_in_range(0u8..=4)?;
    match what {
        0 => mutate_proof(u, t, &mut proof)?,
        1 => old = other_size(u, old)?,
        2 => new = other_size(u, new)?,
        3 => old_root = other_hash(u, t, old_root)?,
        _ => new_root = other_hash(u, t, new_root)?,
    }
    let accepted = verify_consistency(old, old_root, new, new_root, &proof).is_ok();
    assert_eq!(
        accepted,
        reference_consistency(old, old_root, new, new_root, &proof),
        "the verifier and RFC 9162's algorithm disagree on {old} -> {new}"
    );
    if what == 1 || what == 2 {
        // As for inclusion: another size can be true of a different tree; the reference decides.
        return Ok(());
    }
    if m == 0 && (what == 2 || what == 4) {
        // True by definition unless the new tree claims to be empty with a non-empty root.
        return Ok(());
    }
    let unchanged = proof == honest
        && (old, new, old_root, new_root) == (m, n, t.roots[m as usize], t.roots[n as usize]);
    assert_eq!(
        accepted,
        unchanged,
        "consistency {m} -> {n}, change {what}: {old} -> {new}, proof {proof:?} (honest \
         {honest:?}) was {}",
        if accepted { "accepted" } else { "refused" }
    );
    Ok(())
}

fn arbitrary_case(u: &mut Unstructured) -> ArbResult<()> {
    let proof: Vec<H> = (0..u.int_in_range(0u8..=70)?)
        .map(|_| u.arbitrary())
        .collect::<ArbResult<_>>()?;
    let (a, b): (u64, u64) = (u.arbitrary()?, u.arbitrary()?);
    let (h1, h2): (H, H) = (u.arbitrary()?, u.arbitrary()?);
    assert_eq!(
        verify_inclusion(h1, a, b, &proof, h2).is_ok(),
        reference_inclusion(h1, a, b, &proof, h2)
    );
    assert_eq!(
        verify_consistency(a, h1, b, h2, &proof).is_ok(),
        reference_consistency(a, h1, b, h2, &proof)
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let t = tree();
    let mut u = Unstructured::new(data);
    let _ = match u.int_in_range(0u8..=2) {
        Ok(0) => inclusion_case(&mut u, t),
        Ok(1) => consistency_case(&mut u, t),
        _ => arbitrary_case(&mut u),
    };
});
