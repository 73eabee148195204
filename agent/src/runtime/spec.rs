//! What runs in the two containers of a job, and with which isolation: pure functions from a
//! request and the config to Docker container specifications and the recorded [`Recipe`].
//!
//! The build follows Debian's build daemons: the source is unpacked with `dpkg-source -x` into
//! `/build/reproducible-path/<source>-<upstream version>` and built there by a non-root user with
//! `dpkg-buildpackage -B|-A -us -uc -rfakeroot`, umask 022, a clean environment
//! (`LANG=C.UTF-8`, `LC_ALL=C.UTF-8`, `HOME=/nonexistent`, `TZ=UTC`, fixed `PATH`), a fixed
//! hostname and domainname, and no `SOURCE_DATE_EPOCH` (dpkg takes it from `debian/changelog`).

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use lockstep_proto::v1::{BuildKind, Recipe};

use super::{BuildRequest, RuntimeConfig, RuntimeError};

/// Mount point of the build directory in the build container.
pub(crate) const BUILD_ROOT: &str = "/build";
/// Parent of the unpacked source, where `dpkg-buildpackage` writes its outputs.
pub(crate) const BUILD_PARENT: &str = "/build/reproducible-path";
/// Where the deps step sees the job's source files (read-only). Under `/tmp`, so the build
/// step's tmpfs hides the empty mount point the commit leaves behind.
pub(crate) const SOURCE_MOUNT: &str = "/tmp/lockstep-source";
/// Hostname of every container: Docker's default is random, which leaks into some builds.
pub(crate) const HOSTNAME: &str = "lockstep-build";
/// NIS domain name of every container (Docker leaves it empty or inherited otherwise).
pub(crate) const DOMAINNAME: &str = "lockstep";
/// `PATH` of the build, as Debian's sbuild sets it.
pub(crate) const BUILD_PATH_ENV: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Exit code the deps script uses when `apt-get update` fails (EX_TEMPFAIL): a mirror or network
/// problem, retryable elsewhere, as opposed to unsatisfiable build dependencies.
pub(crate) const DEPS_EXIT_TEMPFAIL: i64 = 75;
/// Exit code of the deps script when the image already satisfies every build dependency:
/// nothing was installed, so the build runs in the image itself (no commit).
pub(crate) const DEPS_EXIT_SATISFIED: i64 = 10;
/// Capabilities apt and dpkg need as root to unpack and configure packages (owners, modes,
/// setuid bits, apt's `_apt` download sandbox and stopping its own helpers). Everything else is
/// dropped.
pub(crate) const DEPS_CAPS: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "SETUID",
    "SETGID",
    "KILL",
];
/// Label put on every container so leftovers of a crashed agent can be found.
pub(crate) const LABEL_JOB: &str = "org.lockstep.job";
/// Label naming the step (`deps` or `build`).
pub(crate) const LABEL_ROLE: &str = "org.lockstep.role";
/// Label put on a job's temporary dependency image: the host build directory of the job, so an
/// agent restarted after a crash finds the images it left behind (`Runtime::remove_leftovers`).
pub(crate) const LABEL_WORKDIR: &str = "org.lockstep.workdir";

/// Where apt keeps its package indices, in the image.
pub(crate) const APT_LISTS: &str = "/var/lib/apt/lists";
/// Job id label of the containers that refresh the agent's apt lists cache.
pub(crate) const APT_LISTS_JOB: &str = "apt-lists";

/// Where the deps container writes its installed changes as a layer (and the listing container
/// the image's listing): a directory of the job's work dir, read-write. Under `/tmp`, like
/// [`SOURCE_MOUNT`].
pub(crate) const LAYER_MOUNT: &str = "/tmp/lockstep-layer";

/// Lists every path of the container's root filesystem except what is mounted into it: `find`
/// arguments (after `find .`) pruning each mount point of `/proc/self/mountinfo` but `/`.
/// `$prune` ends up as positional parameters of the calling function.
/// `lockstep_mounts` prints those mount points as `m./<path>` NUL-terminated records, the form
/// of the export's `after` listing: a mount point is not a deleted path.
const PRUNE_MOUNTS: &str = r#"lockstep_prune() {
  for m in $(awk '$5 != "/" { print $5 }' /proc/self/mountinfo); do
    printf '%s\0' -path ".$m" -prune -o
  done
}
lockstep_mounts() {
  for m in $(awk '$5 != "/" { print $5 }' /proc/self/mountinfo); do
    printf 'm.%s\0' "$m"
  done
}
"#;

/// The deps step: install build dependencies as root. `$1` is the `.dsc`, `$2` the apt-get
/// option selecting arch-dependent or arch-independent build dependencies, `$3` where the package
/// indices come from: `update` (run `apt-get update` here, delete the lists afterwards) or
/// `cached` (the agent's cache is mounted read-only at `/var/lib/apt/lists`: no update, nothing
/// to delete; the mount is not part of the layer), `$4` the layer directory ([`LAYER_MOUNT`]).
/// When the image already satisfies the build dependencies (apt, with the image's empty lists or
/// the cached ones, would install nothing), the index download is skipped: it could not change
/// what the build sees.
///
/// dpkg unpacks with `--force-unsafe-io`: the container is thrown away after the job (a crash
/// mid-install only means the job runs again), so the fsync dpkg does after every unpacked file
/// buys nothing. On this machine kind it took `hello`'s install of debhelper from ~25 s to ~15 s
/// (issue 7, P2).
///
/// After the install, the script exports what changed as a layer for the agent (see
/// `runtime::layer`): every path under `/` but mount points whose ctime is newer than the
/// marker touched first (`changed`, archived in that order as `layer.tar` with GNU tar: POSIX
/// format, numeric owners, `security.capability` as Docker keeps it, 512-byte blocks so the
/// archive ends in exactly two zero blocks), and the list of every path left with its type, the
/// mount points with type `m` (`after`), from which the agent finds what the install deleted. `layer.ok` is written last.
/// If the export fails, the job goes on: the agent commits the container instead.
const DEPS_SCRIPT: &str = r#"set -eu
export DEBIAN_FRONTEND=noninteractive
L=$4
# Everything changed from here on has a newer ctime (the kernel's clock ticks before apt's
# first write: the simulation alone takes far longer).
touch "$L/.marker"
if apt-get build-dep --simulate --no-install-recommends "$2" "$1" 2>/dev/null \
    | grep -q '^0 upgraded, 0 newly installed, 0 to remove'; then
  echo "lockstep: the image satisfies every build dependency; nothing to install"
  exit 10
fi
if [ "$3" = update ]; then
  apt-get update --error-on=any || exit 75
fi
apt-get build-dep --yes --no-install-recommends -o Dpkg::Options::=--force-unsafe-io "$2" "$1"
apt-get clean
if [ "$3" = update ]; then
  rm -rf /var/lib/apt/lists/*
fi
"#;

/// The layer export that follows [`DEPS_SCRIPT`] (and, in tests, any other change): `$L` is the
/// layer directory, `$L/.marker` the marker touched before the first change.
pub(crate) const EXPORT_SCRIPT: &str = r#"lockstep_export() {
  cd / || return 1
  lockstep_prune > "$L/prune" || return 1
  xargs -0 sh -c 'exec find . -xdev -mindepth 1 "$@" \( -printf "%y%p\0" \
      -cnewer "$0/.marker" -fprint0 "$0/changed" \)' "$L" < "$L/prune" > "$L/after" || return 1
  lockstep_mounts >> "$L/after" || return 1
  tar --create --file "$L/layer.tar" --blocking-factor=1 --format=posix \
      --pax-option=delete=atime,delete=ctime --numeric-owner \
      --xattrs --xattrs-include=security.capability \
      --no-recursion --null --files-from "$L/changed" || return 1
  echo "lockstep: exported $(tr -cd '\000' < "$L/changed" | wc -c) changed paths as a layer"
  : > "$L/layer.ok"
}
if ! lockstep_export; then
  rm -f "$L/layer.ok" "$L/layer.tar"
  echo "lockstep: exporting the installed dependencies failed; the agent commits the container" >&2
fi
"#;

/// Lists the image for the agent (see `runtime::layer`): every path under `/` but mount points,
/// NUL-separated, into `$1/base`, then `$1/base.ok`.
const LISTING_SCRIPT: &str = r#"set -eu
cd /
lockstep_prune > "$1/prune"
xargs -0 sh -c 'exec find . -xdev -mindepth 1 "$@" -print0' lockstep-list < "$1/prune" > "$1/base"
: > "$1/base.ok"
"#;

/// The refresh of the agent's apt lists cache, as root, into an empty host directory mounted at
/// `/var/lib/apt/lists`. `$1` is `uid:gid` of the agent: the indices are handed to it so it can
/// delete them without root. Exits non-zero if `apt-get update` or the hand-over failed.
const APT_LISTS_SCRIPT: &str = r#"set -u
export DEBIAN_FRONTEND=noninteractive
rc=0
apt-get update --error-on=any || rc=$?
if ! chown -R "$1" /var/lib/apt/lists && [ "$rc" -eq 0 ]; then
  rc=1
fi
exit "$rc"
"#;

/// The build step, as the build user. `$1` is the `.dsc` (in the current directory), `$2` the
/// directory to unpack into, `$3` `-B` or `-A`.
const BUILD_SCRIPT: &str = r#"set -eu
umask 022
cd /build/reproducible-path
dpkg-source -x "$1" "$2"
cd "$2"
exec dpkg-buildpackage "$3" -us -uc -rfakeroot
"#;

/// Validated, shell-safe names derived from a request.
#[derive(Clone, Debug)]
pub(crate) struct JobNames {
    /// `<source>-<upstream version>`.
    pub(crate) unpack_dir: String,
    /// `/build/reproducible-path/<source>-<upstream version>`.
    pub(crate) build_path: String,
}

/// The upstream part of a Debian version: no epoch, no final `-revision`.
pub fn upstream_version(version: &str) -> &str {
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    no_epoch.rsplit_once('-').map_or(no_epoch, |(u, _)| u)
}

fn is_source_name(s: &str) -> bool {
    s.len() >= 2
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
}

fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b))
        && !upstream_version(s).is_empty()
}

fn is_dsc_name(s: &str) -> bool {
    s.len() > 4
        && s.ends_with(".dsc")
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~_-".contains(&b))
}

/// Checks the request's names (they end up in paths and command lines) and derives the build
/// path. Does not touch the file system.
pub(crate) fn job_names(req: &BuildRequest) -> Result<JobNames, RuntimeError> {
    let bad = |what: &str, v: &str| RuntimeError::InvalidRequest(format!("{what} {v:?}"));
    if !is_source_name(&req.source) {
        return Err(bad("not a Debian source package name:", &req.source));
    }
    if !is_version(&req.version) {
        return Err(bad("not a Debian version:", &req.version));
    }
    if !is_dsc_name(&req.dsc_name) {
        return Err(bad("not a plain .dsc file name:", &req.dsc_name));
    }
    let unpack_dir = format!("{}-{}", req.source, upstream_version(&req.version));
    Ok(JobNames {
        build_path: format!("{BUILD_PARENT}/{unpack_dir}"),
        unpack_dir,
    })
}

/// The environment of the build step, exactly (Docker adds nothing else: `HOSTNAME` is set here
/// to the value Docker would set).
pub(crate) fn build_env() -> Vec<String> {
    vec![
        format!("PATH={BUILD_PATH_ENV}"),
        "LANG=C.UTF-8".to_owned(),
        "LC_ALL=C.UTF-8".to_owned(),
        "HOME=/nonexistent".to_owned(),
        "TZ=UTC".to_owned(),
        format!("HOSTNAME={HOSTNAME}"),
    ]
}

/// What the statement records about how the binaries were made.
pub(crate) fn recipe(req: &BuildRequest, names: &JobNames, cfg: &RuntimeConfig) -> Recipe {
    let flag = req.kind.dpkg_flag();
    Recipe {
        command: format!(
            "umask 022; cd {BUILD_PARENT}; dpkg-source -x {dsc} {dir}; cd {dir}; \
             dpkg-buildpackage {flag} -us -uc -rfakeroot \
             [hostname {HOSTNAME}, domainname {DOMAINNAME}, network none, read-only root, \
             build dependencies from apt-get build-dep {deps_flag}]",
            dsc = req.dsc_name,
            dir = names.unpack_dir,
            deps_flag = apt_build_dep_flag(req.kind),
        ),
        build_path: names.build_path.clone(),
        user: format!("builder ({uid}:{uid})", uid = cfg.build_uid),
        environment: build_env(),
    }
}

/// apt-get build-dep's selection matching `dpkg-buildpackage -B` / `-A`.
fn apt_build_dep_flag(kind: BuildKind) -> &'static str {
    match kind {
        BuildKind::Any => "--arch-only",
        BuildKind::All => "--indep-only",
    }
}

/// The labels of a job's deps container, which its temporary image carries too.
pub(crate) fn deps_labels(job_id: &str) -> HashMap<String, String> {
    labels(job_id, "deps")
}

fn labels(job_id: &str, role: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_JOB.to_owned(), job_id.to_owned()),
        (LABEL_ROLE.to_owned(), role.to_owned()),
    ])
}

/// Host settings shared by both steps: limits, no extra privileges, bounded json-file logs.
fn common_host_config(cfg: &RuntimeConfig) -> HostConfig {
    // Docker keeps container output on the host disk; cap it too (the agent follows the stream
    // live, so rotation loses nothing the agent keeps).
    let log_file_bytes = cfg.log_cap_bytes.max(1 << 20).to_string();
    HostConfig {
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        pids_limit: Some(cfg.pids_limit),
        memory: Some(cfg.memory_bytes),
        memory_swap: Some(cfg.memory_bytes),
        ipc_mode: Some("private".to_owned()),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), log_file_bytes),
                ("max-file".to_owned(), "2".to_owned()),
            ])),
        }),
        ..Default::default()
    }
}

/// Settings of every root container of the deps side (the deps step and the apt lists refresh):
/// root with only [`DEPS_CAPS`], network `deps_network`, the apt-friendly environment.
fn root_container(
    cfg: &RuntimeConfig,
    image: &str,
    cmd: Vec<String>,
    labels: HashMap<String, String>,
    mounts: Vec<Mount>,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some("0:0".to_owned()),
        hostname: Some(HOSTNAME.to_owned()),
        domainname: Some(DOMAINNAME.to_owned()),
        working_dir: Some("/".to_owned()),
        env: Some(vec![
            format!("PATH={BUILD_PATH_ENV}"),
            "LANG=C.UTF-8".to_owned(),
            "LC_ALL=C.UTF-8".to_owned(),
            "HOME=/root".to_owned(),
            "TZ=UTC".to_owned(),
            format!("HOSTNAME={HOSTNAME}"),
        ]),
        entrypoint: Some(vec![]),
        cmd: Some(cmd),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(cfg.deps_network.clone()),
            readonly_rootfs: Some(false),
            cap_add: Some(DEPS_CAPS.iter().map(|c| (*c).to_owned()).collect()),
            mounts: Some(mounts),
            ..common_host_config(cfg)
        }),
        ..Default::default()
    }
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.to_owned()),
        source: Some(source.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The deps container: root, network `deps_network`, minimal capabilities, the job's source
/// directory mounted read-only, the job's (empty) layer directory read-write at
/// [`LAYER_MOUNT`] and, when `apt_lists` names a generation of the agent's apt lists cache, that
/// mounted read-only at `/var/lib/apt/lists` (else the script runs `apt-get update`).
pub(crate) fn deps_container(
    cfg: &RuntimeConfig,
    req: &BuildRequest,
    image: &str,
    source_dir: &Path,
    layer_dir: &Path,
    apt_lists: Option<&Path>,
) -> ContainerCreateBody {
    let mut mounts = vec![
        bind(source_dir, SOURCE_MOUNT, true),
        bind(layer_dir, LAYER_MOUNT, false),
    ];
    if let Some(lists) = apt_lists {
        mounts.push(bind(lists, APT_LISTS, true));
    }
    let cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("{PRUNE_MOUNTS}{DEPS_SCRIPT}{EXPORT_SCRIPT}"),
        "lockstep-deps".to_owned(),
        format!("{SOURCE_MOUNT}/{}", req.dsc_name),
        apt_build_dep_flag(req.kind).to_owned(),
        if apt_lists.is_some() {
            "cached"
        } else {
            "update"
        }
        .to_owned(),
        LAYER_MOUNT.to_owned(),
    ];
    root_container(cfg, image, cmd, deps_labels(&req.job_id), mounts)
}

/// A deps-like container (root, the deps capabilities, no network) running `script` with the
/// layer directory at [`LAYER_MOUNT`] as `$1`, [`PRUNE_MOUNTS`] defined: for the layer tests.
#[cfg(test)]
pub(crate) fn probe_container(
    cfg: &RuntimeConfig,
    image: &str,
    layer_dir: &Path,
    script: &str,
) -> ContainerCreateBody {
    let cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("{PRUNE_MOUNTS}{script}"),
        "lockstep-probe".to_owned(),
        LAYER_MOUNT.to_owned(),
    ];
    let mut mounts = Vec::new();
    if !layer_dir.as_os_str().is_empty() {
        mounts.push(bind(layer_dir, LAYER_MOUNT, false));
    }
    let mut body = root_container(cfg, image, cmd, labels("layer-test", "deps"), mounts);
    if let Some(hc) = body.host_config.as_mut() {
        hc.network_mode = Some("none".to_owned());
    }
    body
}

/// The container listing the image for `runtime::layer`: the deps container's user and
/// capabilities (it must see every directory apt may change), but network `none` and a
/// read-only root; only `dir` (an empty directory of the job's work dir) is mounted, read-write,
/// at [`LAYER_MOUNT`]. Runs nothing but `find`.
pub(crate) fn listing_container(
    cfg: &RuntimeConfig,
    job_id: &str,
    image: &str,
    dir: &Path,
) -> ContainerCreateBody {
    let cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("{PRUNE_MOUNTS}{LISTING_SCRIPT}"),
        "lockstep-listing".to_owned(),
        LAYER_MOUNT.to_owned(),
    ];
    let mut body = root_container(
        cfg,
        image,
        cmd,
        labels(job_id, "listing"),
        vec![bind(dir, LAYER_MOUNT, false)],
    );
    body.network_disabled = Some(true);
    if let Some(hc) = body.host_config.as_mut() {
        hc.network_mode = Some("none".to_owned());
        hc.readonly_rootfs = Some(true);
    }
    body
}

/// The container refreshing the agent's apt lists cache: the deps container's isolation, with
/// only the new (empty) generation directory `lists` mounted, read-write, at
/// `/var/lib/apt/lists`. `owner` is `uid:gid` the indices are handed to afterwards.
pub(crate) fn apt_lists_container(
    cfg: &RuntimeConfig,
    image: &str,
    lists: &Path,
    owner: &str,
) -> ContainerCreateBody {
    let cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        APT_LISTS_SCRIPT.to_owned(),
        "lockstep-apt-lists".to_owned(),
        owner.to_owned(),
    ];
    let mounts = vec![bind(lists, APT_LISTS, false)];
    root_container(cfg, image, cmd, labels(APT_LISTS_JOB, "apt-lists"), mounts)
}

/// The build container: the build user, no network, read-only root, no capabilities, a
/// size-limited `/tmp`, and the job's build directory at `/build` — nothing else mounted.
pub(crate) fn build_container(
    cfg: &RuntimeConfig,
    req: &BuildRequest,
    names: &JobNames,
    image: &str,
    host_build_dir: &Path,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some(format!("{uid}:{uid}", uid = cfg.build_uid)),
        hostname: Some(HOSTNAME.to_owned()),
        domainname: Some(DOMAINNAME.to_owned()),
        working_dir: Some(BUILD_ROOT.to_owned()),
        env: Some(build_env()),
        network_disabled: Some(true),
        entrypoint: Some(vec![]),
        cmd: Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            BUILD_SCRIPT.to_owned(),
            "lockstep-build".to_owned(),
            req.dsc_name.clone(),
            names.unpack_dir.clone(),
            req.kind.dpkg_flag().to_owned(),
        ]),
        labels: Some(labels(&req.job_id, "build")),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_owned()),
            readonly_rootfs: Some(true),
            cap_add: Some(vec![]),
            mounts: Some(vec![Mount {
                target: Some(BUILD_ROOT.to_owned()),
                source: Some(host_build_dir.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            }]),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                // exec: configure scripts and test suites run programs they build in /tmp.
                format!("rw,exec,nosuid,nodev,size={},mode=1777", cfg.tmpfs_size),
            )])),
            ..common_host_config(cfg)
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn request(source: &str, version: &str, dsc: &str) -> BuildRequest {
        BuildRequest {
            job_id: "job-1".into(),
            source: source.into(),
            version: version.into(),
            kind: BuildKind::Any,
            dsc_name: dsc.into(),
            source_dir: PathBuf::from("/src"),
            work_dir: PathBuf::from("/work"),
            image: lockstep_proto::v1::ImageRef {
                name: "img".into(),
                digest: "sha256:00".into(),
            },
        }
    }

    #[test]
    fn upstream_version_drops_epoch_and_revision() {
        assert_eq!(upstream_version("2.10-3"), "2.10");
        assert_eq!(upstream_version("1:2.3-4-5"), "2.3-4");
        assert_eq!(upstream_version("1.0"), "1.0");
        assert_eq!(upstream_version("2:1.0+dfsg"), "1.0+dfsg");
    }

    #[test]
    fn build_path_follows_the_buildd_convention() {
        let names = job_names(&request("hello", "2.10-3", "hello_2.10-3.dsc")).expect("valid");
        assert_eq!(names.build_path, "/build/reproducible-path/hello-2.10");
    }

    #[test]
    fn names_that_could_escape_paths_or_commands_are_refused() {
        for (s, v, d) in [
            ("../x", "1.0", "x_1.0.dsc"),
            ("hello", "1.0;rm", "x_1.0.dsc"),
            ("hello", "1.0", "../x.dsc"),
            ("hello", "1.0", "x.tar.gz"),
            ("hello", "-1", "x_1.dsc"),
            ("Hello", "1.0", "x_1.dsc"),
        ] {
            assert!(
                matches!(
                    job_names(&request(s, v, d)),
                    Err(RuntimeError::InvalidRequest(_))
                ),
                "{s} {v} {d}"
            );
        }
    }

    #[test]
    fn build_container_is_locked_down() {
        let cfg = RuntimeConfig::default();
        let req = request("hello", "2.10-3", "hello_2.10-3.dsc");
        let names = job_names(&req).expect("valid");
        let body = build_container(&cfg, &req, &names, "img", Path::new("/w/build"));
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(hc.cap_add, Some(vec![]));
        assert_eq!(hc.mounts.expect("mounts").len(), 1);
        assert!(hc.binds.is_none());
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert!(!build_env()
            .iter()
            .any(|e| e.starts_with("SOURCE_DATE_EPOCH")));
    }

    fn src() -> &'static Path {
        Path::new("/w/src")
    }
    fn layer() -> &'static Path {
        Path::new("/w/layer")
    }

    #[test]
    fn listing_container_has_no_network_and_a_read_only_root() {
        let cfg = RuntimeConfig::default();
        let body = listing_container(&cfg, "job-1", "img", Path::new("/w/listing"));
        let hc = body.host_config.clone().expect("hc");
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(body.network_disabled, Some(true));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(hc.privileged, Some(false));
        let m = mounts(&body);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].target.as_deref(), Some(LAYER_MOUNT));
        assert_eq!(m[0].source.as_deref(), Some("/w/listing"));
        let labels = body.labels.expect("labels");
        assert_eq!(labels.get(LABEL_ROLE).map(String::as_str), Some("listing"));
        assert_eq!(labels.get(LABEL_JOB).map(String::as_str), Some("job-1"));
    }

    fn mounts(body: &ContainerCreateBody) -> Vec<Mount> {
        body.host_config
            .as_ref()
            .and_then(|hc| hc.mounts.clone())
            .expect("mounts")
    }

    fn script_args(body: &ContainerCreateBody) -> Vec<String> {
        body.cmd.clone().expect("cmd").split_off(3)
    }

    #[test]
    fn deps_container_updates_itself_without_the_cache() {
        let cfg = RuntimeConfig::default();
        let req = request("hello", "2.10-3", "hello_2.10-3.dsc");
        let body = deps_container(&cfg, &req, "img", src(), layer(), None);
        let m = mounts(&body);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].target.as_deref(), Some(SOURCE_MOUNT));
        assert_eq!(m[0].read_only, Some(true));
        // The only writable mount: the job's layer directory.
        assert_eq!(m[1].target.as_deref(), Some(LAYER_MOUNT));
        assert_eq!(m[1].source.as_deref(), Some("/w/layer"));
        assert_eq!(m[1].read_only, Some(false));
        let args = script_args(&body);
        assert_eq!(args[args.len() - 2], "update");
        assert_eq!(args[args.len() - 1], LAYER_MOUNT);
        assert!(DEPS_SCRIPT.contains("apt-get update --error-on=any || exit 75"));
        // Throwaway container: no fsync per unpacked file (issue 7, P2).
        assert!(DEPS_SCRIPT.contains("-o Dpkg::Options::=--force-unsafe-io"));
    }

    #[test]
    fn deps_container_mounts_the_cached_lists_read_only() {
        let cfg = RuntimeConfig::default();
        let req = request("hello", "2.10-3", "hello_2.10-3.dsc");
        let lists = Path::new("/w/apt-lists/3");
        let body = deps_container(&cfg, &req, "img", src(), layer(), Some(lists));
        let m = mounts(&body);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m.iter().filter(|m| m.read_only != Some(true)).count(),
            1,
            "only the layer directory is writable: {m:?}"
        );
        let lists_mount = m
            .iter()
            .find(|m| m.target.as_deref() == Some(APT_LISTS))
            .expect("lists mounted");
        assert_eq!(lists_mount.source.as_deref(), Some("/w/apt-lists/3"));
        let args = script_args(&body);
        assert_eq!(args[args.len() - 2], "cached");
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        assert_eq!(body.user.as_deref(), Some("0:0"));
        // The build container is unaffected: still only /build.
        let names = job_names(&req).expect("valid");
        let build = build_container(&cfg, &req, &names, "img", Path::new("/w/build"));
        let m = mounts(&build);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].target.as_deref(), Some(BUILD_ROOT));
    }

    #[test]
    fn apt_lists_refresh_has_the_deps_isolation_and_one_writable_mount() {
        let cfg = RuntimeConfig::default();
        let req = request("hello", "2.10-3", "hello_2.10-3.dsc");
        let refresh = apt_lists_container(&cfg, "img", Path::new("/w/apt-lists/4"), "0:0");
        let deps = deps_container(&cfg, &req, "img", src(), layer(), None);
        let (rhc, dhc) = (
            refresh.host_config.clone().expect("hc"),
            deps.host_config.clone().expect("hc"),
        );
        assert_eq!(rhc.cap_add, dhc.cap_add);
        assert_eq!(rhc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(rhc.security_opt, dhc.security_opt);
        assert_eq!(rhc.network_mode, dhc.network_mode);
        assert_eq!(rhc.privileged, Some(false));
        assert_eq!(refresh.user, deps.user);
        let m = mounts(&refresh);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].target.as_deref(), Some(APT_LISTS));
        assert_eq!(m[0].source.as_deref(), Some("/w/apt-lists/4"));
        assert_eq!(m[0].read_only, Some(false));
        let labels = refresh.labels.expect("labels");
        assert_eq!(
            labels.get(LABEL_JOB).map(String::as_str),
            Some(APT_LISTS_JOB)
        );
        assert!(APT_LISTS_SCRIPT.contains("apt-get update --error-on=any"));
    }
}
