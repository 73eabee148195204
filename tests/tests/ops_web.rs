//! What an operator sees of a real build (issue 5): two agents rebuild a small package in Docker;
//! `lockstep enqueue --wait` (not a terminal here) prints per-agent phases with elapsed times;
//! the web page, loaded in headless Chromium, shows the package, its state, k of n, the builders'
//! fingerprints, evidence links and the decision; `/metrics` agrees.

mod ops_support;

use lockstep_tests::{synthetic_package_rules, Cluster, ClusterOptions};
use ops_support::{dump_dom, scrape, screenshot, text, value};

/// debian/rules of the package built here: installs one file, builds in well under a minute.
/// The build step lasts a few seconds so the watcher (polling every 2 s) sees it building.
const RULES: &str = "#!/usr/bin/make -f\n\
build build-arch build-indep:\n\tsleep 6\n\
clean:\n\trm -rf debian/tmp debian/files\n\
binary binary-arch binary-indep: build\n\
\tmkdir -p debian/tmp/DEBIAN debian/tmp/usr/share/lockstep-ops\n\
\techo 'hello from lockstep-ops' > debian/tmp/usr/share/lockstep-ops/hello.txt\n\
\tdpkg-gencontrol -Pdebian/tmp\n\
\tdpkg-deb --root-owner-group --build debian/tmp ..\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_a_build_on_the_cli_the_web_page_and_metrics() {
    let c = Cluster::start("ops-web", ClusterOptions::default())
        .await
        .expect("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let dsc =
        synthetic_package_rules(dir.path(), "lockstep-ops", "1.0", RULES, &[]).expect("package");

    // --wait, output not a terminal: plain progress lines on stderr, the status on stdout.
    let out = c.cli(&[
        "enqueue",
        "--wait",
        "--timeout",
        "900",
        "--dsc",
        dsc.to_str().expect("utf-8 path"),
    ]);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(0), "stdout:\n{so}\nstderr:\n{se}");
    assert!(
        !se.contains('\x1b'),
        "no terminal escapes when stderr is not a terminal:\n{se}"
    );
    assert!(se.contains("lockstep-ops 1.0"), "{se}");
    assert!(se.contains("ship — 2 of 2 builders"), "{se}");
    for a in &c.agents {
        // Each agent's phases appear as plain lines, ending in done with its duration.
        let lines: Vec<&str> = se.lines().filter(|l| l.contains(&a.name)).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" done") && l.contains("after ")),
            "no done line for {}:\n{se}",
            a.name
        );
        assert!(
            lines.iter().any(|l| l.contains("building")),
            "no building line for {}:\n{se}",
            a.name
        );
    }
    assert!(so.contains("lockstep-ops") && so.contains("ship"), "{so}");
    let arch = c.coordinator.host_arch.clone();

    // The overview page, as a browser renders it.
    let overview = text(&dump_dom(&format!("{}/", c.url)));
    for want in [
        "Packages",
        "lockstep-ops",
        "1.0",
        "ship",
        "2 of 2 needed",
        "Agents",
        "Trusted builders",
    ] {
        assert!(
            overview.contains(want),
            "overview lacks {want:?}:\n{overview}"
        );
    }
    for a in &c.agents {
        assert!(
            overview.contains(&a.fingerprint),
            "overview lacks {}'s fingerprint",
            a.name
        );
        assert!(
            overview.contains(&a.name),
            "overview lacks agent {}",
            a.name
        );
    }
    assert!(
        overview.contains("live"),
        "the agents are live:\n{overview}"
    );

    // The package page: evidence and decision history.
    let url = format!("{}/packages/lockstep-ops/1.0/{arch}", c.url);
    let dom = dump_dom(&url);
    let page = text(&dom);
    for want in [
        "lockstep-ops 1.0",
        "ship",
        "Quorum: 2 of 2",
        "Artifacts by builder",
        "identical artifacts",
        "Evidence",
        "clearsigned .buildinfo",
        "inclusion proof",
        "Decision history",
    ] {
        assert!(page.contains(want), "package page lacks {want:?}:\n{page}");
    }
    for a in &c.agents {
        assert!(
            page.contains(&a.fingerprint),
            "package page lacks {}'s fingerprint",
            a.name
        );
    }
    assert!(dom.contains("/api/v1/blobs/") && dom.contains("/api/v1/proof/inclusion?index="));
    // The evidence links work.
    let proof = dom
        .split("href=\"")
        .find(|s| s.starts_with("/api/v1/proof/inclusion"))
        .and_then(|s| s.split('"').next())
        .expect("an inclusion proof link")
        .replace("&amp;", "&");
    let r = reqwest::get(format!("{}{proof}", c.url))
        .await
        .expect("GET proof");
    assert_eq!(r.status(), 200, "{proof}");
    let png = screenshot(&url, "package");
    let png2 = screenshot(&format!("{}/", c.url), "overview");
    eprintln!("screenshots: {} {}", png.display(), png2.display());

    // An unknown package is a 404 page that says what to do.
    let missing = text(&dump_dom(&format!("{}/packages/nope/1/{arch}", c.url)));
    assert!(missing.contains("no package nope 1"), "{missing}");

    // /metrics agrees with what happened.
    let (_, m) = scrape(&c.url).await;
    assert_eq!(value(&m, "lockstep_packages", &[("state", "ship")]), 1.0);
    assert_eq!(
        value(&m, "lockstep_decisions_total", &[("state", "ship")]),
        1.0
    );
    assert_eq!(value(&m, "lockstep_jobs", &[("state", "dispatched")]), 1.0);
    assert_eq!(
        value(&m, "lockstep_jobs", &[("state", "undispatched")]),
        0.0
    );
    assert_eq!(value(&m, "lockstep_build_duration_seconds_count", &[]), 2.0);
    assert!(value(&m, "lockstep_build_duration_seconds_sum", &[]) > 0.0);
    // Both builders' identical .deb is stored once but linked twice.
    let blob = value(&m, "lockstep_archive_blob_bytes", &[]);
    let linked = value(&m, "lockstep_archive_linked_bytes", &[]);
    let ratio = value(&m, "lockstep_archive_dedup_ratio", &[]);
    assert!(ratio > 1.0, "dedup ratio {ratio}");
    assert!((ratio - linked / blob).abs() < 1e-9);
    for a in &c.agents {
        let q = lockstep_proto::v1::builder_queue(&a.fingerprint);
        assert_eq!(value(&m, "lockstep_queue_messages", &[("queue", &q)]), 0.0);
    }
    assert_eq!(value(&m, "lockstep_agents", &[("state", "live")]), 2.0);
    c.stop().await;
}
