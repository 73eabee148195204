//! T23: every container the runtime creates is inspected through the Docker API and must carry
//! the isolation the design promises.

mod common;

use lockstep_agent::runtime::{BuildStatus, ContainerRole};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_containers_are_isolated_and_deps_containers_minimal() {
    let root = tempfile::tempdir().expect("tempdir");
    let pkg = common::synthetic_package(
        root.path(),
        "lockstep-audit",
        &[
            // The build sees the fixed environment and no network.
            "test \"$$(hostname)\" = lockstep-build",
            "test \"$$(id -u)\" = 1000",
            "test \"$$(umask)\" = 0022",
            "test -z \"$${SOURCE_DATE_EPOCH+set}\" || test \"$$SOURCE_DATE_EPOCH\" = 1747699200",
            "! touch /etc/lockstep-write-test 2>/dev/null",
            "test ! -e /var/run/docker.sock",
            "test \"$$(cat /sys/class/net/*/operstate 2>/dev/null | grep -c up)\" = 0",
        ],
        &[],
    );
    let cfg = common::test_config();
    let (memory, pids) = (cfg.memory_bytes, cfg.pids_limit);
    let (rt, image) = common::runtime(cfg).await;
    let work = tempfile::tempdir().expect("tempdir");
    let req = common::request(
        "audit-1",
        &pkg.name,
        &pkg.version,
        &pkg.dsc_name,
        &pkg.source_dir,
        work.path(),
        &image,
    );
    let out = rt
        .build(&req, CancellationToken::new())
        .await
        .expect("build runs");
    assert_eq!(
        out.status,
        BuildStatus::Succeeded,
        "log:\n{}",
        String::from_utf8_lossy(&out.log)
    );

    let audits: Vec<_> = rt
        .container_audits()
        .into_iter()
        .filter(|a| a.job_id == "audit-1")
        .collect();
    // The runtime's first job also lists the build image (once per image).
    let mut roles: Vec<String> = audits.iter().map(|a| format!("{:?}", a.role)).collect();
    roles.sort();
    assert_eq!(
        roles,
        ["Build", "Deps", "Listing"],
        "one deps, one build and one listing container"
    );
    for audit in &audits {
        let hc = audit.inspect.host_config.as_ref().expect("HostConfig");
        let config = audit.inspect.config.as_ref().expect("Config");
        assert_eq!(hc.privileged, Some(false), "{:?}", audit.role);
        assert_eq!(hc.cap_drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert!(hc
            .security_opt
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "no-new-privileges")));
        assert_eq!(hc.pids_limit, Some(pids));
        assert_eq!(hc.memory, Some(memory));
        assert_eq!(config.hostname.as_deref(), Some("lockstep-build"));
        let mounts = audit.inspect.mounts.clone().unwrap_or_default();
        for m in &mounts {
            let source = m.source.clone().unwrap_or_default();
            assert!(
                source.starts_with(work.path().to_str().expect("utf-8 path")),
                "only the job's work dir is mounted, found {source}"
            );
            assert!(!source.contains("docker.sock"));
        }
        assert!(hc.binds.as_ref().is_none_or(|b| b.is_empty()));
        assert!(hc.devices.as_ref().is_none_or(|d| d.is_empty()));
        assert_ne!(hc.pid_mode.as_deref(), Some("host"));
        assert_ne!(hc.ipc_mode.as_deref(), Some("host"));
        assert_ne!(hc.userns_mode.as_deref(), Some("host"));
        match audit.role {
            ContainerRole::Build => {
                assert_eq!(hc.network_mode.as_deref(), Some("none"));
                assert_eq!(hc.readonly_rootfs, Some(true));
                assert!(hc.cap_add.as_ref().is_none_or(|c| c.is_empty()));
                assert_eq!(config.user.as_deref(), Some("1000:1000"));
                assert_eq!(mounts.len(), 1, "only /build: {mounts:?}");
                assert_eq!(mounts[0].destination.as_deref(), Some("/build"));
                assert!(hc.tmpfs.as_ref().is_some_and(|t| t.contains_key("/tmp")));
                assert_eq!(
                    hc.memory_swap,
                    Some(memory),
                    "no swap beyond the memory limit"
                );
            }
            ContainerRole::Deps => {
                let allowed = [
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "FOWNER",
                    "FSETID",
                    "SETUID",
                    "SETGID",
                    "KILL",
                ];
                for cap in hc.cap_add.clone().unwrap_or_default() {
                    let cap = cap.trim_start_matches("CAP_").to_owned();
                    assert!(
                        allowed.contains(&cap.as_str()),
                        "unexpected capability {cap}"
                    );
                }
                assert_eq!(
                    mounts.len(),
                    2,
                    "only the sources and the layer directory: {mounts:?}"
                );
                for m in &mounts {
                    let writable = m.destination.as_deref() == Some("/tmp/lockstep-layer");
                    assert_eq!(
                        m.rw,
                        Some(writable),
                        "sources read-only, the layer directory writable: {m:?}"
                    );
                }
            }
            ContainerRole::Listing => {
                assert_eq!(hc.network_mode.as_deref(), Some("none"));
                assert_eq!(hc.readonly_rootfs, Some(true));
                assert_eq!(mounts.len(), 1, "only its output directory: {mounts:?}");
                assert_eq!(
                    mounts[0].destination.as_deref(),
                    Some("/tmp/lockstep-layer")
                );
            }
            ContainerRole::AptLists => panic!("no apt lists cache in use here: {mounts:?}"),
        }
        assert!(
            !common::container_exists(rt.docker(), &audit.id).await,
            "container {} removed after the build",
            audit.id
        );
    }
    let build = audits
        .iter()
        .find(|a| a.role == ContainerRole::Build)
        .expect("build container");
    let build_image = build.inspect.image.clone().expect("image id");
    let base = rt
        .docker()
        .inspect_image(&image.name)
        .await
        .expect("the build image")
        .id;
    if base.as_deref() == Some(build_image.as_str()) {
        // This package has no build dependencies: nothing was installed, nothing committed.
        assert!(
            String::from_utf8_lossy(&out.log)
                .contains("the image satisfies every build dependency"),
            "built in the base image only when the deps step installed nothing"
        );
    } else {
        assert!(
            !common::image_exists(rt.docker(), &build_image).await,
            "temporary dependency image removed"
        );
    }
    assert!(rt.live_containers().is_empty());
}
