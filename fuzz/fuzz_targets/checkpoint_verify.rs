//! Signed checkpoint verification (`lockstep_archive::proof::verify_checkpoint`).
//!
//! An honest checkpoint is signed here once, the way the archive signs (C2SP signed note,
//! Ed25519), with a fixed test-only seed so the committed corpus holds real, verifying notes.
//! Each input is either arbitrary note text checked against the fixed key, an edit of the
//! honest note, or arbitrary text and an arbitrary key. Never a panic; and whatever verifies
//! against the fixed key must carry exactly the honest origin, size and root (anything else is
//! a forgery).
#![no_main]

use std::sync::OnceLock;

use base64::prelude::*;
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use lockstep_archive::proof::{leaf_hash, verify_checkpoint, CheckpointInfo};
use signed_note::{Note, StandardSigner};
use tlog_tiles::{Checkpoint, Hash};

/// Test-only log key seed: never used outside this fuzz target.
const SEED: [u8; 32] = [0x5a; 32];
const ORIGIN: &str = "lockstep.fuzz/log";

struct Honest {
    key: String,
    note: String,
    info: CheckpointInfo,
}

fn honest() -> &'static Honest {
    static H: OnceLock<Honest> = OnceLock::new();
    H.get_or_init(|| {
        let sk = ed25519_dalek::SigningKey::from_bytes(&SEED);
        let key = signed_note::new_ed25519_verifier_key(ORIGIN, &sk.verifying_key());
        let id = key.split('+').nth(1).expect("name+id+key");
        let mut private = vec![0x01];
        private.extend_from_slice(&SEED);
        let signer = StandardSigner::new(&format!(
            "PRIVATE+KEY+{ORIGIN}+{id}+{}",
            BASE64_STANDARD.encode(&private)
        ))
        .expect("a signer");
        let root = leaf_hash(b"lockstep fuzz");
        let body = Checkpoint::new(ORIGIN, 7, Hash(root), "")
            .expect("a checkpoint")
            .to_bytes();
        let mut note = Note::new(&body, &[]).expect("a note");
        note.add_sigs(&[&signer]).expect("signed");
        let note = String::from_utf8(note.to_bytes()).expect("UTF-8");
        let info = verify_checkpoint(&note, &key).expect("the honest checkpoint verifies");
        assert_eq!((info.size, info.root), (7, root));
        Honest { key, note, info }
    })
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

fn check(h: &Honest, text: &str) {
    if let Ok(info) = verify_checkpoint(text, &h.key) {
        assert_eq!(
            info, h.info,
            "a checkpoint other than the honest one verified:\n{text}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let h = honest();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check(h, &String::from_utf8_lossy(rest)),
        1 => {
            let mut u = Unstructured::new(rest);
            if let Ok(b) = edit(&mut u, h.note.clone().into_bytes()) {
                check(h, &String::from_utf8_lossy(&b));
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (note, key) = text.split_once('\u{0}').unwrap_or((&text, &h.key));
            let _ = verify_checkpoint(note, key);
        }
    }
});
