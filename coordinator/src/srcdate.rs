//! When a source package was uploaded: the date of the first entry of its `debian/changelog`.
//!
//! The Sources index carries no dates, and a mirror's `Last-Modified` header is neither always sent
//! nor the same on every mirror. The changelog's first trailer line (` -- Name <mail>  Date`) is
//! what `dpkg-buildpackage` itself takes `SOURCE_DATE_EPOCH` from, it is inside the signed chain
//! (InRelease → Sources checksum → file), and it is the same wherever the source is fetched. The
//! changelog is read from the smallest file that holds it: the `.debian.tar.*` of a `3.0 (quilt)`
//! source, the `.diff.gz` of a `1.0` one, or the one tarball of a native package.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

/// Largest file downloaded only to read its changelog (a native package's whole tarball).
pub const MAX_DATING_FILE: u64 = 64 << 20;

/// Largest changelog read (the first entry is at the top; long histories are cut).
const MAX_CHANGELOG: u64 = 1 << 20;

/// One file of a source package as `apt-get source --print-uris` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub url: String,
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256, when apt printed one.
    pub sha256: Option<String>,
}

/// Parses `apt-get source --print-uris` output:
/// `'http://host/pool/main/h/hello/hello_2.10-3.dsc' hello_2.10-3.dsc 1847 SHA256:…`.
pub fn parse_print_uris(out: &str) -> Vec<SourceFile> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('\'')?;
            let (url, rest) = rest.split_once('\'')?;
            let mut words = rest.split_whitespace();
            let name = words.next()?.to_string();
            let size = words.next()?.parse().ok()?;
            let sha256 = words
                .find_map(|w| w.strip_prefix("SHA256:"))
                .map(|h| h.to_ascii_lowercase());
            Some(SourceFile {
                url: url.to_string(),
                name,
                size,
                sha256,
            })
        })
        .collect()
}

/// The file whose `debian/changelog` dates the upload, or why there is none.
pub fn dating_file(files: &[SourceFile]) -> anyhow::Result<&SourceFile> {
    let is_debian =
        |f: &&SourceFile| f.name.contains(".debian.tar.") || f.name.ends_with(".diff.gz");
    if let Some(f) = files.iter().find(is_debian) {
        return Ok(f);
    }
    // A native package: one tarball, no orig.
    let tars: Vec<&SourceFile> = files
        .iter()
        .filter(|f| f.name.contains(".tar.") || f.name.ends_with(".tar"))
        .filter(|f| !f.name.contains(".orig"))
        .collect();
    match tars.as_slice() {
        [one] => Ok(one),
        [] => bail!("the source names no debian tarball, diff or native tarball"),
        _ => bail!(
            "the source names several tarballs and no debian part: {}",
            tars.iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Reads `debian/changelog` out of a downloaded dating file (named as in the source package).
pub fn read_changelog(path: &Path, name: &str) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if name.ends_with(".diff.gz") {
        return changelog_from_diff(BufReader::new(flate2::read::GzDecoder::new(file)))
            .with_context(|| format!("{name}: reading debian/changelog from the diff"));
    }
    let reader: Box<dyn Read> = if name.ends_with(".tar") {
        Box::new(file)
    } else if name.ends_with(".tar.gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if name.ends_with(".tar.xz") {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(file))
    } else if name.ends_with(".tar.bz2") {
        bail!("{name}: bzip2 tarballs are not read; the upload cannot be dated")
    } else if name.ends_with(".tar.zst") {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(file)
                .map_err(|e| anyhow::anyhow!("{name}: zstd: {e}"))?,
        )
    } else {
        bail!("{name}: not a tarball or diff this reader knows")
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar
        .entries()
        .with_context(|| format!("{name}: reading tar"))?
    {
        let entry = entry.with_context(|| format!("{name}: bad tar entry"))?;
        let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let p = p.trim_start_matches("./");
        // debian/changelog in a .debian.tar, <dir>/debian/changelog in a native tarball.
        let depth_ok = p == "debian/changelog"
            || p.strip_suffix("/debian/changelog")
                .is_some_and(|top| !top.is_empty() && !top.contains('/'));
        if depth_ok && entry.header().entry_type().is_file() {
            let mut text = String::new();
            entry
                .take(MAX_CHANGELOG)
                .read_to_string(&mut text)
                .with_context(|| format!("{name}: debian/changelog is not UTF-8 text"))?;
            return Ok(text);
        }
    }
    bail!("{name}: holds no debian/changelog")
}

/// The added lines of `debian/changelog` in a unified diff (format 1.0 sources).
fn changelog_from_diff(diff: impl BufRead) -> anyhow::Result<String> {
    let mut inside = false;
    let mut text = String::new();
    for line in diff.lines() {
        let line = line.context("the diff is not text")?;
        if let Some(target) = line.strip_prefix("+++ ") {
            if inside {
                break;
            }
            let target = target.split('\t').next().unwrap_or(target);
            inside = target.ends_with("/debian/changelog");
            continue;
        }
        if !inside {
            continue;
        }
        if line.starts_with("--- ") || line.starts_with("diff ") {
            break;
        }
        if let Some(added) = line.strip_prefix('+') {
            text.push_str(added);
            text.push('\n');
            if text.len() as u64 > MAX_CHANGELOG {
                break;
            }
        }
    }
    if text.is_empty() {
        bail!("the diff does not add debian/changelog");
    }
    Ok(text)
}

/// The date of the first changelog entry: its trailer line ` -- Name <mail>  Date`.
pub fn changelog_date(changelog: &str) -> anyhow::Result<DateTime<Utc>> {
    let trailer = changelog
        .lines()
        .find(|l| l.starts_with(" -- "))
        .context("debian/changelog has no trailer line (\" -- Name <mail>  Date\")")?;
    let date = trailer
        .rsplit_once(">  ")
        .map(|(_, d)| d.trim())
        .with_context(|| format!("no date after the maintainer in {trailer:?}"))?;
    Ok(DateTime::parse_from_rfc2822(date)
        .with_context(|| format!("the changelog date {date:?} is not an RFC 2822 date"))?
        .with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGELOG: &str = "hello (2.10-3) unstable; urgency=medium\n\n  * Fix.\n\n \
        -- Santiago Vila <sanvila@debian.org>  Mon, 09 Jan 2023 17:06:56 +0100\n\n\
        hello (2.10-2) unstable; urgency=low\n\n  * Old.\n\n \
        -- Santiago Vila <sanvila@debian.org>  Sun, 01 Mar 2020 12:00:00 +0100\n";

    #[test]
    fn the_first_trailer_dates_the_upload() {
        let d = changelog_date(CHANGELOG).expect("dated");
        assert_eq!(d.to_rfc3339(), "2023-01-09T16:06:56+00:00");
        let e = changelog_date("hello (1) x; urgency=low\n\n  * a\n").expect_err("refused");
        assert!(e.to_string().contains("no trailer"), "{e}");
        let e = changelog_date(" -- A <a@b>  yesterday\n").expect_err("refused");
        assert!(e.to_string().contains("RFC 2822"), "{e}");
    }

    #[test]
    fn print_uris_lines_are_parsed_and_the_debian_part_chosen() {
        let out = "Need to get 1 kB of source archives.\n\
            'http://m.invalid/pool/main/h/hello/hello_2.10-3.dsc' hello_2.10-3.dsc 1847 SHA256:AB12\n\
            'http://m.invalid/pool/main/h/hello/hello_2.10.orig.tar.gz' hello_2.10.orig.tar.gz 725946 SHA256:cd\n\
            'http://m.invalid/pool/main/h/hello/hello_2.10-3.debian.tar.xz' hello_2.10-3.debian.tar.xz 12688 SHA256:ef\n";
        let files = parse_print_uris(out);
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].sha256.as_deref(), Some("ab12"));
        assert_eq!(
            dating_file(&files).expect("works").name,
            "hello_2.10-3.debian.tar.xz"
        );
        let native = parse_print_uris(
            "'u/x_1.dsc' x_1.dsc 10 SHA256:aa\n'u/x_1.tar.xz' x_1.tar.xz 99 SHA256:bb\n",
        );
        assert_eq!(dating_file(&native).expect("works").name, "x_1.tar.xz");
        let none = parse_print_uris("'u/x_1.dsc' x_1.dsc 10 SHA256:aa\n");
        assert!(dating_file(&none).is_err());
    }

    #[test]
    fn changelogs_are_read_from_tarballs_and_diffs() {
        let dir = tempfile::tempdir().expect("works");
        // A debian tarball and a native one, gzip-compressed.
        for (name, path) in [
            ("p_1-1.debian.tar.gz", "debian/changelog"),
            ("p_1.tar.gz", "p-1/debian/changelog"),
        ] {
            let f = std::fs::File::create(dir.path().join(name)).expect("works");
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            // A nested package's changelog first: it must not be taken.
            for (p, body) in [("p-1/sub/debian/changelog", "wrong"), (path, CHANGELOG)] {
                let mut h = tar::Header::new_gnu();
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, p, body.as_bytes()).expect("works");
            }
            b.into_inner().expect("works").finish().expect("works");
            let text = read_changelog(&dir.path().join(name), name).expect("works");
            assert_eq!(text, CHANGELOG, "{name}");
        }
        // A 1.0 diff.
        let diff = format!(
            "--- p-1.orig/src/a.c\n+++ p-1/src/a.c\n@@ -1 +1 @@\n-a\n+b\n\
             --- p-1.orig/debian/changelog\n+++ p-1/debian/changelog\n@@ -0,0 +1,9 @@\n{}\
             --- p-1.orig/debian/rules\n+++ p-1/debian/rules\n@@ -0,0 +1 @@\n+#!/usr/bin/make -f\n",
            CHANGELOG
                .lines()
                .map(|l| format!("+{l}\n"))
                .collect::<String>()
        );
        let path = dir.path().join("p_1-1.diff.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).expect("works"),
            flate2::Compression::fast(),
        );
        std::io::Write::write_all(&mut gz, diff.as_bytes()).expect("works");
        gz.finish().expect("works");
        let text = read_changelog(&path, "p_1-1.diff.gz").expect("works");
        assert_eq!(text, CHANGELOG);
        assert!(read_changelog(&path, "p_1-1.rar").is_err());
    }
}
