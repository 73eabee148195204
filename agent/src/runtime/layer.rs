//! The deps step's changes as an image layer the agent loads itself, instead of `docker commit`
//! (issue 7, P2).
//!
//! With Docker's `fuse-overlayfs` storage driver a commit is a "naive diff": Docker mounts the
//! container's tree and the image's tree through FUSE and walks both in full — about 13,000
//! files for the build image — before it archives the few that differ. On this machine kind that
//! took 6–12 s per job, even for a container that changed nothing. The deps container knows
//! better what changed:
//!
//! 1. Before its first change it touches a marker. Every path whose ctime is newer afterwards is
//!    one the install created or changed: the kernel sets ctime on every write, chmod, chown,
//!    link and rename, and no program can set it back. The container archives exactly those
//!    paths (`layer.tar`) and lists every path it still has, with its type (`after`).
//! 2. What the install deleted is what the image has and `after` lacks. The image's own listing
//!    is made once per image by a listing container (network `none`, read-only root, nothing but
//!    `find`) that runs beside the first job's deps step, and is then kept in memory.
//! 3. The agent appends a whiteout (`.wh.<name>`, Docker's layer format) for each deleted path
//!    and streams a `docker save` archive to `POST /images/load`: the new layer, an image config
//!    naming the image's layers plus this one, and a manifest. Docker finds the image's layers
//!    already present and applies only the new one.
//!
//! Mount points are left out of both listings and of the layer, as a commit leaves out what is
//! mounted. Whatever goes wrong here, the caller falls back to `docker commit` and logs why.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use lockstep_proto::v1::ImageRef;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{docker_error, ContainerRole, Exit};
use super::logs::CappedLog;
use super::{spec, tail_text, Runtime, RuntimeError, ERROR_LOG_TAIL};

/// The archive of changed paths, written by the deps container.
const LAYER_TAR: &str = "layer.tar";
/// Written by the deps container after `layer.tar` and `after` are complete.
const LAYER_OK: &str = "layer.ok";
/// Every path the deps container has after the install: `<find %y type><path>` NUL-terminated.
const AFTER: &str = "after";
/// The listing container's output: every path of the image, NUL-terminated.
const BASE: &str = "base";
/// Written by the listing container after `base` is complete.
const BASE_OK: &str = "base.ok";
/// Largest listing the agent reads (a million paths take about 80 MB).
const MAX_LISTING_BYTES: u64 = 512 << 20;
/// Bytes of the listing container's output kept for an error message.
const LISTING_LOG_CAP: usize = 16 << 10;
/// Size of the chunks the image archive is streamed to Docker in.
const CHUNK: usize = 1 << 20;

/// Every path of one image, as `find . -print0` names them (`./usr/bin/x`).
pub(crate) struct BaseListing {
    paths: HashSet<Box<[u8]>>,
}

impl BaseListing {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut paths = HashSet::new();
        for path in records(bytes)? {
            if !path.starts_with(b"./") {
                return Err(format!(
                    "listing entry {:?} does not start with ./",
                    String::from_utf8_lossy(path)
                ));
            }
            paths.insert(path.into());
        }
        Ok(Self { paths })
    }

    pub(crate) fn len(&self) -> usize {
        self.paths.len()
    }
}

/// The NUL-terminated records of `bytes`; the last one must be terminated too.
fn records(bytes: &[u8]) -> Result<impl Iterator<Item = &[u8]>, String> {
    if !bytes.is_empty() && bytes.last() != Some(&0) {
        return Err("listing does not end with a NUL".to_owned());
    }
    // Every piece ends with its NUL (checked above for the last one).
    Ok(bytes
        .split_inclusive(|b| *b == 0)
        .map(|record| &record[..record.len() - 1]))
}

fn parent(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|b| *b == b'/').map(|i| &path[..i])
}

/// The whiteouts a layer needs so that `base` minus what it lacks in `after` (records of
/// `<type><path>`, `type` as `find -printf %y` gives it, or `m` for a mount point) is deleted:
/// `<dir>/.wh.<name>` for each deleted path whose parent is still a directory. A mount point is
/// not deleted, and what the image has below one is not the container's to delete. Below a deleted directory, or below a
/// directory replaced by a file (the layer's entry for the file removes the whole directory),
/// nothing more is needed. Sorted, so the archive does not depend on hash order.
pub(crate) fn whiteouts(base: &BaseListing, after: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut kinds: HashMap<&[u8], u8> = HashMap::new();
    for record in records(after)? {
        match record {
            [kind, path @ ..] if path.starts_with(b"./") => {
                kinds.insert(path, *kind);
            }
            _ => {
                return Err(format!(
                    "listing entry {:?} is not <type>./<path>",
                    String::from_utf8_lossy(record)
                ))
            }
        }
    }
    let mut out: Vec<Vec<u8>> = base
        .paths
        .iter()
        .filter(|p| !kinds.contains_key(&***p))
        .filter_map(|p| {
            let dir = parent(p)?;
            // The root is never deleted; its children's parent is "." and always a directory.
            let parent_is_dir = dir == b"." || kinds.get(dir) == Some(&b'd');
            parent_is_dir.then(|| {
                let mut w = dir.to_vec();
                w.extend_from_slice(b"/.wh.");
                w.extend_from_slice(&p[dir.len() + 1..]);
                w
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Opens a file the deps or listing container wrote, refusing anything but a regular file
/// (a root process in the container could have left a symlink to a host file there).
fn open_output(dir: &Path, name: &str) -> io::Result<(File, u64)> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok((file, meta.len()))
}

fn read_listing(dir: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (file, len) = open_output(dir, name)?;
    if len > MAX_LISTING_BYTES {
        return Err(io::Error::other(format!(
            "{name} has {len} bytes, more than the {MAX_LISTING_BYTES} read"
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_LISTING_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The bytes of a GNU tar archive written with 512-byte records that hold its entries: all but
/// the final end-of-archive marker (two zero blocks), which must be there.
fn entries_len(file: &mut File, len: u64) -> io::Result<u64> {
    if len < 1024 || len % 512 != 0 {
        return Err(io::Error::other(format!(
            "{LAYER_TAR} is {len} bytes: not a whole number of tar blocks with an end marker"
        )));
    }
    let mut tail = [0u8; 1024];
    file.seek(SeekFrom::Start(len - 1024))?;
    file.read_exact(&mut tail)?;
    file.seek(SeekFrom::Start(0))?;
    if tail.iter().any(|b| *b != 0) {
        return Err(io::Error::other(format!(
            "{LAYER_TAR} does not end with a tar end-of-archive marker"
        )));
    }
    Ok(len - 1024)
}

/// A tar archive of empty whiteout files, with its end-of-archive marker.
fn whiteout_archive(paths: &[Vec<u8>]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for path in paths {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let path = std::str::from_utf8(path).map_err(|_| {
            io::Error::other(format!(
                "deleted path {:?} is not UTF-8",
                String::from_utf8_lossy(path)
            ))
        })?;
        builder.append_data(&mut header, path, io::empty())?;
    }
    builder.into_inner()
}

/// Reads `inner` while hashing and counting what it read.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// The layer as Docker will get it: the first `entries` bytes of the deps container's archive,
/// then `tail` (whiteouts and an end marker), or the whole archive when `tail` is empty.
struct LayerSource {
    file: File,
    entries: u64,
    tail: Vec<u8>,
}

/// The image config and manifest wrapped around a new layer on top of `base`.
struct ImageSpec {
    /// The base image's `docker inspect`.
    base: bollard::models::ImageInspect,
    /// Labels added to the base image's.
    labels: HashMap<String, String>,
}

impl ImageSpec {
    fn base_layers(&self) -> Vec<String> {
        self.base
            .root_fs
            .as_ref()
            .and_then(|r| r.layers.clone())
            .unwrap_or_default()
    }

    fn config(&self, diff_id: &str) -> io::Result<Vec<u8>> {
        let mut config = self.base.config.clone().unwrap_or_default();
        config
            .labels
            .get_or_insert_with(HashMap::new)
            .extend(self.labels.clone());
        let mut diff_ids = self.base_layers();
        diff_ids.push(diff_id.to_owned());
        serde_json::to_vec(&serde_json::json!({
            "architecture": self.base.architecture.as_deref().unwrap_or("amd64"),
            "os": self.base.os.as_deref().unwrap_or("linux"),
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .map_err(io::Error::other)
    }

    fn manifest(&self) -> io::Result<Vec<u8>> {
        // Docker looks the image's own layers up by their chain id and reads no file for them.
        let mut layers: Vec<String> = (0..self.base_layers().len())
            .map(|i| format!("base-{i}/layer.tar"))
            .collect();
        layers.push(LAYER_TAR.to_owned());
        serde_json::to_vec(&serde_json::json!([
            { "Config": "config.json", "RepoTags": null, "Layers": layers }
        ]))
        .map_err(io::Error::other)
    }
}

/// Appends a regular file `name` of `size` bytes read from `data` (mode 0644, time 0).
fn append_file(
    builder: &mut tar::Builder<impl Write>,
    name: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_mtime(0);
    builder.append_data(&mut header, name, data)
}

/// Writes the `docker save` archive of `spec` with `layer` on top to `out`. Returns the image
/// id (the digest of the config) and the layer's size.
fn write_archive(
    out: impl Write,
    layer: LayerSource,
    spec: &ImageSpec,
) -> io::Result<(String, u64)> {
    let mut builder = tar::Builder::new(out);
    let size = layer.entries + layer.tail.len() as u64;
    let mut source = Hashing {
        inner: (&layer.file)
            .take(layer.entries)
            .chain(io::Cursor::new(layer.tail)),
        hasher: Sha256::new(),
        read: 0,
    };
    append_file(&mut builder, LAYER_TAR, size, &mut source)?;
    if source.read != size {
        return Err(io::Error::other(format!(
            "{LAYER_TAR} changed while it was read: {} of {size} bytes",
            source.read
        )));
    }
    let diff_id = format!("sha256:{}", hex::encode(source.hasher.finalize()));
    let config = spec.config(&diff_id)?;
    let image_id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    append_file(
        &mut builder,
        "config.json",
        config.len() as u64,
        &config[..],
    )?;
    let manifest = spec.manifest()?;
    append_file(
        &mut builder,
        "manifest.json",
        manifest.len() as u64,
        &manifest[..],
    )?;
    builder.into_inner()?.flush()?;
    Ok((image_id, size))
}

/// A `Write` that hands what is written, in chunks, to a channel the HTTP body is read from.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "Docker stopped reading the image archive",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// What [`Runtime::load_layer`] made.
pub(crate) struct LoadedLayer {
    /// The new image's id.
    pub(crate) image_id: String,
    /// Bytes of the layer, whiteouts included.
    pub(crate) bytes: u64,
    /// Whiteouts added for deleted paths.
    pub(crate) whiteouts: usize,
}

impl Runtime {
    /// The listing of `image`: from memory, or made now by a listing container writing into
    /// `dir` (an empty directory of the job's work dir). One listing at a time.
    pub(crate) async fn base_listing(
        &self,
        image: &ImageRef,
        job_id: &str,
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<Arc<BaseListing>, RuntimeError> {
        let mut listings = tokio::select! {
            l = self.listings.lock() => l,
            _ = cancel.cancelled() => return Err(RuntimeError::Cancelled),
        };
        if let Some(listing) = listings.get(&image.digest) {
            return Ok(listing.clone());
        }
        let started = Instant::now();
        let body = spec::listing_container(&self.cfg, job_id, &image.name, dir);
        let mut log = CappedLog::new(LISTING_LOG_CAP);
        let result = self
            .run_one_off(job_id, ContainerRole::Listing, body, &mut log, cancel)
            .await;
        match result? {
            Exit::Code(0) => {}
            Exit::Cancelled => return Err(RuntimeError::Cancelled),
            other => {
                return Err(RuntimeError::Infrastructure(format!(
                    "listing the image failed ({other:?}): {}",
                    tail_text(&log.finish(), ERROR_LOG_TAIL)
                )))
            }
        }
        let dir = dir.to_owned();
        let listing = tokio::task::spawn_blocking(move || {
            open_output(&dir, BASE_OK)?;
            let bytes = read_listing(&dir, BASE)?;
            BaseListing::parse(&bytes).map_err(io::Error::other)
        })
        .await
        .map_err(|e| RuntimeError::Infrastructure(format!("reading the image listing: {e}")))?
        .map_err(|e| RuntimeError::Infrastructure(format!("reading the image listing: {e}")))?;
        tracing::info!(
            image = %image.name,
            paths = listing.len(),
            secs = started.elapsed().as_secs_f64(),
            "listed the build image"
        );
        let listing = Arc::new(listing);
        listings.insert(image.digest.clone(), listing.clone());
        Ok(listing)
    }

    /// Loads the deps container's export in `layer_dir` as a new image on top of `image`,
    /// labelled with `labels`. The caller removes the image.
    pub(crate) async fn load_layer(
        &self,
        image: &ImageRef,
        layer_dir: &Path,
        listing: Arc<BaseListing>,
        labels: HashMap<String, String>,
    ) -> Result<LoadedLayer, RuntimeError> {
        let infra = |what: &str, e: io::Error| {
            RuntimeError::Infrastructure(format!("{what} the dependency layer: {e}"))
        };
        let base = self
            .docker
            .inspect_image(&image.name)
            .await
            .map_err(|e| docker_error("inspecting the build image", e))?;
        let layers = base.root_fs.as_ref().and_then(|r| r.layers.clone());
        if layers.as_deref() != Some(std::slice::from_ref(&image.digest)) {
            return Err(RuntimeError::ImageMissing(format!(
                "{} no longer has the single layer {}",
                image.name, image.digest
            )));
        }
        let dir = layer_dir.to_owned();
        let (layer, whiteouts) = tokio::task::spawn_blocking(move || {
            open_output(&dir, LAYER_OK)?;
            let after = read_listing(&dir, AFTER)?;
            let paths = whiteouts(&listing, &after).map_err(io::Error::other)?;
            let (mut file, len) = open_output(&dir, LAYER_TAR)?;
            let layer = if paths.is_empty() {
                LayerSource {
                    file,
                    entries: len,
                    tail: Vec::new(),
                }
            } else {
                let entries = entries_len(&mut file, len)?;
                LayerSource {
                    file,
                    entries,
                    tail: whiteout_archive(&paths)?,
                }
            };
            Ok::<_, io::Error>((layer, paths.len()))
        })
        .await
        .map_err(|e| infra("preparing", io::Error::other(e)))?
        .map_err(|e| infra("preparing", e))?;

        let spec = ImageSpec { base, labels };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let writer = tokio::task::spawn_blocking(move || {
            let error_tx = tx.clone();
            let out = ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            let result = write_archive(out, layer, &spec);
            if let Err(e) = &result {
                // Aborts the request: Docker must not load a truncated archive.
                let _ = error_tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let options = bollard::query_parameters::ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut responses = self.docker.import_image_stream(options, body, None);
        let mut docker_result = Ok(());
        while let Some(item) = responses.next().await {
            if let Err(e) = item {
                docker_result = Err(docker_error("loading the dependency layer", e));
                break;
            }
        }
        drop(responses);
        let written = writer
            .await
            .map_err(|e| infra("writing", io::Error::other(e)))?;
        docker_result?;
        let (image_id, bytes) = written.map_err(|e| infra("writing", e))?;
        // Docker answered without an error; the image must now exist under its config digest.
        self.docker
            .inspect_image(&image_id)
            .await
            .map_err(|e| docker_error("inspecting the loaded dependency image", e))?;
        Ok(LoadedLayer {
            image_id,
            bytes,
            whiteouts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::lifecycle::{run_to_exit, JobResources};
    use super::*;

    /// Creates a container from `body` in `resources` and runs it: its exit and output.
    async fn run(
        rt: &Runtime,
        resources: &mut JobResources,
        body: bollard::models::ContainerCreateBody,
    ) -> (String, Exit, String) {
        let id = resources
            .create(ContainerRole::Deps, body)
            .await
            .expect("create");
        let mut log = CappedLog::new(16 << 20);
        let exit = run_to_exit(
            &rt.docker,
            &id,
            std::time::Duration::from_secs(300),
            std::time::Duration::from_secs(2),
            &CancellationToken::new(),
            &mut log,
        )
        .await
        .expect("runs");
        (
            id,
            exit,
            String::from_utf8_lossy(&log.finish()).into_owned(),
        )
    }

    fn listing(paths: &[&str]) -> BaseListing {
        let mut bytes = Vec::new();
        for p in paths {
            bytes.extend_from_slice(p.as_bytes());
            bytes.push(0);
        }
        BaseListing::parse(&bytes).expect("valid listing")
    }

    fn after(entries: &[(char, &str)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (kind, p) in entries {
            bytes.push(*kind as u8);
            bytes.extend_from_slice(p.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    fn strings(v: Vec<Vec<u8>>) -> Vec<String> {
        v.into_iter()
            .map(|p| String::from_utf8(p).expect("utf-8"))
            .collect()
    }

    #[test]
    fn nothing_deleted_needs_no_whiteout() {
        let base = listing(&["./etc", "./etc/passwd"]);
        let now = after(&[('d', "./etc"), ('f', "./etc/passwd"), ('f', "./etc/new")]);
        assert!(whiteouts(&base, &now).expect("valid").is_empty());
    }

    #[test]
    fn a_deleted_file_gets_one_whiteout_a_deleted_tree_one_for_its_top() {
        let base = listing(&[
            "./var",
            "./var/cache",
            "./var/cache/apt",
            "./var/cache/apt/pkgcache.bin",
            "./opt",
            "./opt/tree",
            "./opt/tree/a",
            "./opt/tree/a/b",
            "./top",
        ]);
        let now = after(&[
            ('d', "./var"),
            ('d', "./var/cache"),
            ('d', "./var/cache/apt"),
            ('d', "./opt"),
        ]);
        assert_eq!(
            strings(whiteouts(&base, &now).expect("valid")),
            [
                "./.wh.top",
                "./opt/.wh.tree",
                "./var/cache/apt/.wh.pkgcache.bin"
            ]
        );
    }

    #[test]
    fn a_directory_replaced_by_a_file_needs_no_whiteouts_below_it() {
        let base = listing(&["./usr", "./usr/lib", "./usr/lib/x", "./usr/lib/y"]);
        let now = after(&[('d', "./usr"), ('l', "./usr/lib")]);
        assert!(whiteouts(&base, &now).expect("valid").is_empty());
    }

    #[test]
    fn mount_points_and_what_they_hide_are_not_deleted() {
        let base = listing(&[
            "./etc",
            "./etc/hosts",
            "./var",
            "./var/lists",
            "./var/lists/lock",
        ]);
        let now = after(&[
            ('d', "./etc"),
            ('d', "./var"),
            ('m', "./etc/hosts"),
            ('m', "./var/lists"),
        ]);
        assert!(whiteouts(&base, &now).expect("valid").is_empty());
    }

    #[test]
    fn malformed_listings_are_refused() {
        assert!(BaseListing::parse(b"./a\0./b").is_err(), "unterminated");
        assert!(BaseListing::parse(b"/abs\0").is_err(), "not ./");
        let base = listing(&["./a"]);
        assert!(whiteouts(&base, b"f/abs\0").is_err());
        assert!(whiteouts(&base, b"\0").is_err());
        assert!(BaseListing::parse(b"").expect("empty is fine").len() == 0);
    }

    #[test]
    fn whiteouts_replace_the_end_marker_of_the_container_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        // An archive like the deps script's: one entry, then exactly two zero blocks.
        let mut gnu = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        gnu.append_data(&mut header, "./etc/new", &b"new"[..])
            .expect("append");
        let gnu = gnu.into_inner().expect("finish");
        std::fs::write(dir.path().join(LAYER_TAR), &gnu).expect("write");
        let (mut file, len) = open_output(dir.path(), LAYER_TAR).expect("open");
        let entries = entries_len(&mut file, len).expect("end marker");
        assert_eq!(entries, len - 1024);
        let tail = whiteout_archive(&[b"./var/.wh.gone".to_vec()]).expect("whiteouts");
        let mut layer = Vec::new();
        (&file)
            .take(entries)
            .chain(io::Cursor::new(tail))
            .read_to_end(&mut layer)
            .expect("read");
        let mut archive = tar::Archive::new(io::Cursor::new(layer));
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["etc/new", "var/.wh.gone"]);

        // A file that does not end in an end marker is refused, not cut.
        std::fs::write(dir.path().join(LAYER_TAR), &gnu[..gnu.len() - 512]).expect("write");
        let (mut file, len) = open_output(dir.path(), LAYER_TAR).expect("open");
        assert!(entries_len(&mut file, len).is_err());
    }

    /// Every kind of change apt and maintainer scripts make, exported and loaded, gives the
    /// same tree as `docker commit` of the same container: types, modes, owners, sizes,
    /// modification times (to the second: a commit keeps no more), link targets and contents.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loaded_layer_holds_what_a_commit_holds() {
        let cfg = super::super::RuntimeConfig {
            image_recipe: Path::new(env!("CARGO_MANIFEST_DIR")).join("../containers/build-image"),
            ..Default::default()
        };
        let rt = Runtime::connect(cfg)
            .await
            .expect("Docker engine reachable");
        let image = rt.ensure_image().await.expect("build image available");
        let work = tempfile::tempdir().expect("tempdir");
        let (layer_dir, listing_dir) = (work.path().join("layer"), work.path().join("listing"));
        for d in [&layer_dir, &listing_dir] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let cancel = CancellationToken::new();
        let listing = rt
            .base_listing(&image, "layer-test", &listing_dir, &cancel)
            .await
            .expect("listing");
        assert!(
            listing.len() > 1000,
            "the build image has {} paths",
            listing.len()
        );

        let changes = r#"set -eu
L=$1
touch "$L/.marker"
sleep 0.1
mkdir -p /opt/new /opt/empty
printf 'new file\n' > /opt/new/file
ln /opt/new/file /opt/new/hard
ln -s /etc/passwd /opt/new/link
mkfifo /opt/new/fifo
printf 'appended\n' >> /etc/debian_version
chmod 600 /etc/issue
chown 1000:1000 /etc/issue.net
touch -d @1000000000 /etc/shells
rm /etc/motd
rm -r /usr/share/zoneinfo/Antarctica
rm -r /usr/share/zoneinfo/Arctic
printf 'now a file\n' > /usr/share/zoneinfo/Arctic
ln -sf /etc/hosts /etc/host.conf
"#;
        let script = format!("{changes}{}", spec::EXPORT_SCRIPT);
        let body = spec::probe_container(&rt.cfg, &image.name, &layer_dir, &script);
        let mut resources = JobResources::new(rt.docker.clone(), rt.tracker.clone(), "layer-test");
        let (id, exit, log) = run(&rt, &mut resources, body).await;
        assert_eq!(exit, Exit::Code(0), "{log}");
        assert!(!log.contains("failed"), "{log}");

        let labels = HashMap::from([("org.lockstep.test".to_owned(), "layer".to_owned())]);
        let loaded = rt
            .load_layer(&image, &layer_dir, listing, labels)
            .await
            .expect("the layer loads");
        resources.adopt_image(&loaded.image_id);
        // /etc/motd, Antarctica; Arctic's files go with the directory the new file replaces.
        assert_eq!(loaded.whiteouts, 2, "whiteouts");
        let committed = resources.commit(&id, work.path()).await.expect("commit");

        // Left out: what Docker makes in every container it creates (`/.dockerenv`, `/etc/mtab`
        // and the mount points in `/etc`, so `/etc`'s time), and the empty mount point of the
        // layer directory a commit keeps in `/tmp` (the build container mounts a tmpfs there).
        let describe = r#"cd /
lockstep_prune | xargs -0 sh -c 'exec find . -xdev -mindepth 1 "$@" -printf "%y %m %U %G %s %T@ %l %p\n"' x |
  sed 's/\.[0-9]* / /' | LC_ALL=C sort |
  grep -v -e ' ./tmp/lockstep-layer$' -e ' ./tmp$' -e ' ./.dockerenv$' -e ' ./etc/mtab$' -e ' ./etc$'
sha256sum /opt/new/file /opt/new/hard /etc/debian_version /usr/share/zoneinfo/Arctic /etc/issue
"#;
        let mut trees = Vec::new();
        for img in [&loaded.image_id, &committed] {
            let body = spec::probe_container(&rt.cfg, img, Path::new(""), describe);
            let (id, exit, tree) = run(&rt, &mut resources, body).await;
            assert_eq!(exit, Exit::Code(0), "{tree}");
            resources.remove_container(&id).await.expect("remove");
            trees.push(tree);
        }
        resources.release().await.expect("release");
        let (ours, docker) = (&trees[0], &trees[1]);
        assert!(ours.lines().count() > 1000, "{ours}");
        for expected in [
            "f 600 0 0",
            "./etc/issue\n",
            "p 644 0 0 0",
            "l 777 0 0 11",
            "/etc/passwd ./opt/new/link\n",
            " ./usr/share/zoneinfo/Arctic\n",
        ] {
            assert!(ours.contains(expected), "{expected:?} missing");
        }
        assert!(!ours.contains("./etc/motd\n"), "deleted file present");
        assert!(
            !ours.contains(" ./usr/share/zoneinfo/Antarctica"),
            "deleted tree present"
        );
        assert!(
            !ours.contains("./usr/share/zoneinfo/Arctic/"),
            "replaced tree present"
        );
        if ours != docker {
            let a: HashSet<&str> = ours.lines().collect();
            let b: HashSet<&str> = docker.lines().collect();
            let only_ours: Vec<_> = a.difference(&b).collect();
            let only_docker: Vec<_> = b.difference(&a).collect();
            panic!("trees differ:\nonly loaded: {only_ours:#?}\nonly committed: {only_docker:#?}");
        }
    }

    #[test]
    fn outputs_that_are_not_regular_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(AFTER)).expect("symlink");
        assert!(open_output(dir.path(), AFTER).is_err(), "symlink followed");
        std::fs::create_dir(dir.path().join(LAYER_TAR)).expect("dir");
        assert!(
            open_output(dir.path(), LAYER_TAR).is_err(),
            "directory opened"
        );
    }
}
