//! Inclusion and consistency proof verification (`lockstep_archive::proof`).
//!
//! A fixed honest tree of `N` leaves is built here with a plain recursive RFC 6962 reference
//! (MTH, PATH, SUBPROOF from §2.1), independent of the archive's code. Once per process every
//! honest proof of every tree size up to `N` (boundary sizes 0, 1, 2^k and 2^k+1 included) must
//! verify: the reference vectors. Then each input either
//! - takes an honest inclusion or consistency proof and corrupts it (bit flips, truncation,
//!   extension, swapped, duplicated or foreign hashes, another index, size, leaf or root): the
//!   verifier must accept exactly when the result is still the honest statement with its
//!   honest proof, and refuse every other combination; or
//! - passes arbitrary numbers and hashes: no panic, whatever the sizes (up to `u64::MAX`).
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

fn any_size(u: &mut Unstructured, near: u64) -> ArbResult<u64> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => near,
        1 => u.int_in_range(0..=N + 2)?,
        2 => near.wrapping_add(u.int_in_range(0u64..=3)?).wrapping_sub(1),
        _ => u.arbitrary()?,
    })
}

fn inclusion_case(u: &mut Unstructured, t: &Tree) -> ArbResult<()> {
    let n = u.int_in_range(1..=N)?;
    let i = u.int_in_range(0..=n - 1)?;
    let honest = path(i as usize, &t.leaves[..n as usize]);
    let mut proof = honest.clone();
    let (mut index, mut size, mut leaf, mut root) = (i, n, t.leaves[i as usize], t.roots[n as usize]);
    if u.arbitrary()? {
        index = any_size(u, index)?;
    }
    if u.arbitrary()? {
        size = any_size(u, size)?;
    }
    if u.arbitrary()? {
        leaf = any_hash(u, t)?;
    }
    if u.arbitrary()? {
        root = any_hash(u, t)?;
    }
    mutate_proof(u, t, &mut proof)?;
    let accepted = verify_inclusion(leaf, index, size, &proof, root).is_ok();
    let true_statement = index < size
        && size <= N
        && leaf == t.leaves[index as usize]
        && root == t.roots[size as usize];
    let honest_proof =
        true_statement && proof == path(index as usize, &t.leaves[..size as usize]);
    if accepted {
        assert!(
            honest_proof,
            "accepted a corrupted inclusion proof: leaf {index} in {size} (honest: {i} in {n}), \
             true statement: {true_statement}, proof {proof:?} vs honest {honest:?}"
        );
    } else {
        assert!(
            !honest_proof,
            "refused the honest inclusion proof of leaf {index} in {size}"
        );
    }
    Ok(())
}

fn consistency_case(u: &mut Unstructured, t: &Tree) -> ArbResult<()> {
    let n = u.int_in_range(0..=N)?;
    let m = u.int_in_range(0..=n)?;
    let honest = consistency(m as usize, &t.leaves[..n as usize]);
    let mut proof = honest.clone();
    let (mut old, mut new, mut old_root, mut new_root) =
        (m, n, t.roots[m as usize], t.roots[n as usize]);
    if u.arbitrary()? {
        old = any_size(u, old)?;
    }
    if u.arbitrary()? {
        new = any_size(u, new)?;
    }
    if u.arbitrary()? {
        old_root = any_hash(u, t)?;
    }
    if u.arbitrary()? {
        new_root = any_hash(u, t)?;
    }
    mutate_proof(u, t, &mut proof)?;
    let accepted = verify_consistency(old, old_root, new, new_root, &proof).is_ok();
    let true_statement = old <= new
        && new <= N
        && old_root == t.roots[old as usize]
        && new_root == t.roots[new as usize];
    let honest_proof =
        true_statement && proof == consistency(old as usize, &t.leaves[..new as usize]);
    if accepted {
        assert!(
            honest_proof,
            "accepted a corrupted consistency proof {old} -> {new} (honest: {m} -> {n}), true \
             statement: {true_statement}, proof {proof:?} vs honest {honest:?}"
        );
    } else {
        assert!(
            !honest_proof,
            "refused the honest consistency proof {old} -> {new}"
        );
    }
    Ok(())
}

fn arbitrary_case(u: &mut Unstructured) -> ArbResult<()> {
    let proof: Vec<H> = (0..u.int_in_range(0u8..=70)?)
        .map(|_| u.arbitrary())
        .collect::<ArbResult<_>>()?;
    let (a, b): (u64, u64) = (u.arbitrary()?, u.arbitrary()?);
    let _ = verify_inclusion(u.arbitrary()?, a, b, &proof, u.arbitrary()?);
    let _ = verify_consistency(a, u.arbitrary()?, b, u.arbitrary()?, &proof);
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
