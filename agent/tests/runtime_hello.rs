//! The reference package: `hello` from the host's Debian sources builds in the hardened runtime,
//! and two builds in different work directories give identical `.deb`s.

mod common;

use std::time::Instant;

use lockstep_agent::runtime::BuildStatus;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_builds_twice_to_identical_debs() {
    let source = tempfile::tempdir().expect("tempdir");
    let dsc = common::fetch_debian_source("hello", source.path());
    let version = dsc
        .strip_prefix("hello_")
        .and_then(|v| v.strip_suffix(".dsc"))
        .expect("hello_<version>.dsc")
        .to_owned();
    let (rt, image) = common::runtime(common::test_config()).await;

    let mut debs = Vec::new();
    for round in 1..=2 {
        let work = tempfile::tempdir().expect("tempdir");
        let req = common::request(
            &format!("hello-{round}"),
            "hello",
            &version,
            &dsc,
            source.path(),
            work.path(),
            &image,
        );
        let started = Instant::now();
        let out = rt
            .build(&req, CancellationToken::new())
            .await
            .expect("build runs");
        eprintln!(
            "hello build {round}: {:?} total, phases {:?}",
            started.elapsed(),
            out.timings
        );
        let log = String::from_utf8_lossy(&out.log);
        assert_eq!(out.status, BuildStatus::Succeeded, "log:\n{log}");
        let deb = out
            .artifacts
            .iter()
            .find(|f| f.name.starts_with("hello_") && f.name.ends_with("_amd64.deb"))
            .unwrap_or_else(|| panic!("no hello_*_amd64.deb in {:?}", out.artifacts))
            .clone();
        eprintln!("hello build {round}: {} sha256 {}", deb.name, deb.sha256);
        assert!(
            deb.path.starts_with(work.path()),
            "outputs stay in the work dir"
        );
        assert_eq!(
            lockstep_proto::digest::hash_file(&deb.path)
                .expect("readable")
                .0,
            deb.sha256
        );
        let buildinfo = out.buildinfo.as_ref().expect("a .buildinfo");
        assert!(buildinfo.name.ends_with(".buildinfo"));
        let buildinfo_text = std::fs::read_to_string(&buildinfo.path).expect("buildinfo text");
        assert!(
            buildinfo_text.contains("Build-Path: /build/reproducible-path/hello-2.10"),
            "{buildinfo_text}"
        );
        assert!(out.changes.is_some(), "a .changes");
        assert_eq!(out.recipe.build_path, "/build/reproducible-path/hello-2.10");
        assert!(out
            .recipe
            .command
            .contains("dpkg-buildpackage -B -us -uc -rfakeroot"));
        assert!(out
            .recipe
            .environment
            .contains(&"LC_ALL=C.UTF-8".to_owned()));
        assert!(log.contains("dpkg-buildpackage"), "log shows the build");
        // The build image came from the exported layer, not from the `docker commit` fallback.
        assert!(
            log.contains("deps: loaded the installed dependencies as a layer"),
            "log:\n{log}"
        );
        assert!(
            !log.contains("committing the container instead"),
            "log:\n{log}"
        );
        assert!(rt.live_containers().is_empty(), "containers removed");
        debs.push(deb);
    }
    assert_eq!(
        debs[0].sha256, debs[1].sha256,
        "two builds at different host paths agree"
    );
    assert_eq!(debs[0].size, debs[1].size);
}
