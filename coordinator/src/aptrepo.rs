//! A signed apt repository of exactly what shipped.
//!
//! After a decision the repository is marked stale; it is regenerated off the attestation path
//! (by a background task shortly after, or before serving any `/apt/` request, whichever comes
//! first), from the latest decision per (source, version, arch):
//! - `dists/lockstep/main/binary-<arch>/Packages`: each shipped `.deb`'s control paragraph plus
//!   `Filename`, `Size`, `MD5sum` and `SHA256`;
//! - `dists/lockstep/Release` (with the SHA-256 of each index) and `InRelease`, clearsigned with the
//!   coordinator's key.
//!
//! Held, pending and failed packages are absent; a later hold removes a package from the next
//! index (the archive keeps everything). Pool files are not copied: `/apt/pool/...` streams the blob
//! named in the current index. A new generation is written to a fresh directory and swapped in with
//! a rename, so readers never see half an index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use lockstep_archive::Archive;
use lockstep_proto::digest::Sha256Digest;
use lockstep_proto::signing::SigningKey;
use lockstep_proto::v1::{Decision, State};
use md5::{Digest, Md5};

use crate::debfile;

/// Suite and codename of the repository.
pub const SUITE: &str = "lockstep";
/// The one component.
pub const COMPONENT: &str = "main";
/// How long the background task waits after a decision before regenerating, so a burst of
/// decisions costs one regeneration (reading every shipped package's control data) instead of
/// one each.
pub const REGENERATE_DEBOUNCE: Duration = Duration::from_millis(500);

/// The repository on disk plus the pool map of the current generation.
pub struct AptRepo {
    root: PathBuf,
    /// Pool path (`pool/main/h/hello/hello_1_amd64.deb`) → blob, for the generation being served.
    pool: RwLock<HashMap<String, Sha256Digest>>,
    /// Control paragraphs by blob digest (they never change for a given blob).
    controls: Mutex<HashMap<Sha256Digest, String>>,
    /// A decision was recorded since the last regeneration.
    stale: AtomicBool,
    /// Wakes the background regeneration task.
    wake: tokio::sync::Notify,
    /// One regeneration at a time.
    regen: Mutex<()>,
}

impl AptRepo {
    pub fn new(root: &Path) -> anyhow::Result<AptRepo> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the apt repository dir {}", root.display()))?;
        Ok(AptRepo {
            root: root.to_path_buf(),
            pool: RwLock::new(HashMap::new()),
            controls: Mutex::new(HashMap::new()),
            // Regenerate once after start: the decisions are in the archive, the pool map is not.
            stale: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
            regen: Mutex::new(()),
        })
    }

    /// Marks the repository stale and wakes the background task (cheap; callable anywhere).
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Waits until the repository was marked stale.
    pub async fn stale_notified(&self) {
        self.wake.notified().await;
    }

    /// Runs `regenerate` if the repository is stale (one caller at a time; the others wait and
    /// then find it fresh).
    pub fn refresh_if_stale(
        &self,
        regenerate: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let _one = self.regen.lock().unwrap_or_else(|p| p.into_inner());
        if !self.stale.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        regenerate().inspect_err(|_| {
            // Try again next time rather than serve an index that misses a decision silently.
            self.stale.store(true, Ordering::SeqCst);
        })
    }

    fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    /// A file under `dists/`, if it exists in the current generation. `rel` is checked: plain
    /// components only.
    pub fn dists_file(&self, rel: &str) -> Option<PathBuf> {
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\\'))
        {
            return None;
        }
        let p = self.current().join("dists").join(rel);
        p.is_file().then_some(p)
    }

    /// The blob behind a pool path of the current generation.
    pub fn pool_blob(&self, rel: &str) -> Option<Sha256Digest> {
        self.pool
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
            .copied()
    }

    /// Rebuilds the repository from the archive's decisions and swaps it in.
    /// `awaiting_witness(leaf)` says whether a ship decision recorded at that log leaf must still
    /// wait for a witness cosignature (policy `require_witness`); such packages stay out.
    pub fn regenerate(
        &self,
        archive: &Archive,
        key: &SigningKey,
        host_arch: &str,
        awaiting_witness: &dyn Fn(u64) -> bool,
    ) -> anyhow::Result<()> {
        // Latest decision per (source, version, arch), in log order.
        let mut latest: BTreeMap<(String, String, String), Decision> = BTreeMap::new();
        let mut undecodable = None;
        archive.each_record_of_kind(crate::service::kind::DECISION, |r| {
            let d: Decision = match serde_json::from_slice(&r.body) {
                Ok(d) => d,
                Err(e) => {
                    undecodable.get_or_insert((r.id, e));
                    return Ok(());
                }
            };
            let key = (d.source.clone(), d.version.clone(), d.arch.clone());
            if d.state == State::Ship && awaiting_witness(r.leaf_index) {
                latest.remove(&key);
            } else {
                latest.insert(key, d);
            }
            Ok(())
        })?;
        if let Some((id, e)) = undecodable {
            anyhow::bail!("decoding stored decision record {id}: {e}");
        }
        let mut archs: BTreeSet<String> = BTreeSet::new();
        archs.insert(host_arch.to_string());
        for (_, _, a) in latest.keys() {
            if a != "all" {
                archs.insert(a.clone());
            }
        }
        let mut indices: BTreeMap<String, String> =
            archs.iter().map(|a| (a.clone(), String::new())).collect();
        let mut pool = HashMap::new();
        for ((source, _, arch), d) in &latest {
            if d.state != State::Ship {
                continue;
            }
            for art in &d.artifacts {
                if !art.name.ends_with(".deb") {
                    continue; // .udeb/.ddeb belong in other indices
                }
                let blob = archive
                    .blob_path(&art.sha256)
                    .with_context(|| format!("shipped artifact {} missing", art.name))?;
                let control = self.control_of(&art.sha256, &blob)?;
                let (md5, size) = md5_file(&blob)?;
                let filename = format!(
                    "pool/{COMPONENT}/{}/{source}/{}",
                    pool_prefix(source),
                    art.name
                );
                let mut stanza = control.trim_end().to_string();
                stanza.push_str(&format!(
                    "\nFilename: {filename}\nSize: {size}\nMD5sum: {md5}\nSHA256: {}\n\n",
                    art.sha256.to_hex()
                ));
                pool.insert(filename, art.sha256);
                for (a, text) in indices.iter_mut() {
                    if arch == "all" || arch == a {
                        text.push_str(&stanza);
                    }
                }
            }
        }
        // Write the new generation.
        let next = tempfile::Builder::new()
            .prefix("gen-")
            .tempdir_in(&self.root)
            .context("creating a new repository generation")?;
        let dists = next.path().join("dists").join(SUITE);
        let mut sums = String::new();
        for (arch, text) in &indices {
            let rel = format!("{COMPONENT}/binary-{arch}/Packages");
            let path = dists.join(&rel);
            std::fs::create_dir_all(path.parent().context("index has a parent")?)?;
            std::fs::write(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            sums.push_str(&format!(
                " {} {} {rel}\n",
                Sha256Digest::of(text.as_bytes()).to_hex(),
                text.len()
            ));
        }
        let release = format!(
            "Origin: Lockstep\nLabel: Lockstep\nSuite: {SUITE}\nCodename: {SUITE}\nDate: {}\n\
             Architectures: {}\nComponents: {COMPONENT}\n\
             Description: binaries a quorum of independent builders agreed on\nSHA256:\n{sums}",
            chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S UTC"),
            archs.iter().cloned().collect::<Vec<_>>().join(" "),
        );
        std::fs::write(dists.join("Release"), release.as_bytes())?;
        let inrelease = key
            .clearsign(release.as_bytes())
            .context("clearsigning InRelease")?;
        std::fs::write(dists.join("InRelease"), inrelease)?;
        let sig = key
            .sign_detached(release.as_bytes())
            .context("signing Release.gpg")?;
        std::fs::write(dists.join("Release.gpg"), sig)?;
        // Swap: rename the old generation away, the new one in, then drop the old.
        let next = next.keep();
        let current = self.current();
        let old = self.root.join(format!("old-{}", uuid::Uuid::new_v4()));
        if current.exists() {
            std::fs::rename(&current, &old).context("retiring the previous generation")?;
        }
        std::fs::rename(&next, &current).context("publishing the new generation")?;
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = pool;
        if old.exists() {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    fn control_of(&self, sha: &Sha256Digest, blob: &Path) -> anyhow::Result<String> {
        if let Some(c) = self
            .controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha)
        {
            return Ok(c.clone());
        }
        let c = debfile::read_control(blob)
            .with_context(|| format!("reading the control file of blob {sha}"))?;
        // Guard the index against paragraph injection: no blank lines inside a paragraph.
        let c: String = c
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*sha, c.clone());
        Ok(c)
    }
}

/// Debian's pool layout: `lib` packages by their first four letters, others by the first.
pub fn pool_prefix(source: &str) -> String {
    if source.starts_with("lib") && source.len() > 3 {
        source.chars().take(4).collect()
    } else {
        source.chars().take(1).collect()
    }
}

fn md5_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_prefix_follows_debian() {
        assert_eq!(pool_prefix("hello"), "h");
        assert_eq!(pool_prefix("libfoo"), "libf");
        assert_eq!(pool_prefix("lib"), "l");
    }
}
