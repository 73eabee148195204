//! `Keyring::verify_clearsigned` and `verify_detached` take plain armored documents apart
//! themselves and hand sequoia binary packets (issue 7, P3); anything else goes to sequoia whole.
//! These tests hold the fast path to sequoia's own reading: for honest documents of every text
//! shape the cleartext framework has (dash escapes, trailing blanks, CRLF, empty lines, non-ASCII),
//! from Lockstep's signer and from GnuPG, and for thousands of edits of them, both paths accept
//! the same documents and return the same signer and the same text.

use std::io::Write;
use std::process::{Command, Stdio};

use lockstep_proto::signing::{plain_shape, Keyring, SigningKey};

/// A seeded generator, so a failure replays.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }
}

/// Texts with every line shape the cleartext framework treats specially.
fn texts(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    const PIECES: &[&str] = &[
        "Format: 1.0",
        "Source: hello",
        " 3f1a 53212 hello_2.10-3_amd64.deb",
        "-----BEGIN PGP SIGNATURE-----",
        "- already dashed",
        "--",
        "-",
        "From the top",
        "trailing blanks  \t ",
        "\ttab first",
        "",
        "   ",
        "Ünïcödé ‐ dash",
        "‐‐‐BEGIN PGP SIGNATURE",
        "=AAAA",
        "a\rb",
    ];
    (0..n)
        .map(|i| {
            let mut t = Vec::new();
            for _ in 0..1 + rng.below(12) {
                t.extend_from_slice(PIECES[rng.below(PIECES.len())].as_bytes());
                t.extend_from_slice(if rng.below(4) == 0 { b"\r\n" } else { b"\n" });
            }
            if i % 3 == 0 {
                // No final line ending.
                while t.last().is_some_and(|&c| c == b'\n' || c == b'\r') {
                    t.pop();
                }
                t.extend_from_slice(b"end");
            }
            t
        })
        .collect()
}

/// Whether a text is one the signers and readers of the cleartext framework disagree about, so
/// that even its honest document is refused (by both paths alike): a line of Unicode dashes
/// before `BEGIN PGP SIGNATURE` ends the text for sequoia but is not escaped by signers, and a
/// bare carriage return is a line ending to GnuPG's text mode only.
fn quirky(text: &[u8]) -> bool {
    String::from_utf8_lossy(text).contains("\u{2010}\u{2010}\u{2010}BEGIN")
        || text.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n')
}

/// Edits of a document: flipped, inserted and removed bytes, truncation, line-ending changes.
fn edit(rng: &mut Rng, doc: &[u8]) -> Vec<u8> {
    let mut b = doc.to_vec();
    for _ in 0..1 + rng.below(3) {
        if b.is_empty() {
            break;
        }
        let i = rng.below(b.len());
        match rng.below(6) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b.insert(i, b" -\r\n=\tA"[rng.below(7)]),
            2 => {
                b.remove(i);
            }
            3 => b.truncate(i),
            4 => {
                if let Some(j) = b[i..].iter().position(|&c| c == b'\n') {
                    b.insert(i + j, b'\r');
                }
            }
            _ => b.extend_from_slice(b"\n"),
        }
    }
    b
}

fn assert_same_clearsigned(ring: &Keyring, doc: &[u8]) -> bool {
    let fast = ring.verify_clearsigned(doc);
    let general = ring.verify_clearsigned_general(doc);
    match (&fast, &general) {
        (Ok((a, ta)), Ok((b, tb))) => {
            assert_eq!(a.fingerprint, b.fingerprint);
            assert_eq!(a.key_fingerprint, b.key_fingerprint);
            assert_eq!(a.signed_at, b.signed_at);
            assert_eq!(
                ta,
                tb,
                "texts differ for {:?}",
                String::from_utf8_lossy(doc)
            );
            true
        }
        (Err(_), Err(_)) => false,
        _ => panic!(
            "the paths disagree on {:?}: fast {fast:?}, sequoia {general:?}",
            String::from_utf8_lossy(doc)
        ),
    }
}

fn assert_same_detached(ring: &Keyring, data: &[u8], sig: &[u8]) -> bool {
    let fast = ring.verify_detached(data, sig);
    let general = ring.verify_detached_general(data, sig);
    match (&fast, &general) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.fingerprint, b.fingerprint);
            assert_eq!(a.key_fingerprint, b.key_fingerprint);
            true
        }
        (Err(_), Err(_)) => false,
        _ => panic!(
            "the paths disagree on {:?}: fast {fast:?}, sequoia {general:?}",
            String::from_utf8_lossy(sig)
        ),
    }
}

/// A new Lockstep signing key and a keyring that trusts it.
fn lockstep_signer() -> (SigningKey, Keyring) {
    let key = SigningKey::generate("diff <diff@lockstep.invalid>").expect("keygen");
    let mut ring = Keyring::new();
    ring.add(key.cert());
    (key, ring)
}

#[test]
fn lockstep_clearsigned_documents_read_the_same_both_ways() {
    let (key, ring) = lockstep_signer();
    let mut rng = Rng::new(0x5EED_0001);
    let mut accepted_edits = 0;
    for text in texts(&mut rng, 150) {
        let doc = key.clearsign(&text).expect("clearsign");
        // Only a line starting with a non-ASCII byte sends an honest document to sequoia.
        assert_eq!(plain_shape(&doc), text.is_ascii(), "{text:?}");
        assert!(
            assert_same_clearsigned(&ring, &doc) || quirky(&text),
            "an honest document was refused: {:?}",
            String::from_utf8_lossy(&doc)
        );
        // The whole document with CRLF line endings still carries a valid signature.
        let crlf = String::from_utf8_lossy(&doc).replace('\n', "\r\n");
        assert_same_clearsigned(&ring, crlf.as_bytes());
        for _ in 0..30 {
            if assert_same_clearsigned(&ring, &edit(&mut rng, &doc)) {
                accepted_edits += 1;
            }
        }
    }
    // Edits of line endings, trailing blanks and the armor's own whitespace keep a document
    // valid; some of the 4,500 must have been accepted, or the comparison proved little.
    assert!(accepted_edits > 50, "only {accepted_edits} edits verified");
}

#[test]
fn lockstep_detached_signatures_read_the_same_both_ways() {
    let (key, ring) = lockstep_signer();
    let mut rng = Rng::new(0x5EED_0002);
    let mut accepted_edits = 0;
    for (i, text) in texts(&mut rng, 100).into_iter().enumerate() {
        let sig = key.sign_detached(&text).expect("sign");
        assert!(plain_shape(sig.as_bytes()));
        assert!(assert_same_detached(&ring, &text, sig.as_bytes()));
        assert!(!assert_same_detached(&ring, b"other data", sig.as_bytes()));
        let crlf = sig.replace('\n', "\r\n");
        assert_same_detached(&ring, &text, crlf.as_bytes());
        // Armor headers, and a block without its checksum line.
        let headed = sig.replacen(
            "-----BEGIN PGP SIGNATURE-----\n",
            "-----BEGIN PGP SIGNATURE-----\nComment: diff test\n",
            1,
        );
        assert!(assert_same_detached(&ring, &text, headed.as_bytes()));
        let no_crc: String = sig
            .lines()
            .filter(|l| !l.starts_with('='))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_same_detached(&ring, &text, no_crc.as_bytes());
        for _ in 0..30 {
            if assert_same_detached(&ring, &text, &edit(&mut rng, sig.as_bytes())) {
                accepted_edits += 1;
            }
        }
        if i == 0 {
            // The binary packets themselves.
            let mut packets = Vec::new();
            std::io::Read::read_to_end(
                &mut sequoia_openpgp::armor::Reader::from_bytes(sig.as_bytes(), None),
                &mut packets,
            )
            .expect("dearmor");
            assert!(assert_same_detached(&ring, &text, &packets));
        }
    }
    assert!(accepted_edits > 20, "only {accepted_edits} edits verified");
}

/// Documents clearsigned by GnuPG (what debsign runs), with its own armor headers and wrapping.
#[test]
fn gnupg_clearsigned_documents_read_the_same_both_ways() {
    let home = tempfile::tempdir().expect("tempdir");
    let gpg = |args: &[&str], input: Option<&[u8]>| -> Vec<u8> {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gpg runs (scripts/setup installs gnupg)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.unwrap_or_default())
            .expect("write to gpg");
        let out = child.wait_with_output().expect("gpg finishes");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    gpg(
        &[
            "--quick-gen-key",
            "Diff <diff@lockstep.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
        None,
    );
    let ring = {
        let mut ring = Keyring::new();
        for cert in Keyring::parse_certs(&gpg(&["--export"], None)).expect("gpg's certificate") {
            ring.add(cert);
        }
        ring
    };
    let mut rng = Rng::new(0x5EED_0003);
    let mut shapes = texts(&mut rng, 12);
    // A real .buildinfo's shape, long lines included.
    shapes.push(
        format!(
            "Format: 1.0\nSource: hello\nBinary: hello\nChecksums-Sha256:\n {} 53212 hello.deb\n\
             Installed-Build-Depends:\n autoconf (= 2.71-3),\n{}",
            "ab".repeat(32),
            " libc6 (= 2.36-9),\n".repeat(200)
        )
        .into_bytes(),
    );
    for text in shapes {
        let doc = gpg(&["--clearsign", "--digest-algo", "SHA512"], Some(&text));
        assert_eq!(plain_shape(&doc), text.is_ascii(), "{text:?}");
        assert!(
            assert_same_clearsigned(&ring, &doc) || quirky(&text),
            "GnuPG's document was refused: {:?}",
            String::from_utf8_lossy(&doc)
        );
        for _ in 0..20 {
            assert_same_clearsigned(&ring, &edit(&mut rng, &doc));
        }
        let detached = gpg(&["--armor", "--detach-sign"], Some(&text));
        assert!(plain_shape(&detached));
        assert!(assert_same_detached(&ring, &text, &detached) || quirky(&text));
    }
}
