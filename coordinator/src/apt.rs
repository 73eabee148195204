//! Fetching source packages through apt with a private configuration.
//!
//! The private configuration copies the machine's configured apt sources (never a hard-coded
//! mirror) with `Types: deb deb-src`, and keeps its own lists and cache under the data dir, so the
//! system's apt state is never touched. apt verifies the chain (InRelease signature → Sources
//! checksums → files); this module then parses the `.dsc` and checks every file against it again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use tokio::process::Command;
use tokio::sync::Mutex;

/// Longest an apt invocation may run (an index update on a slow mirror).
pub const APT_TIMEOUT: Duration = Duration::from_secs(600);

/// One entry of the system's apt sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
}

/// Reads deb822 `.sources` files and one-line `.list` files (directories are scanned).
pub fn read_system_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceEntry>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "sources" || x == "list"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else if p.exists() {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        if f.extension().is_some_and(|x| x == "sources") {
            out.extend(
                parse_deb822_sources(&text).with_context(|| format!("parsing {}", f.display()))?,
            );
        } else {
            out.extend(parse_one_line_sources(&text));
        }
    }
    // Keep only binary-archive entries ("deb"); deb-src is what we add.
    out.dedup();
    if out.is_empty() {
        bail!(
            "no apt sources found in {}; configure the machine's apt sources first",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

fn parse_deb822_sources(text: &str) -> anyhow::Result<Vec<SourceEntry>> {
    let doc: deb822_fast::Deb822 = text
        .parse()
        .map_err(|e| anyhow::anyhow!("not deb822: {e}"))?;
    let mut out = Vec::new();
    for p in doc.iter() {
        let words = |k: &str| -> Vec<String> {
            p.get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if p.get("Enabled").is_some_and(|v| v.trim() == "no") {
            continue;
        }
        if !words("Types").iter().any(|t| t == "deb") {
            continue;
        }
        let e = SourceEntry {
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            signed_by: p.get("Signed-By").map(|s| s.trim().to_string()),
        };
        if !e.uris.is_empty() && !e.suites.is_empty() {
            out.push(e);
        }
    }
    Ok(out)
}

fn parse_one_line_sources(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            if let Some((o, r)) = opts.split_once(']') {
                for kv in o.split_whitespace() {
                    if let Some(v) = kv.strip_prefix("signed-by=") {
                        signed_by = Some(v.to_string());
                    }
                }
                rest = r.trim();
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(SourceEntry {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
        });
    }
    out
}

/// Renders the private sources file: the system's entries with `deb deb-src`.
pub fn render_private_sources(entries: &[SourceEntry]) -> String {
    let mut s = String::from("# Written by lockstep-coordinator from the machine's apt sources.\n");
    for e in entries {
        s.push_str("\nTypes: deb deb-src\n");
        s.push_str(&format!("URIs: {}\n", e.uris.join(" ")));
        s.push_str(&format!("Suites: {}\n", e.suites.join(" ")));
        if !e.components.is_empty() {
            s.push_str(&format!("Components: {}\n", e.components.join(" ")));
        }
        if let Some(k) = &e.signed_by {
            // Multi-line inline keys are continued with a leading space per deb822.
            let folded = k.lines().collect::<Vec<_>>().join("\n ");
            s.push_str(&format!("Signed-By: {folded}\n"));
        }
    }
    s
}

/// A downloaded source package.
#[derive(Debug)]
pub struct Fetched {
    /// Directory holding the `.dsc` and its files.
    pub dir: tempfile::TempDir,
    pub dsc_path: PathBuf,
    /// apt's description of where the source came from (`<uri> <suite>/<component>`).
    pub origin: String,
}

/// The private apt configuration and its lock.
pub struct Apt {
    root: PathBuf,
    refresh: Duration,
    lock: Mutex<()>,
    /// `Signed-By` keyrings of the machine's sources (for checking `InRelease` ourselves).
    signed_by: Vec<String>,
}

impl Apt {
    /// Prepares `root` (lists, cache, sources) from the system's sources.
    pub fn new(root: &Path, system_sources: &[PathBuf], refresh: Duration) -> anyhow::Result<Apt> {
        let entries = read_system_sources(system_sources)?;
        for d in [
            "sources.list.d",
            "lists/partial",
            "cache/archives/partial",
            "preferences.d",
        ] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        std::fs::write(
            root.join("sources.list.d/lockstep.sources"),
            render_private_sources(&entries),
        )
        .context("writing the private apt sources")?;
        std::fs::write(root.join("status"), b"").context("writing the private dpkg status")?;
        Ok(Apt {
            root: root.to_path_buf(),
            refresh,
            lock: Mutex::new(()),
            signed_by: entries.iter().filter_map(|e| e.signed_by.clone()).collect(),
        })
    }

    fn base_args(&self) -> Vec<String> {
        let r = self.root.display();
        vec![
            "-q".into(),
            "-o".into(),
            "Dir::Etc::SourceList=/dev/null".into(),
            "-o".into(),
            format!("Dir::Etc::SourceParts={r}/sources.list.d"),
            "-o".into(),
            format!("Dir::Etc::Preferences={r}/preferences"),
            "-o".into(),
            format!("Dir::Etc::PreferencesParts={r}/preferences.d"),
            "-o".into(),
            format!("Dir::State::Lists={r}/lists"),
            "-o".into(),
            format!("Dir::State::status={r}/status"),
            "-o".into(),
            format!("Dir::Cache={r}/cache"),
            "-o".into(),
            "Debug::NoLocking=1".into(),
            "-o".into(),
            "APT::Sandbox::User=root".into(),
            "-o".into(),
            "Acquire::Retries=3".into(),
        ]
    }

    async fn run(&self, args: &[String], cwd: &Path) -> anyhow::Result<String> {
        let mut cmd = Command::new("apt-get");
        cmd.args(self.base_args())
            .args(args)
            .current_dir(cwd)
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .kill_on_drop(true);
        let out = tokio::time::timeout(APT_TIMEOUT, cmd.output())
            .await
            .context("apt-get timed out")?
            .context("running apt-get (is apt installed?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg: Vec<&str> = stderr.lines().filter(|l| l.starts_with("E:")).collect();
            let msg = if msg.is_empty() {
                stderr.lines().last().unwrap_or("").to_string()
            } else {
                msg.join(" ")
            };
            bail!("apt-get {} failed: {}", args.join(" "), msg.trim());
        }
        Ok(stdout)
    }

    /// Refreshes the indices when they are older than the refresh interval.
    pub async fn update_if_stale(&self) -> anyhow::Result<()> {
        let stamp = self.root.join("lists/.lockstep-updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < self.refresh);
        if fresh {
            return Ok(());
        }
        self.run(&["update".into()], &self.root).await?;
        std::fs::write(&stamp, b"").context("stamping the apt update")?;
        Ok(())
    }

    /// Downloads `spec` (`name` or `name=version`) into a new temporary directory.
    pub async fn fetch_source(&self, spec: &str, scratch: &Path) -> anyhow::Result<Fetched> {
        validate_spec(spec)?;
        let _guard = self.lock.lock().await;
        self.update_if_stale().await?;
        let dir = tempfile::Builder::new()
            .prefix("fetch-")
            .tempdir_in(scratch)
            .context("creating a scratch directory")?;
        let out = self
            .run(
                &["source".into(), "--download-only".into(), spec.into()],
                dir.path(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{spec}: {e:#}"))?;
        let origin = out
            .lines()
            .find(|l| l.starts_with("Get:") && l.contains("(dsc)"))
            .map(|l| {
                // "Get:1 http://host/debian bookworm/main hello 2.10-3 (dsc) [1,847 B]"
                let w: Vec<&str> = l.split_whitespace().collect();
                format!(
                    "apt {} {}",
                    w.get(1).unwrap_or(&""),
                    w.get(2).unwrap_or(&"")
                )
            })
            .unwrap_or_else(|| "apt (already downloaded)".into());
        let dsc_path = std::fs::read_dir(dir.path())
            .context("listing downloaded source")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "dsc"))
            .ok_or_else(|| anyhow::anyhow!("{spec}: apt downloaded no .dsc"))?;
        Ok(Fetched {
            dir,
            dsc_path,
            origin,
        })
    }
}

impl Apt {
    /// Directory of the downloaded indices.
    pub fn lists_dir(&self) -> PathBuf {
        self.root.join("lists")
    }

    /// Keyrings the machine's sources trust.
    pub fn keyrings(&self) -> Vec<PathBuf> {
        crate::official::system_keyrings(&self.signed_by)
    }

    /// When a source package was uploaded: the date of the first entry of its `debian/changelog`
    /// (see [`crate::srcdate`]). The file holding the changelog is downloaded from the mirror
    /// apt would use and checked against the signed Sources index's size and SHA-256 first.
    /// Dates never change for a (source, version), so each is kept under `<apt root>/dates/`.
    pub async fn uploaded_at(&self, spec: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        validate_spec(spec)?;
        let cache = self.root.join("dates").join(spec.replace(':', "%3a"));
        if let Some(t) = std::fs::read_to_string(&cache)
            .ok()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
        {
            return Ok(t.with_timezone(&chrono::Utc));
        }
        let out = {
            let _guard = self.lock.lock().await;
            self.update_if_stale().await?;
            self.run(
                &["source".into(), "--print-uris".into(), spec.into()],
                &self.root,
            )
            .await?
        };
        let files = crate::srcdate::parse_print_uris(&out);
        let file = crate::srcdate::dating_file(&files).with_context(|| spec.to_string())?;
        if file.size > crate::srcdate::MAX_DATING_FILE {
            bail!(
                "{spec}: {} is {} bytes, above the {} byte limit for dating an upload",
                file.name,
                file.size,
                crate::srcdate::MAX_DATING_FILE
            );
        }
        let expected = file
            .sha256
            .clone()
            .with_context(|| format!("{spec}: apt gives no SHA-256 for {}", file.name))?;
        let tmp = tempfile::tempdir_in(&self.root).context("creating a download dir")?;
        let path = tmp.path().join("dating-file");
        let got = Command::new("curl")
            .args(["-sf", "--max-time", "300", "-o"])
            .arg(&path)
            .arg(&file.url)
            .kill_on_drop(true)
            .output()
            .await
            .context("running curl (install curl)")?;
        if !got.status.success() {
            bail!("{spec}: the mirror did not serve {}", file.url);
        }
        let name = file.name.clone();
        let expected_size = file.size;
        let date = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let (digest, size) = lockstep_proto::digest::hash_file(&path)
                .with_context(|| format!("hashing {name}"))?;
            if digest.to_hex() != expected {
                bail!("{name}: SHA-256 {digest} does not match the Sources index ({expected}); refused");
            }
            if size != expected_size {
                bail!("{name}: {size} bytes where the Sources index says {expected_size}; refused");
            }
            let changelog = crate::srcdate::read_changelog(&path, &name)?;
            crate::srcdate::changelog_date(&changelog).with_context(|| name.to_string())
        })
        .await
        .context("dating task")?
        .with_context(|| format!("{spec}: dating the upload"))?;
        if let Some(dir) = cache.parent() {
            let _ = std::fs::create_dir_all(dir);
            let mut part = cache.clone().into_os_string();
            part.push(".part");
            if std::fs::write(&part, date.to_rfc3339()).is_ok() {
                let _ = std::fs::rename(&part, &cache);
            }
        }
        Ok(date)
    }

    /// Downloads one binary package (`name:arch=version` or `name=version`) into `dir` and returns
    /// the file. apt checks it against the index; the caller checks the chain again itself.
    pub async fn download_binary(&self, spec: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        let _guard = self.lock.lock().await;
        self.update_if_stale().await?;
        self.run(&["download".into(), spec.into()], dir)
            .await
            .map_err(|e| anyhow::anyhow!("{spec}: {e:#}"))?;
        let name = spec.split([':', '=']).next().unwrap_or(spec);
        std::fs::read_dir(dir)
            .context("listing the download")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| anyhow::anyhow!("{spec}: apt downloaded no .deb"))
    }
}

/// Refuses package specs that could be read as apt options or paths.
pub fn validate_spec(spec: &str) -> anyhow::Result<()> {
    let (name, version) = match spec.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    lockstep_proto::dsc::check_name_version(name, version.unwrap_or("0"))
        .map_err(|e| anyhow::anyhow!("{spec:?} is not a package name or name=version: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_source_formats() {
        let d822 =
            "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
                    Types: deb-src\nURIs: http://x.invalid\nSuites: s\n";
        let e = parse_deb822_sources(d822).expect("parses");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].suites, vec!["bookworm", "bookworm-updates"]);
        let one = "deb [signed-by=/k.gpg arch=amd64] http://m.invalid/debian bookworm main contrib # c\n# deb x y\n";
        let e = parse_one_line_sources(one);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(e[0].components, vec!["main", "contrib"]);
        let r = render_private_sources(&e);
        assert!(r.contains("Types: deb deb-src"));
        assert!(r.contains("URIs: http://m.invalid/debian"));
    }

    #[test]
    fn specs_are_validated() {
        assert!(validate_spec("hello").is_ok());
        assert!(validate_spec("hello=2.10-3").is_ok());
        assert!(validate_spec("-oDir=/").is_err());
        assert!(validate_spec("../x").is_err());
        assert!(validate_spec("hello=").is_err());
    }
}
