//! The plain shapes of the two signed documents every attestation carries, taken apart without
//! sequoia's armor reader.
//!
//! Verifying a statement's armored detached signature and a clearsigned `.buildinfo` through
//! sequoia's streaming parser costs far more than the signature checks themselves: its armor
//! reader allocates a fresh zero-filled buffer of 32 KiB or more on most reads, and a cleartext
//! document passes through several such layers (issue 7, P3; see `docs/performance.md`, tenth
//! round). Binary signature packets skip the armor reader altogether, so for the shapes GnuPG,
//! debsign and [`crate::signing::SigningKey`] write, this module does the framing and hands
//! sequoia binary packets and the exact text to verify:
//!
//! - [`dearmor_signature`]: `-----BEGIN PGP SIGNATURE-----`, optional `Key: value` headers, an
//!   empty line, base64 lines, an optional `=` CRC-24 line (checked), `-----END PGP
//!   SIGNATURE-----`, then nothing but whitespace.
//! - [`split_clearsigned`]: `-----BEGIN PGP SIGNED MESSAGE-----`, `Hash: ` headers, an empty
//!   line, the text, then such a signature block. The text comes out exactly as sequoia's
//!   cleartext transformation makes it (`armor.rs`, `read_clearsigned_message`): `- ` escapes
//!   undone, trailing spaces and tabs cut from every line, each line's own ending kept, the last
//!   line's ending dropped.
//!
//! Anything else — leading text, quoting prefixes, a text line starting with a dash that is not
//! an escape, a line starting with a non-ASCII byte (sequoia also ends the text at Unicode
//! dashes), unknown headers, a bad CRC, bytes after the block — answers `None`, and the caller
//! hands the document to sequoia unchanged. The fast path therefore only ever sees documents
//! whose reading sequoia's would agree with; `proto/tests/cleartext_differential.rs` and the
//! `signature_verify` fuzz target check that it does.

use base64::Engine as _;

const SIGNED_MESSAGE: &[u8] = b"-----BEGIN PGP SIGNED MESSAGE-----";
const BEGIN_SIGNATURE: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
const END_SIGNATURE: &[u8] = b"-----END PGP SIGNATURE-----";

/// A cleartext-signed document taken apart: the signed text as sequoia would return it, and
/// the binary signature packets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cleartext {
    pub text: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Lines of `b`, each with its `\n` (the last one may lack it).
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Lines<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { rest: b }
    }

    fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let end = self
            .rest
            .iter()
            .position(|&c| c == b'\n')
            .map_or(self.rest.len(), |i| i + 1);
        let (line, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(line)
    }
}

/// A line without its `\n` or `\r\n`.
fn content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The binary packets of an armored signature block in the plain shape, or `None`.
pub(crate) fn dearmor_signature(armored: &[u8]) -> Option<Vec<u8>> {
    let mut lines = Lines::new(armored);
    if content(lines.next()?) != BEGIN_SIGNATURE {
        return None;
    }
    signature_body(lines)
}

/// Everything after a `-----BEGIN PGP SIGNATURE-----` line: headers, base64, CRC, end line.
fn signature_body(mut lines: Lines<'_>) -> Option<Vec<u8>> {
    // Armor headers ("Version: ...", "Comment: ..."), up to the empty line.
    loop {
        let line = content(lines.next()?);
        if line.is_empty() {
            break;
        }
        let colon = line.windows(2).position(|w| w == b": ")?;
        if colon == 0 || !line[..colon].iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
    }
    let mut base64 = Vec::with_capacity(lines.rest().len());
    let mut crc = None;
    loop {
        let line = content(lines.next()?);
        if line == END_SIGNATURE {
            break;
        }
        if crc.is_some() {
            return None;
        }
        if let Some(sum) = line.strip_prefix(b"=") {
            crc = Some(sum);
            continue;
        }
        if line.is_empty()
            || !line
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
        {
            return None;
        }
        base64.extend_from_slice(line);
    }
    if !lines.rest().iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let packets = base64::engine::general_purpose::STANDARD
        .decode(&base64)
        .ok()?;
    if packets.is_empty() {
        return None;
    }
    if let Some(sum) = crc {
        let sum = base64::engine::general_purpose::STANDARD.decode(sum).ok()?;
        let want = crc24(&packets);
        if sum != [(want >> 16) as u8, (want >> 8) as u8, want as u8] {
            return None;
        }
    }
    Some(packets)
}

/// The armor checksum (RFC 4880, section 6.1).
fn crc24(data: &[u8]) -> u32 {
    const INIT: u32 = 0x00B7_04CE;
    const POLY: u32 = 0x0186_4CFB;
    let mut crc = INIT;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= POLY;
            }
        }
    }
    crc & 0x00FF_FFFF
}

/// A cleartext-signed document in the plain shape taken apart, or `None`.
pub(crate) fn split_clearsigned(doc: &[u8]) -> Option<Cleartext> {
    let mut lines = Lines::new(doc);
    if content(lines.next()?) != SIGNED_MESSAGE {
        return None;
    }
    // "Hash: SHA512" and the like; sequoia reads no other header here and checks none.
    loop {
        let line = content(lines.next()?);
        if line.is_empty() {
            break;
        }
        if !line.starts_with(b"Hash: ") {
            return None;
        }
    }
    let mut text = Vec::with_capacity(doc.len());
    loop {
        let mut line = lines.next()?;
        // A text without its end marker is truncated: sequoia's to judge.
        if !line.ends_with(b"\n") {
            return None;
        }
        match line.first() {
            Some(b'-') if line.starts_with(b"- ") => line = &line[2..],
            Some(b'-') if content(line) == BEGIN_SIGNATURE => break,
            // Another dash line may be an end marker to sequoia, or text: not ours to decide.
            Some(b'-') => return None,
            Some(&c) if !c.is_ascii() => return None,
            _ => {}
        }
        let crlf = line.ends_with(b"\r\n");
        let mut body = &line[..line.len() - if crlf { 2 } else { 1 }];
        while let Some(rest) = body.strip_suffix(b" ").or_else(|| body.strip_suffix(b"\t")) {
            body = rest;
        }
        text.extend_from_slice(body);
        text.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    }
    // The last line's ending separates the text from the marker; it is not signed. No line at
    // all is sequoia's to judge.
    text.pop()?;
    if text.ends_with(b"\r") {
        text.pop();
    }
    let signature = signature_body(lines)?;
    Some(Cleartext { text, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc24_is_openpgps() {
        // The initial value, and the catalogued check value of CRC-24/OPENPGP.
        assert_eq!(crc24(b""), 0x00B7_04CE);
        assert_eq!(crc24(b"123456789"), 0x0021_CF02);
    }

    #[test]
    fn text_lines_are_unescaped_trimmed_and_the_last_ending_dropped() {
        let sig = "-----BEGIN PGP SIGNATURE-----\n\nwsBc\n-----END PGP SIGNATURE-----\n";
        let doc = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nA: b  \t\n- -c\r\nlast \r\n{sig}"
        );
        let c = split_clearsigned(doc.as_bytes()).expect("plain shape");
        assert_eq!(c.text, b"A: b\n-c\r\nlast");
        assert_eq!(c.signature, [0xc2, 0xc0, 0x5c]);
    }

    #[test]
    fn unusual_shapes_are_left_to_sequoia() {
        let sig = "-----BEGIN PGP SIGNATURE-----\n\nwsBc\n-----END PGP SIGNATURE-----\n";
        let head = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n";
        for doc in [
            format!("junk\n{head}text\n{sig}"),
            format!("> {head}text\n{sig}"),
            format!("-----BEGIN PGP SIGNED MESSAGE-----\nComment: x\n\ntext\n{sig}"),
            format!("{head}--- not an escape\ntext\n{sig}"),
            format!("{head}\u{2010}\u{2010}\u{2010}BEGIN PGP SIGNATURE\ntext\n{sig}"),
            format!("{head}text\n{sig}trailing"),
            format!("{head}text\n"),
            format!("{head}{sig}"),
            format!("{head}text\n-----BEGIN PGP SIGNATURE-----\n\nwsBc\n=AAAA\n-----END PGP SIGNATURE-----\n"),
            format!("{head}text\n-----BEGIN PGP SIGNATURE-----\n\nws!c\n-----END PGP SIGNATURE-----\n"),
        ] {
            assert_eq!(split_clearsigned(doc.as_bytes()), None, "{doc:?}");
        }
        assert_eq!(dearmor_signature(format!(" {sig}").as_bytes()), None);
        assert_eq!(
            dearmor_signature(sig.as_bytes()),
            Some(vec![0xc2, 0xc0, 0x5c])
        );
    }

    #[test]
    fn lockstep_documents_take_the_fast_path() {
        let key = crate::signing::SigningKey::generate("t").expect("keygen");
        let text = b"Format: 1.0\nSource: hello\n- dashed\n";
        let doc = key.clearsign(text).expect("clearsign");
        let parts = split_clearsigned(&doc).expect("the signer's own shape is the plain one");
        assert_eq!(parts.text, text);
        let sig = key.sign_detached(text).expect("sign");
        assert!(dearmor_signature(sig.as_bytes()).is_some());
    }
}
