//! Mismatch evidence for one (source, version, arch): which builders produced which bytes for
//! each artifact name and, for `.deb`s whose bytes differ, which members, files and control fields
//! differ (via [`crate::debfile`]). When `diffoscope` is installed it runs with a time limit and an
//! output cap; its report is stored as a blob and as an immutable `diff-report` record, so it is
//! evidence in the transparency log too, and linked from the diff by its SHA-256.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lockstep_archive::{BlobLink, NewRecord};
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::v1::Statement;
use serde::Serialize;

use crate::debfile::{self, Contents, FileEntry, Member};
use crate::service::{kind, Service, ServiceError};

/// Record kind of a stored diffoscope report.
pub const DIFF_REPORT: &str = "diff-report";
/// diffoscope on two `hello` .debs takes ~9 s here; two minutes covers large packages without
/// letting one request hold a worker thread indefinitely.
pub const DIFFOSCOPE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest diffoscope report kept; longer output is cut with a marker.
pub const DIFFOSCOPE_MAX_REPORT: u64 = 4 * 1024 * 1024;
/// Largest `.deb` that is copied for diffoscope.
pub const DIFFOSCOPE_MAX_INPUT: u64 = 512 * 1024 * 1024;

/// A builder, by fingerprint and (when trusted) policy name.
#[derive(Clone, Debug, Serialize)]
pub struct BuilderId {
    pub fingerprint: String,
    pub name: Option<String>,
}

/// One distinct content produced for an artifact name.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    pub sha256: Sha256Digest,
    pub size: u64,
    pub builders: Vec<BuilderId>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberDiff {
    pub name: String,
    pub a: Option<Member>,
    pub b: Option<Member>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FieldDiff {
    pub field: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileDiff {
    /// `control` or `data`.
    pub member: &'static str,
    pub path: String,
    pub a: Option<FileEntry>,
    pub b: Option<FileEntry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diffoscope {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub truncated: bool,
    pub record_leaf: u64,
}

/// Comparison of two variants of one `.deb`.
#[derive(Clone, Debug, Serialize)]
pub struct DebDiff {
    pub a: Sha256Digest,
    pub b: Sha256Digest,
    pub members: Vec<MemberDiff>,
    pub control_fields: Vec<FieldDiff>,
    pub files: Vec<FileDiff>,
    pub notes: Vec<String>,
    /// SHA-256 of the archived diffoscope report (a blob; `GET /api/v1/blobs/{sha256}`).
    pub diffoscope_report: Option<Sha256Digest>,
    pub diffoscope: Option<Diffoscope>,
    /// Why the packages could not be compared in detail.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArtifactDiff {
    pub name: String,
    /// Every builder produced the same bytes.
    pub agree: bool,
    /// Most builders first.
    pub variants: Vec<Variant>,
    /// Each other variant compared with the first.
    pub comparisons: Vec<DebDiff>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub source: String,
    pub version: String,
    pub arch: String,
    pub artifacts: Vec<ArtifactDiff>,
}

/// Builds the diff for one (source, version, arch) from the archived attestations.
pub fn diff(
    svc: &Service,
    source: &str,
    version: &str,
    arch: &str,
) -> Result<DiffReport, ServiceError> {
    let policy = svc.policy();
    let records = svc
        .archive
        .records_for(source, version, arch, Some(kind::ATTESTATION))?;
    if records.is_empty() {
        return Err(ServiceError::NotFound(format!(
            "no attestations for {source} {version} {arch}: nothing to compare (check the name, version and arch with `lockstep status`)"
        )));
    }
    // name -> sha256 -> (size, builders)
    let mut by_name: BTreeMap<String, BTreeMap<Sha256Digest, (u64, Vec<BuilderId>)>> =
        BTreeMap::new();
    for r in &records {
        let st: Statement =
            serde_json::from_slice(&r.body).context("decoding a stored statement")?;
        let fpr = r.signer.clone().unwrap_or_default();
        for a in &st.artifacts {
            let e = by_name
                .entry(a.name.clone())
                .or_default()
                .entry(a.sha256)
                .or_insert((a.size, Vec::new()));
            if !e.1.iter().any(|b| b.fingerprint == fpr) {
                e.1.push(BuilderId {
                    fingerprint: fpr.clone(),
                    name: policy.builder(&fpr).map(|b| b.name.clone()),
                });
            }
        }
    }
    // The distribution's published binaries (chain-checked) are one more variant to compare.
    for r in svc
        .archive
        .records_for(source, version, arch, Some(crate::official::KIND))?
    {
        let ev: crate::official::OfficialEvidence =
            serde_json::from_slice(&r.body).context("decoding stored official evidence")?;
        for d in ev.debs {
            let e = by_name
                .entry(d.name.clone())
                .or_default()
                .entry(d.sha256)
                .or_insert((d.size, Vec::new()));
            if !e
                .1
                .iter()
                .any(|b| b.fingerprint == crate::official::DISTRIBUTION)
            {
                e.1.push(BuilderId {
                    fingerprint: crate::official::DISTRIBUTION.into(),
                    name: Some("the distribution's published binary".into()),
                });
            }
        }
    }
    let scratch = svc.cfg.data_dir.join("scratch");
    let mut artifacts = Vec::new();
    for (name, shas) in by_name {
        let mut variants: Vec<Variant> = shas
            .into_iter()
            .map(|(sha256, (size, builders))| Variant {
                sha256,
                size,
                builders,
            })
            .collect();
        variants.sort_by_key(|v| std::cmp::Reverse(v.builders.len()));
        let mut comparisons = Vec::new();
        if name.ends_with(".deb") || name.ends_with(".udeb") || name.ends_with(".ddeb") {
            for other in variants.iter().skip(1) {
                comparisons.push(compare_debs(
                    svc,
                    (source, version, arch),
                    &name,
                    variants[0].sha256,
                    other.sha256,
                    &scratch,
                ));
            }
        }
        artifacts.push(ArtifactDiff {
            agree: variants.len() == 1,
            name,
            variants,
            comparisons,
        });
    }
    Ok(DiffReport {
        source: source.into(),
        version: version.into(),
        arch: arch.into(),
        artifacts,
    })
}

fn compare_debs(
    svc: &Service,
    key: (&str, &str, &str),
    name: &str,
    a: Sha256Digest,
    b: Sha256Digest,
    scratch: &Path,
) -> DebDiff {
    let mut d = DebDiff {
        a,
        b,
        members: Vec::new(),
        control_fields: Vec::new(),
        files: Vec::new(),
        notes: Vec::new(),
        diffoscope_report: None,
        diffoscope: None,
        error: None,
    };
    let (Some(pa), Some(pb)) = (svc.archive.blob_path(&a), svc.archive.blob_path(&b)) else {
        d.error = Some("one of the two packages is missing from the archive".into());
        return d;
    };
    let limits = debfile::Limits::default();
    match (
        debfile::read_deb(&pa, limits),
        debfile::read_deb(&pb, limits),
    ) {
        (Ok(ca), Ok(cb)) => fill_structural(&mut d, &ca, &cb),
        (ea, eb) => {
            d.error = Some(format!(
                "cannot open the packages: {}",
                [ea.err(), eb.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        }
    }
    match diffoscope_evidence(svc, key, name, (a, &pa), (b, &pb), scratch) {
        Ok(Some((sha, info))) => {
            d.diffoscope_report = Some(sha);
            d.diffoscope = Some(info);
        }
        Ok(None) => d
            .notes
            .push("diffoscope is not installed; no report".into()),
        Err(e) => d.notes.push(format!("diffoscope: {e:#}")),
    }
    d
}

fn fill_structural(d: &mut DebDiff, a: &Contents, b: &Contents) {
    let names: std::collections::BTreeSet<&String> = a
        .members
        .iter()
        .chain(&b.members)
        .map(|m| &m.name)
        .collect();
    for n in names {
        let ma = a.members.iter().find(|m| &m.name == n);
        let mb = b.members.iter().find(|m| &m.name == n);
        if ma != mb {
            d.members.push(MemberDiff {
                name: n.clone(),
                a: ma.cloned(),
                b: mb.cloned(),
            });
        }
    }
    let fa = debfile::control_fields(a.control.as_deref().unwrap_or_default());
    let fb = debfile::control_fields(b.control.as_deref().unwrap_or_default());
    let mut fields: Vec<&String> = fa.iter().chain(&fb).map(|(k, _)| k).collect();
    fields.sort();
    fields.dedup();
    for f in fields {
        let va = fa.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
        let vb = fb.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
        if va != vb {
            d.control_fields.push(FieldDiff {
                field: f.clone(),
                a: va,
                b: vb,
            });
        }
    }
    diff_files(&mut d.files, "control", &a.control_files, &b.control_files);
    diff_files(&mut d.files, "data", &a.data_files, &b.data_files);
    d.notes.extend(a.notes.iter().map(|n| format!("a: {n}")));
    d.notes.extend(b.notes.iter().map(|n| format!("b: {n}")));
}

fn diff_files(out: &mut Vec<FileDiff>, member: &'static str, a: &[FileEntry], b: &[FileEntry]) {
    let ma: BTreeMap<&str, &FileEntry> = a.iter().map(|f| (f.path.as_str(), f)).collect();
    let mb: BTreeMap<&str, &FileEntry> = b.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut paths: Vec<&str> = ma.keys().chain(mb.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    for p in paths {
        let (x, y) = (ma.get(p).copied(), mb.get(p).copied());
        if x != y {
            out.push(FileDiff {
                member,
                path: p.to_string(),
                a: x.cloned(),
                b: y.cloned(),
            });
        }
    }
}

/// Runs diffoscope once per pair (the report is stored and found again by its dedup key).
fn diffoscope_evidence(
    svc: &Service,
    (source, version, arch): (&str, &str, &str),
    name: &str,
    (a, pa): (Sha256Digest, &Path),
    (b, pb): (Sha256Digest, &Path),
    scratch: &Path,
) -> anyhow::Result<Option<(Sha256Digest, Diffoscope)>> {
    let dedup = format!("diff-report:{name}:{a}:{b}");
    for r in svc
        .archive
        .records_for(source, version, arch, Some(DIFF_REPORT))?
    {
        if r.dedup_key.as_deref() == Some(dedup.as_str()) {
            let info: serde_json::Value = serde_json::from_slice(&r.body)?;
            let sha: Sha256Digest = serde_json::from_value(info["report_sha256"].clone())?;
            return Ok(Some((
                sha,
                Diffoscope {
                    exit_code: info["exit_code"].as_i64().map(|c| c as i32),
                    timed_out: info["timed_out"].as_bool().unwrap_or(false),
                    truncated: info["truncated"].as_bool().unwrap_or(false),
                    record_leaf: r.leaf_index,
                },
            )));
        }
    }
    let Some(run) = run_diffoscope(name, pa, pb, scratch)? else {
        return Ok(None);
    };
    let put = svc
        .archive
        .put_blob(None, &run.report[..], DIFFOSCOPE_MAX_REPORT + 1024)
        .context("storing the diffoscope report")?;
    let body = serde_json::to_vec(&serde_json::json!({
        "schema": "lockstep.diff-report/v1",
        "artifact": name,
        "a": a,
        "b": b,
        "tool": "diffoscope --text",
        "exit_code": run.exit_code,
        "timed_out": run.timed_out,
        "truncated": run.truncated,
        "report_sha256": put.digest,
        "report_size": put.size,
    }))?;
    let signature = svc.key.sign_detached(&body)?;
    let rec = svc.archive.append_record(NewRecord {
        kind: DIFF_REPORT.into(),
        source: source.into(),
        version: version.into(),
        arch: arch.into(),
        job_id: None,
        signer: Some(svc.key.fingerprint()),
        dedup_key: Some(dedup),
        body,
        signature: Some(signature.into_bytes()),
        blobs: vec![BlobLink {
            role: "diffoscope".into(),
            name: format!("{name}.diffoscope.txt"),
            sha256: put.digest,
            size: put.size,
        }],
    })?;
    svc.archive.checkpoint()?;
    Ok(Some((
        put.digest,
        Diffoscope {
            exit_code: run.exit_code,
            timed_out: run.timed_out,
            truncated: run.truncated,
            record_leaf: rec.leaf_index,
        },
    )))
}

struct Run {
    report: Vec<u8>,
    exit_code: Option<i32>,
    timed_out: bool,
    truncated: bool,
}

/// `diffoscope --text -` on copies named like the artifact; `None` when it is not installed.
fn run_diffoscope(name: &str, pa: &Path, pb: &Path, scratch: &Path) -> anyhow::Result<Option<Run>> {
    std::fs::create_dir_all(scratch).context("creating the scratch dir")?;
    let dir = tempfile::tempdir_in(scratch).context("creating a diffoscope work dir")?;
    let mut inputs: Vec<PathBuf> = Vec::new();
    for (tag, src) in [("a", pa), ("b", pb)] {
        if std::fs::metadata(src)?.len() > DIFFOSCOPE_MAX_INPUT {
            anyhow::bail!("package larger than {DIFFOSCOPE_MAX_INPUT} bytes; not compared");
        }
        std::fs::create_dir(dir.path().join(tag))?;
        // The artifact name was checked at upload (no '/' or '..'); still, only its file name.
        let file = Path::new(name)
            .file_name()
            .context("artifact has no file name")?;
        let dst = dir.path().join(tag).join(file);
        std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        inputs.push(dst);
    }
    let out_path = dir.path().join("report.txt");
    let out = std::fs::File::create(&out_path)?;
    let spawned = Command::new("diffoscope")
        .arg("--text")
        .arg("-")
        .arg("--max-report-size")
        .arg(DIFFOSCOPE_MAX_REPORT.to_string())
        .arg("--no-progress")
        .args(&inputs)
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("starting diffoscope"),
    };
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() > DIFFOSCOPE_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut report = Vec::new();
    std::fs::File::open(&out_path)?
        .take(DIFFOSCOPE_MAX_REPORT)
        .read_to_end(&mut report)?;
    let truncated = std::fs::metadata(&out_path)?.len() > DIFFOSCOPE_MAX_REPORT;
    if truncated {
        report.extend_from_slice(b"\n[lockstep: report truncated at the size cap]\n");
    }
    if timed_out {
        report.extend_from_slice(
            format!("\n[lockstep: diffoscope stopped after {DIFFOSCOPE_TIMEOUT:?}]\n").as_bytes(),
        );
    }
    Ok(Some(Run {
        report,
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        truncated,
    }))
}
