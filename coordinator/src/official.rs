//! The distribution's own binaries as evidence (issue 8).
//!
//! For a job, the coordinator downloads the `.deb`s the distribution published for that source,
//! version and architecture (through apt with the private configuration), and then checks the
//! chain itself, independently of apt:
//!
//! 1. the `InRelease` file of the suite verifies with `gpgv` against the keyrings the machine's
//!    apt sources name (`Signed-By`, `/etc/apt/trusted.gpg.d`);
//! 2. the SHA-256 of the (decompressed) `Packages` index is the one `InRelease` lists for it;
//! 3. the `.deb`'s SHA-256 and size are the ones its paragraph in that index lists.
//!
//! Only then are the `.deb`s stored and recorded as an assertion by the identity
//! [`DISTRIBUTION`], with the `InRelease` kept as a blob and the index digest and paragraph kept in
//! the record, so anyone can re-check the chain later. Such a record is never a builder vote.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use lockstep_proto::digest::{Hasher, Sha256Digest};
use lockstep_proto::v1::{Job, OfficialComparison};
use serde::{Deserialize, Serialize};

/// The identity official binaries are recorded under.
pub const DISTRIBUTION: &str = "distribution-archive";
/// Record kind of official-binary evidence.
pub const KIND: &str = "official";

/// One official binary package and the chain that vouches for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficialDeb {
    pub package: String,
    pub version: String,
    pub arch: String,
    /// The `.deb` file name as a builder produces it (`name_version_arch.deb`, no epoch).
    pub name: String,
    pub sha256: Sha256Digest,
    pub size: u64,
    /// Path of the index relative to the suite (`main/binary-amd64/Packages`).
    pub index: String,
    /// SHA-256 of the decompressed index, as listed in `InRelease`.
    pub index_sha256: Sha256Digest,
    /// SHA-256 of the `InRelease` file (stored as a blob).
    pub inrelease_sha256: Sha256Digest,
    /// The package's paragraph in the index.
    pub paragraph: String,
}

/// Body of an `official` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficialEvidence {
    pub schema: String,
    pub source: String,
    pub version: String,
    pub arch: String,
    pub debs: Vec<OfficialDeb>,
    pub fetched_at: DateTime<Utc>,
}

impl OfficialEvidence {
    pub const SCHEMA: &'static str = "lockstep.official/v1";
}

/// A paragraph found in an index, with where it was found.
#[derive(Clone, Debug)]
pub struct Found {
    pub lists_file: PathBuf,
    pub index_sha256: Sha256Digest,
    pub paragraph: String,
    pub fields: BTreeMap<String, String>,
}

/// Splits a lists file name (`host_path_dists_SUITE_main_binary-amd64_Packages.lz4`) into the
/// `InRelease` file next to it and the index path relative to the suite.
pub fn index_location(lists_file: &Path) -> Option<(PathBuf, String)> {
    let name = lists_file.file_name()?.to_str()?;
    let pos = name.find("_dists_")?;
    let rest = &name[pos + "_dists_".len()..];
    let (suite, index) = rest.split_once('_')?;
    let inrelease = lists_file.with_file_name(format!("{}_dists_{suite}_InRelease", &name[..pos]));
    let index = index
        .trim_end_matches(".lz4")
        .trim_end_matches(".gz")
        .trim_end_matches(".xz")
        .replace('_', "/");
    Some((inrelease, index))
}

/// Streams a (possibly compressed) lists file through apt's own decompressor.
fn open_index(path: &Path) -> anyhow::Result<std::process::Child> {
    Command::new("/usr/lib/apt/apt-helper")
        .arg("cat-file")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("decompressing {} with apt-helper", path.display()))
}

/// Scans the binary `Packages` indices under `lists` for paragraphs of `source`/`version` whose
/// architecture is `arch` (for `all` jobs: `all`; otherwise the host architecture), hashing each
/// index while reading it.
pub fn find_binaries(
    lists: &Path,
    source: &str,
    version: &str,
    arch: &str,
) -> anyhow::Result<Vec<Found>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(lists)
        .with_context(|| format!("listing {}", lists.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("_binary-") && n.contains("_Packages"))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut child = open_index(&f)?;
        let stdout = child.stdout.take().context("apt-helper has no stdout")?;
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let mut hasher = Hasher::new();
        let mut para = String::new();
        let mut matches = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).context("reading an index")?;
            if n > 0 {
                hasher.update(line.as_bytes());
            }
            if n == 0 || line == "\n" {
                if !para.is_empty() {
                    if let Some(fields) = paragraph_matches(&para, source, version, arch) {
                        matches.push((para.clone(), fields));
                    }
                    para.clear();
                }
                if n == 0 {
                    break;
                }
                continue;
            }
            para.push_str(&line);
        }
        let status = child.wait().context("waiting for apt-helper")?;
        if !status.success() {
            bail!("apt-helper could not read {}", f.display());
        }
        let (digest, _) = hasher.finish();
        for (paragraph, fields) in matches {
            out.push(Found {
                lists_file: f.clone(),
                index_sha256: digest,
                paragraph,
                fields,
            });
        }
    }
    Ok(out)
}

/// Parses a paragraph cheaply and returns its fields when it is a binary of `source`/`version`
/// for `arch`.
fn paragraph_matches(
    para: &str,
    source: &str,
    version: &str,
    arch: &str,
) -> Option<BTreeMap<String, String>> {
    // Fast reject before building a map: the source name must appear.
    if !para.contains(source) {
        return None;
    }
    let mut fields = BTreeMap::new();
    for l in para.lines() {
        if l.starts_with(' ') || l.starts_with('\t') {
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            fields.insert(k.to_string(), v.trim().to_string());
        }
    }
    let package = fields.get("Package")?;
    let pkg_version = fields.get("Version")?;
    // "Source: name" or "Source: name (version)" when the binary version differs.
    let (src, src_version) = match fields.get("Source") {
        Some(s) => match s.split_once(' ') {
            Some((n, v)) => (
                n.to_string(),
                v.trim_matches(|c| c == '(' || c == ')').to_string(),
            ),
            None => (s.clone(), pkg_version.clone()),
        },
        None => (package.clone(), pkg_version.clone()),
    };
    let a = fields.get("Architecture")?;
    if src == source && src_version == version && a == arch {
        Some(fields)
    } else {
        None
    }
}

/// Checks that `InRelease` is validly signed by one of `keyrings` (with `gpgv`) and lists
/// `index_sha256` for `index`.
pub fn check_inrelease(
    inrelease: &Path,
    keyrings: &[PathBuf],
    index: &str,
    index_sha256: &Sha256Digest,
) -> anyhow::Result<()> {
    let mut cmd = Command::new("gpgv");
    for k in keyrings {
        cmd.arg("--keyring").arg(k);
    }
    let out = cmd
        .arg(inrelease)
        .output()
        .context("running gpgv (install gpgv)")?;
    if !out.status.success() {
        bail!(
            "{} does not verify with the distribution's keyring: {}",
            inrelease.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = std::fs::read_to_string(inrelease)
        .with_context(|| format!("reading {}", inrelease.display()))?;
    let mut in_sha256 = false;
    for l in text.lines() {
        if l.starts_with("SHA256:") {
            in_sha256 = true;
            continue;
        }
        if !l.starts_with(' ') {
            in_sha256 = false;
            continue;
        }
        if in_sha256 {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() == 3 && w[2] == index {
                if w[0].eq_ignore_ascii_case(&index_sha256.to_hex()) {
                    return Ok(());
                }
                bail!(
                    "{index}: its SHA-256 {} is not the {} that the signed InRelease lists",
                    index_sha256,
                    w[0]
                );
            }
        }
    }
    bail!("{index} is not listed in {}", inrelease.display())
}

/// Checks a downloaded `.deb` against its paragraph's `SHA256` and `Size`.
pub fn check_deb(
    deb: &Path,
    fields: &BTreeMap<String, String>,
) -> anyhow::Result<(Sha256Digest, u64)> {
    let (digest, size) = lockstep_proto::digest::hash_file(deb)
        .with_context(|| format!("hashing {}", deb.display()))?;
    let want: Sha256Digest = fields
        .get("SHA256")
        .context("the index paragraph has no SHA256")?
        .parse()
        .context("the index paragraph's SHA256")?;
    let want_size: u64 = fields
        .get("Size")
        .context("the index paragraph has no Size")?
        .parse()
        .context("the index paragraph's Size")?;
    if digest != want || size != want_size {
        bail!(
            "{}: SHA-256 {digest} ({size} bytes) is not what the signed index lists ({want}, {want_size} bytes): refusing it as an official binary",
            deb.display()
        );
    }
    Ok((digest, size))
}

/// The keyrings the machine's apt sources trust.
pub fn system_keyrings(signed_by: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = signed_by
        .iter()
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/trusted.gpg.d") {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "gpg") {
                out.push(p);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The `.deb` file name builders produce for a package: `name_version-without-epoch_arch.deb`.
pub fn deb_name(package: &str, version: &str, arch: &str) -> String {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    format!("{package}_{v}_{arch}.deb")
}

impl crate::service::Service {
    /// Downloads the distribution's binaries of a job, checks the chain, and records them as an
    /// `official` assertion; then re-evaluates the package. Returns how many `.deb`s were recorded
    /// (0 when the distribution publishes none for this source, version and architecture).
    pub async fn record_official(self: std::sync::Arc<Self>, job: Job) -> anyhow::Result<usize> {
        let existing =
            self.archive
                .records_for(&job.source, &job.version, &job.arch, Some(KIND))?;
        if !existing.is_empty() {
            return Ok(0); // already recorded for this (source, version, arch)
        }
        let lists = self.apt.lists_dir();
        let (source, version, arch) = (job.source.clone(), job.version.clone(), job.arch.clone());
        let found =
            tokio::task::spawn_blocking(move || find_binaries(&lists, &source, &version, &arch))
                .await
                .context("index scan task")??;
        if found.is_empty() {
            tracing::info!(source = %job.source, version = %job.version, arch = %job.arch, "the distribution publishes no binaries for this job");
            return Ok(0);
        }
        let scratch = tempfile::Builder::new()
            .prefix("official-")
            .tempdir_in(self.cfg.data_dir.join("scratch"))
            .context("creating a scratch directory")?;
        let keyrings = self.apt.keyrings();
        let mut debs: Vec<OfficialDeb> = Vec::new();
        let mut blobs = Vec::new();
        for f in found {
            let package = f.fields.get("Package").cloned().unwrap_or_default();
            let pkg_version = f.fields.get("Version").cloned().unwrap_or_default();
            let pkg_arch = f.fields.get("Architecture").cloned().unwrap_or_default();
            if debs
                .iter()
                .any(|d| d.package == package && d.version == pkg_version)
            {
                continue; // listed by two suites (e.g. bookworm and bookworm-updates)
            }
            let Some((inrelease, index)) = index_location(&f.lists_file) else {
                tracing::warn!(file = %f.lists_file.display(), "cannot tell which InRelease covers this index");
                continue;
            };
            if let Err(e) = check_inrelease(&inrelease, &keyrings, &index, &f.index_sha256) {
                tracing::error!(error = %format!("{e:#}"), "official chain check failed: refusing");
                continue;
            }
            let dir = scratch.path().join(&package);
            std::fs::create_dir_all(&dir).context("scratch")?;
            let spec = if pkg_arch == "all" {
                format!("{package}={pkg_version}")
            } else {
                format!("{package}:{pkg_arch}={pkg_version}")
            };
            let deb = self.apt.download_binary(&spec, &dir).await?;
            let (sha256, size) = match check_deb(&deb, &f.fields) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "official chain check failed: refusing");
                    continue;
                }
            };
            let archive = self.archive.clone();
            let max = self.cfg.max_blob_bytes;
            let (deb2, inr2) = (deb.clone(), inrelease.clone());
            let inrelease_sha256 =
                tokio::task::spawn_blocking(move || -> anyhow::Result<Sha256Digest> {
                    // One batch: two file-system syncs and one commit for both files.
                    let items = [
                        (Some(sha256), std::fs::File::open(&deb2)?),
                        (None, std::fs::File::open(&inr2)?),
                    ];
                    Ok(archive.put_blobs(items, max)?[1].digest)
                })
                .await
                .context("storing official binaries")??;
            let name = deb_name(&package, &pkg_version, &pkg_arch);
            blobs.push(lockstep_archive::BlobLink {
                role: "official".into(),
                name: name.clone(),
                sha256,
                size,
            });
            blobs.push(lockstep_archive::BlobLink {
                role: "inrelease".into(),
                name: inrelease
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("InRelease")
                    .to_string(),
                sha256: inrelease_sha256,
                size: std::fs::metadata(&inrelease).map(|m| m.len()).unwrap_or(0),
            });
            debs.push(OfficialDeb {
                package,
                version: pkg_version,
                arch: pkg_arch,
                name,
                sha256,
                size,
                index,
                index_sha256: f.index_sha256,
                inrelease_sha256,
                paragraph: f.paragraph,
            });
        }
        if debs.is_empty() {
            return Ok(0);
        }
        blobs.sort_by(|a, b| (&a.role, &a.name).cmp(&(&b.role, &b.name)));
        blobs.dedup_by(|a, b| a.role == b.role && a.name == b.name && a.sha256 == b.sha256);
        let evidence = OfficialEvidence {
            schema: OfficialEvidence::SCHEMA.into(),
            source: job.source.clone(),
            version: job.version.clone(),
            arch: job.arch.clone(),
            debs,
            fetched_at: Utc::now(),
        };
        let n = evidence.debs.len();
        let body = serde_json::to_vec(&evidence)?;
        let svc = self.clone();
        let key = (job.source.clone(), job.version.clone(), job.arch.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            svc.archive.append_record(lockstep_archive::NewRecord {
                kind: KIND.into(),
                source: key.0.clone(),
                version: key.1.clone(),
                arch: key.2.clone(),
                job_id: None,
                signer: Some(DISTRIBUTION.into()),
                dedup_key: Some(format!("official:{}:{}:{}", key.0, key.1, key.2)),
                body,
                signature: None,
                blobs,
            })?;
            svc.archive.checkpoint()?;
            svc.evaluate(&key.0, &key.1, &key.2)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        })
        .await
        .context("recording official binaries")??;
        tracing::info!(source = %job.source, version = %job.version, arch = %job.arch, debs = n, "official binaries recorded (chain checked)");
        Ok(n)
    }
}

/// Compares the outcome with the distribution's binaries recorded among `records`, and holds a
/// shipping package when they differ and the policy says so.
pub fn apply(
    policy: &lockstep_proto::policy::Policy,
    records: &[lockstep_archive::Record],
    mut outcome: lockstep_proto::quorum::Outcome,
) -> (lockstep_proto::quorum::Outcome, Option<OfficialComparison>) {
    use lockstep_proto::v1::{OfficialArtifact, OfficialVerdict, State};
    let Some(rec) = records.iter().rev().find(|r| r.kind == KIND) else {
        return (outcome, None);
    };
    let Ok(ev) = serde_json::from_slice::<OfficialEvidence>(&rec.body) else {
        return (outcome, None);
    };
    let disagree = outcome.state == State::Hold
        && outcome.artifacts.is_empty()
        && !outcome.dissenters.is_empty();
    let verdict_and_artifacts = if disagree {
        (OfficialVerdict::BuildersDisagree, Vec::new())
    } else if outcome.artifacts.is_empty() {
        (OfficialVerdict::Pending, Vec::new())
    } else {
        let mut arts = Vec::new();
        let mut all_identical = true;
        for d in &ev.debs {
            let rebuilt = outcome
                .artifacts
                .iter()
                .find(|a| a.name == d.name)
                .map(|a| a.sha256);
            let result = match rebuilt {
                Some(r) if r == d.sha256 => "identical",
                Some(_) => "differs",
                None => "not-rebuilt",
            };
            all_identical &= result == "identical";
            arts.push(OfficialArtifact {
                name: d.name.clone(),
                official: Some(d.sha256),
                rebuilt,
                result: result.into(),
            });
        }
        for a in &outcome.artifacts {
            if !ev.debs.iter().any(|d| d.name == a.name) {
                arts.push(OfficialArtifact {
                    name: a.name.clone(),
                    official: None,
                    rebuilt: Some(a.sha256),
                    result: "not-published".into(),
                });
            }
        }
        arts.sort_by(|a, b| a.name.cmp(&b.name));
        let v = if all_identical && !ev.debs.is_empty() {
            OfficialVerdict::Reproduces
        } else {
            OfficialVerdict::OfficialDiffers
        };
        (v, arts)
    };
    let (verdict, artifacts) = verdict_and_artifacts;
    if verdict == OfficialVerdict::OfficialDiffers
        && policy.official_mismatch_holds
        && outcome.state == State::Ship
    {
        let differing: Vec<&str> = artifacts
            .iter()
            .filter(|a| a.result == "differs" || a.result == "not-rebuilt")
            .map(|a| a.name.as_str())
            .collect();
        outcome.state = State::Hold;
        outcome.reason = format!(
            "builders agree, but the distribution's binaries differ ({}); policy official_mismatch = \"hold\"",
            differing.join(", ")
        );
    }
    (outcome, Some(OfficialComparison { verdict, artifacts }))
}

/// Starts fetching the official binaries of newly created jobs in the background.
pub fn spawn_for_jobs(svc: &std::sync::Arc<crate::service::Service>, job_ids: Vec<String>) {
    for id in job_ids {
        let svc = svc.clone();
        tokio::spawn(async move {
            let job = match svc.jobs.get(&id) {
                Ok(Some(row)) => row.job,
                _ => return,
            };
            if let Err(e) = svc.clone().record_official(job).await {
                tracing::warn!(job = %id, error = %format!("{e:#}"), "could not record the distribution's binaries");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_names_map_to_inrelease_and_index() {
        let (inr, idx) = index_location(Path::new(
            "/x/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4",
        ))
        .expect("parses");
        assert_eq!(
            inr,
            Path::new("/x/deb.debian.org_debian_dists_bookworm_InRelease")
        );
        assert_eq!(idx, "main/binary-amd64/Packages");
    }

    #[test]
    fn paragraphs_match_by_source_version_and_arch() {
        let p = "Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nSHA256: ab\nSize: 3\n";
        assert!(paragraph_matches(p, "hello", "2.10-3", "amd64").is_some());
        assert!(paragraph_matches(p, "hello", "2.10-2", "amd64").is_none());
        assert!(paragraph_matches(p, "hello", "2.10-3", "all").is_none());
        let p = "Package: libfoo1\nSource: foo (1.0-1)\nVersion: 1.0-1+b1\nArchitecture: amd64\n";
        assert!(paragraph_matches(p, "foo", "1.0-1", "amd64").is_some());
        assert_eq!(
            deb_name("hello", "1:2.0-1", "amd64"),
            "hello_2.0-1_amd64.deb"
        );
    }

    #[test]
    fn a_deb_that_differs_from_its_paragraph_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = dir.path().join("x.deb");
        std::fs::write(&deb, b"official bytes").expect("write");
        let mut fields = BTreeMap::new();
        fields.insert(
            "SHA256".to_string(),
            Sha256Digest::of(b"official bytes").to_hex(),
        );
        fields.insert("Size".to_string(), "14".to_string());
        check_deb(&deb, &fields).expect("matches");
        std::fs::write(&deb, b"official byteZ").expect("tamper");
        let e = check_deb(&deb, &fields).expect_err("tampered");
        assert!(e.to_string().contains("refusing"), "{e}");
    }
}
