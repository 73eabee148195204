//! Reading Debian source control files (`.dsc`).
//!
//! The deb822 parsing is done by `deb822-fast`; this module strips an OpenPGP cleartext frame,
//! picks the fields Lockstep needs and validates them: every file named by `Checksums-Sha256`
//! must be a plain file name (no `/`, no `..`), so a hostile `.dsc` cannot point outside the
//! directory it is unpacked in.

use deb822_fast::Deb822;

use crate::digest::Sha256Digest;
use crate::v1::BuildKind;

/// Largest `.dsc` accepted.
pub const MAX_DSC_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DscError {
    #[error("not a Debian source control file: {0}")]
    Malformed(String),
    #[error("the .dsc has no {0} field")]
    MissingField(&'static str),
    #[error("unsafe file name in the .dsc: {0:?}")]
    UnsafeName(String),
}

/// One file listed in `Checksums-Sha256`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DscFile {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// The fields of a `.dsc` that Lockstep uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dsc {
    pub source: String,
    pub version: String,
    pub format: String,
    /// `Architecture:` words, e.g. `["any"]`, `["all"]`, `["any", "all"]`, `["amd64", "i386"]`.
    pub architecture: Vec<String>,
    pub files: Vec<DscFile>,
}

/// Removes an OpenPGP cleartext-signature frame if present (the text is then dash-unescaped).
/// The signature itself is not checked here: sources are trusted through apt's verified indices or
/// the operator who supplied them, and the `.dsc`'s digest is recorded in every statement.
pub fn strip_cleartext(text: &str) -> &str {
    const BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
    const SIG: &str = "\n-----BEGIN PGP SIGNATURE-----";
    let Some(rest) = text.trim_start().strip_prefix(BEGIN) else {
        return text;
    };
    // Armor headers ("Hash: SHA512") end at the first empty line.
    let body_start = match rest.find("\n\n") {
        Some(i) => i + 2,
        None => return "",
    };
    let body = &rest[body_start..];
    match body.find(SIG) {
        Some(end) => &body[..end + 1],
        None => body,
    }
}

/// Checks that a file name from an untrusted control file is a plain name.
pub fn check_file_name(name: &str) -> Result<(), DscError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\0')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._~:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DscError::UnsafeName(name.chars().take(100).collect()))
    }
}

/// Checks a source package name and version (Debian policy §5.6.1 and §5.6.12).
pub fn check_name_version(source: &str, version: &str) -> Result<(), DscError> {
    let name_ok = source.len() >= 2
        && source.len() <= 100
        && source.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !name_ok {
        return Err(DscError::Malformed(format!(
            "invalid source package name {source:?}"
        )));
    }
    let version_ok = !version.is_empty()
        && version.len() <= 200
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.~:".contains(&b));
    if !version_ok {
        return Err(DscError::Malformed(format!("invalid version {version:?}")));
    }
    Ok(())
}

/// Parses a `.dsc` (signed or not).
pub fn parse(bytes: &[u8]) -> Result<Dsc, DscError> {
    if bytes.len() > MAX_DSC_BYTES {
        return Err(DscError::Malformed(format!(
            "larger than {MAX_DSC_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DscError::Malformed("not UTF-8".into()))?;
    let body = strip_cleartext(text);
    let doc: Deb822 = body
        .parse()
        .map_err(|e| DscError::Malformed(format!("{e}")))?;
    let para = doc
        .iter()
        .next()
        .ok_or_else(|| DscError::Malformed("empty file".into()))?;
    let field = |name: &'static str| -> Result<String, DscError> {
        para.get(name)
            .map(|v| v.trim().to_string())
            .ok_or(DscError::MissingField(name))
    };
    let source = field("Source")?;
    let version = field("Version")?;
    check_name_version(&source, &version)?;
    let format = field("Format")?;
    let architecture: Vec<String> = field("Architecture")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut files = Vec::new();
    for line in field("Checksums-Sha256")?.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(sum), Some(size), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DscError::Malformed(format!(
                "bad Checksums-Sha256 line {line:?}"
            )));
        };
        check_file_name(name)?;
        files.push(DscFile {
            name: name.to_string(),
            size: size
                .parse()
                .map_err(|_| DscError::Malformed(format!("bad size in {line:?}")))?,
            sha256: sum
                .parse()
                .map_err(|e| DscError::Malformed(format!("{e}")))?,
        });
    }
    if files.is_empty() {
        return Err(DscError::Malformed(
            "Checksums-Sha256 lists no files".into(),
        ));
    }
    Ok(Dsc {
        source,
        version,
        format,
        architecture,
        files,
    })
}

/// The upstream part of a Debian version: no epoch, no Debian revision.
pub fn upstream_version(version: &str) -> &str {
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    no_epoch.rsplit_once('-').map_or(no_epoch, |(u, _)| u)
}

/// Jobs a source package needs on a build machine of `host_arch`: one `-B` job on the host
/// architecture when any binary is architecture-dependent, one `-A` job (arch `all`) when any
/// binary is `Architecture: all` — the way Debian's build daemons split them.
pub fn build_jobs(architecture: &[String], host_arch: &str) -> Vec<(String, BuildKind)> {
    let mut jobs = Vec::new();
    let arch_dep = architecture.iter().any(|a| {
        a == "any" || a == host_arch || a == &format!("linux-{host_arch}") || a == "linux-any"
    });
    if arch_dep {
        jobs.push((host_arch.to_string(), BuildKind::Any));
    }
    if architecture.iter().any(|a| a == "all") {
        jobs.push(("all".to_string(), BuildKind::All));
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA512

Format: 3.0 (quilt)
Source: hello
Binary: hello
Architecture: any
Version: 2.10-3
Checksums-Sha256:
 31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b 725946 hello_2.10.orig.tar.gz
 e2ab6b4bbb6c9d6e3ba1b0b4b5d0e6b1c2d1e6e25f4c0b8ab2f6d0b6a8c0e1f2 12688 hello_2.10-3.debian.tar.xz
Files:
 6cd0ffea3884a4e79330338dcc2987d6 725946 hello_2.10.orig.tar.gz
 27d1ee3f3a4b8bb8a4e9cb1d6f4b1d3c 12688 hello_2.10-3.debian.tar.xz

-----BEGIN PGP SIGNATURE-----

iQIzBAEBCgAdFiEE
-----END PGP SIGNATURE-----
";

    #[test]
    fn parses_signed_dsc() {
        let d = parse(HELLO.as_bytes()).expect("parses");
        assert_eq!(d.source, "hello");
        assert_eq!(d.version, "2.10-3");
        assert_eq!(d.architecture, vec!["any"]);
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.files[0].name, "hello_2.10.orig.tar.gz");
        assert_eq!(d.files[0].size, 725946);
    }

    #[test]
    fn refuses_path_traversal() {
        let evil = HELLO.replace("hello_2.10.orig.tar.gz\n F", "../../etc/passwd\n F");
        let evil = evil.replacen(
            " 725946 hello_2.10.orig.tar.gz",
            " 725946 ../../etc/passwd",
            1,
        );
        assert!(matches!(
            parse(evil.as_bytes()),
            Err(DscError::UnsafeName(_))
        ));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(b"hello world").is_err());
        assert!(parse(b"\xff\xfe").is_err());
        assert!(parse(b"Source: hello\nVersion: 1\n").is_err());
    }

    #[test]
    fn versions_and_jobs() {
        assert_eq!(upstream_version("2.10-3"), "2.10");
        assert_eq!(upstream_version("1:2.3.4-1.1"), "2.3.4");
        assert_eq!(upstream_version("1.0"), "1.0");
        assert_eq!(
            build_jobs(&["any".into(), "all".into()], "amd64"),
            vec![
                ("amd64".into(), BuildKind::Any),
                ("all".into(), BuildKind::All)
            ]
        );
        assert!(build_jobs(&["i386".into()], "amd64").is_empty());
    }
}
