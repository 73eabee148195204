//! Whole suites (issue 8): list the sources of a suite from the private apt indices, enqueue
//! them in the background, and summarise how much of what was checked reproduces the
//! distribution's published binaries, by suite and architecture.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use lockstep_proto::v1::{OfficialVerdict, State};
use serde::{Deserialize, Serialize};

use crate::service::Service;

/// Body of `POST /api/v1/jobs/suite`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SuiteRequest {
    pub suite: String,
    /// Only sources of this section (`misc`, `utils`, `contrib/net`, …).
    pub section: Option<String>,
    /// At most this many sources (in index order).
    pub limit: Option<usize>,
    /// Only sources uploaded on or after this date (the date of the first `debian/changelog`
    /// entry; checked in the background, one small download per candidate, cached).
    pub since: Option<chrono::NaiveDate>,
    #[serde(default)]
    pub rebuild: bool,
}

/// One source of a suite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteSource {
    pub package: String,
    pub version: String,
    pub section: String,
}

/// Lists the sources of `suite` from the `Sources` indices under `lists` (every component).
pub fn list_sources(
    lists: &Path,
    suite: &str,
    section: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<Vec<SuiteSource>> {
    if suite.is_empty()
        || !suite
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        bail!("{suite:?} is not a suite name");
    }
    let marker = format!("_dists_{suite}_");
    let mut files: Vec<_> = std::fs::read_dir(lists)
        .with_context(|| format!("listing {}", lists.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(&marker) && n.contains("_source_Sources"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "the configured apt sources have no suite {suite:?} (look at /etc/apt/sources.list.d; \
             the coordinator's indices are refreshed on the next enqueue)"
        );
    }
    let mut out: Vec<SuiteSource> = Vec::new();
    for f in files {
        let mut child = Command::new("/usr/lib/apt/apt-helper")
            .arg("cat-file")
            .arg(&f)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("decompressing {}", f.display()))?;
        let stdout = child.stdout.take().context("apt-helper has no stdout")?;
        let (mut pkg, mut ver, mut sec, mut extra) = (None, None, String::new(), false);
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading a Sources index")?;
            if line.is_empty() {
                if let (Some(p), Some(v)) = (pkg.take(), ver.take()) {
                    let keep = !extra && section.is_none_or(|s| s == sec);
                    if keep && !out.iter().any(|o: &SuiteSource| o.package == p) {
                        out.push(SuiteSource {
                            package: p,
                            version: v,
                            section: sec.clone(),
                        });
                    }
                }
                sec.clear();
                extra = false;
                if limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("Package: ") {
                pkg = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                ver = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Section: ") {
                sec = v.trim().to_string();
            } else if line.starts_with("Extra-Source-Only: yes") {
                extra = true;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok(out)
}

/// Enqueues the listed sources one after the other in the background. With `since`, sources
/// published before that date are skipped and at most `limit` are enqueued.
pub fn spawn_enqueue(
    svc: Arc<Service>,
    sources: Vec<SuiteSource>,
    rebuild: bool,
    since: Option<chrono::NaiveDate>,
    limit: Option<usize>,
) {
    tokio::spawn(async move {
        let total = sources.len();
        let mut failed = 0usize;
        let mut enqueued = 0usize;
        for (i, s) in sources.into_iter().enumerate() {
            if limit.is_some_and(|l| enqueued >= l) {
                break;
            }
            let spec = format!("{}={}", s.package, s.version);
            if let Some(day) = since {
                match svc.apt.uploaded_at(&spec).await {
                    Ok(t) if t.date_naive() >= day => {}
                    Ok(t) => {
                        tracing::debug!(%spec, published = %t, "suite enqueue: uploaded before --since; skipped");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(%spec, error = %format!("{e:#}"), "suite enqueue: upload date unknown; skipped");
                        continue;
                    }
                }
            }
            enqueued += 1;
            let resp = svc.enqueue(std::slice::from_ref(&spec), rebuild).await;
            for e in &resp.errors {
                failed += 1;
                tracing::warn!(package = %e.package, error = %e.error, "suite enqueue: package skipped");
            }
            crate::official::spawn_for_jobs(
                &svc,
                resp.jobs
                    .iter()
                    .filter(|j| j.created)
                    .map(|j| j.job_id.clone())
                    .collect(),
            );
            if (i + 1) % 100 == 0 {
                tracing::info!(done = i + 1, total, failed, "suite enqueue progress");
            }
        }
        tracing::info!(total, enqueued, failed, "suite enqueue finished");
    });
}

/// One row of the reproducibility summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub suite: String,
    pub arch: String,
    pub packages: usize,
    /// Builders agree and every published binary is byte-for-byte what they built.
    pub reproduces: usize,
    /// Builders agree, but the published binaries differ.
    pub official_differs: usize,
    pub builders_disagree: usize,
    /// Rebuilt, but the distribution publishes no binaries to compare with.
    pub no_official: usize,
    pub pending: usize,
    pub failed: usize,
    /// `reproduces` / (`reproduces` + `official_differs`), in percent.
    pub reproducible_percent: Option<f64>,
}

/// The suite a job's source came from, from its origin (`apt <uri> <suite>/<component>`).
pub fn suite_of(origin: &str) -> String {
    origin
        .strip_prefix("apt ")
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("local")
        .to_string()
}

/// Summarises every package by suite and architecture.
pub fn summary(svc: &Service) -> anyhow::Result<Vec<SummaryRow>> {
    let mut rows: BTreeMap<(String, String), SummaryRow> = BTreeMap::new();
    for st in svc.status(None).map_err(|e| anyhow::anyhow!("{e}"))? {
        let origin = st
            .job_ids
            .last()
            .and_then(|id| svc.jobs.get(id).ok().flatten())
            .map(|r| r.job.origin)
            .unwrap_or_default();
        let suite = suite_of(&origin);
        let row = rows
            .entry((suite.clone(), st.arch.clone()))
            .or_insert_with(|| SummaryRow {
                suite,
                arch: st.arch.clone(),
                ..Default::default()
            });
        row.packages += 1;
        match (st.state, st.official.as_ref().map(|o| o.verdict)) {
            (State::Failed, _) => row.failed += 1,
            (_, Some(OfficialVerdict::Reproduces)) => row.reproduces += 1,
            (_, Some(OfficialVerdict::OfficialDiffers)) => row.official_differs += 1,
            (_, Some(OfficialVerdict::BuildersDisagree)) => row.builders_disagree += 1,
            (State::Hold, None) => row.builders_disagree += 1,
            (State::Pending, _) => row.pending += 1,
            (State::Ship, _) => row.no_official += 1,
            (State::Hold, Some(OfficialVerdict::Pending)) => row.pending += 1,
        }
    }
    Ok(rows
        .into_values()
        .map(|mut r| {
            let checked = r.reproduces + r.official_differs;
            r.reproducible_percent =
                (checked > 0).then(|| 100.0 * r.reproduces as f64 / checked as f64);
            r
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_comes_from_the_origin_line() {
        assert_eq!(
            suite_of("apt http://m.invalid/debian bookworm/main"),
            "bookworm"
        );
        assert_eq!(
            suite_of("apt http://m.invalid/debian-security bookworm-security/main"),
            "bookworm-security"
        );
        assert_eq!(suite_of("local upload (lockstep enqueue --dsc)"), "local");
    }

    #[test]
    fn bad_suite_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(list_sources(dir.path(), "../x", None, None).is_err());
        let e = list_sources(dir.path(), "nosuch", None, None).expect_err("no suite");
        assert!(e.to_string().contains("no suite"), "{e}");
    }
}
