//! Helpers shared by the runtime tests: a runtime on the real Docker engine, Debian source
//! packages fetched with a private apt configuration, and synthetic source packages.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lockstep_agent::runtime::{BuildRequest, Runtime, RuntimeConfig};
use lockstep_proto::v1::{BuildKind, ImageRef};

/// The image recipe in this repository.
pub fn recipe_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../containers/build-image")
}

/// Runtime settings for tests: the repository's recipe, modest limits.
pub fn test_config() -> RuntimeConfig {
    RuntimeConfig {
        image_recipe: recipe_path(),
        memory_bytes: 2 << 30,
        pids_limit: 1024,
        max_build_time: Duration::from_secs(15 * 60),
        stop_grace: Duration::from_secs(2),
        log_cap_bytes: 1 << 20,
        ..RuntimeConfig::default()
    }
}

/// A runtime on the local Docker engine with the build image present (built if missing).
pub async fn runtime(cfg: RuntimeConfig) -> (Runtime, ImageRef) {
    let rt = Runtime::connect(cfg)
        .await
        .expect("Docker engine reachable");
    let image = rt.ensure_image().await.expect("build image available");
    (rt, image)
}

/// A build request for `dsc` in `source_dir`, working in `work_dir`.
pub fn request(
    job_id: &str,
    source: &str,
    version: &str,
    dsc_name: &str,
    source_dir: &Path,
    work_dir: &Path,
    image: &ImageRef,
) -> BuildRequest {
    BuildRequest {
        job_id: job_id.to_owned(),
        source: source.to_owned(),
        version: version.to_owned(),
        kind: BuildKind::Any,
        dsc_name: dsc_name.to_owned(),
        source_dir: source_dir.to_owned(),
        work_dir: work_dir.to_owned(),
        image: image.clone(),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `deb` entries of the host's deb822 apt sources (`/etc/apt/sources.list.d/*.sources`),
/// rewritten as `deb-src` entries with the same URIs, suites, components and keyring.
pub fn host_deb_src_sources() -> String {
    let mut files: Vec<_> = std::fs::read_dir("/etc/apt/sources.list.d")
        .expect("/etc/apt/sources.list.d readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sources"))
        .collect();
    files.sort();
    let mut out = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("sources file readable");
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let enabled = field("Enabled").is_none_or(|v| v != "no");
            let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
                continue;
            };
            if !is_deb || !enabled {
                continue;
            }
            out.push_str(&format!("Types: deb-src\nURIs: {uris}\nSuites: {suites}\n"));
            if let Some(c) = field("Components") {
                out.push_str(&format!("Components: {c}\n"));
            }
            if let Some(k) = field("Signed-By") {
                out.push_str(&format!("Signed-By: {k}\n"));
            }
            out.push('\n');
        }
    }
    assert!(!out.is_empty(), "no deb entries in the host's apt sources");
    out
}

/// Downloads the source of `package` into `dest` with a private apt configuration (the
/// host's sources as `deb-src`); returns the `.dsc` file name.
pub fn fetch_debian_source(package: &str, dest: &Path) -> String {
    let apt = tempfile::tempdir().expect("tempdir");
    let parts = apt.path().join("sources.list.d");
    for dir in [
        parts.clone(),
        apt.path().join("lists/partial"),
        apt.path().join("cache/archives/partial"),
    ] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(parts.join("lockstep-src.sources"), host_deb_src_sources()).expect("write");
    let private = |cmd: &mut Command| {
        cmd.arg("-q")
            .arg("-o")
            .arg("Dir::Etc::SourceList=/dev/null")
            .arg("-o")
            .arg(format!("Dir::Etc::SourceParts={}", parts.display()))
            .arg("-o")
            .arg(format!("Dir::State::Lists={}/lists", apt.path().display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}/cache", apt.path().display()));
    };
    let mut update = Command::new("apt-get");
    private(&mut update);
    run(update.arg("update"));
    let mut source = Command::new("apt-get");
    private(&mut source);
    run(source
        .current_dir(dest)
        .args(["source", "--download-only", package]));
    std::fs::read_dir(dest)
        .expect("dest readable")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".dsc"))
        .expect("a .dsc was downloaded")
}

/// A synthetic `3.0 (native)` source package built with `dpkg-source -b`, without debhelper.
pub struct Synthetic {
    /// Directory holding the `.dsc` and the tarball.
    pub source_dir: PathBuf,
    pub name: String,
    pub version: String,
    pub dsc_name: String,
}

/// Writes `debian/{control,changelog,rules,source/format}` for package `name` 1.0 and runs
/// `dpkg-source -b`. `build` is a list of shell commands for the build target, `binary_extra`
/// commands run at the end of the binary target (in the unpacked source directory).
pub fn synthetic_package(
    root: &Path,
    name: &str,
    build: &[&str],
    binary_extra: &[&str],
) -> Synthetic {
    let version = "1.0";
    let tree = root.join("tree").join(format!("{name}-{version}"));
    let source_dir = root.join("source");
    std::fs::create_dir_all(tree.join("debian/source")).expect("mkdir");
    std::fs::create_dir_all(&source_dir).expect("mkdir");
    let w = |rel: &str, text: String| std::fs::write(tree.join(rel), text).expect("write");
    w(
        "debian/control",
        format!(
            "Source: {name}\nSection: misc\nPriority: optional\n\
             Maintainer: Lockstep Tests <tests@lockstep.invalid>\n\
             Standards-Version: 4.6.2\nRules-Requires-Root: no\n\n\
             Package: {name}\nArchitecture: any\n\
             Description: synthetic package for Lockstep's runtime tests\n \
             Built without debhelper so the dependency step stays small.\n"
        ),
    );
    w(
        "debian/changelog",
        format!(
            "{name} ({version}) unstable; urgency=medium\n\n  * Test package.\n\n \
             -- Lockstep Tests <tests@lockstep.invalid>  Tue, 20 May 2025 00:00:00 +0000\n"
        ),
    );
    w("debian/source/format", "3.0 (native)\n".to_owned());
    let lines = |cmds: &[&str]| cmds.iter().map(|c| format!("\t{c}\n")).collect::<String>();
    w(
        "debian/rules",
        format!(
            "#!/usr/bin/make -f\n\
             build build-arch build-indep:\n{build}\t@true\n\n\
             binary binary-arch binary-indep: build\n\
             \tmkdir -p debian/tmp/DEBIAN debian/tmp/usr/share/doc/{name}\n\
             \techo synthetic > debian/tmp/usr/share/doc/{name}/README\n\
             \tdpkg-gencontrol -p{name}\n\
             \tdpkg-deb --root-owner-group --build debian/tmp ..\n{extra}\n\
             clean:\n\trm -rf debian/tmp debian/files\n",
            build = lines(build),
            extra = lines(binary_extra),
        ),
    );
    let rules = tree.join("debian/rules");
    let mut perms = std::fs::metadata(&rules).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&rules, perms).expect("chmod");
    run(Command::new("dpkg-source")
        .current_dir(&source_dir)
        .arg("-b")
        .arg(&tree));
    Synthetic {
        source_dir,
        name: name.to_owned(),
        version: version.to_owned(),
        dsc_name: format!("{name}_{version}.dsc"),
    }
}

/// Whether Docker still knows a container or image with this id.
pub async fn container_exists(docker: &bollard::Docker, id: &str) -> bool {
    docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .is_ok()
}

/// Whether Docker still knows an image with this id.
pub async fn image_exists(docker: &bollard::Docker, id: &str) -> bool {
    docker.inspect_image(id).await.is_ok()
}
