//! T21: three builders, one artifact differs → hold naming the dissenter (no majority rule), and
//! the mismatch evidence (`lockstep diff`, `GET /api/v1/diff/...`) names the differing file inside
//! the `.deb`, the control field, and links an archived diffoscope report.

mod decisions_support;

use std::process::Command;

use decisions_support::*;

/// Installs diffoscope when missing (Debian package, as the brief says); true when available.
fn ensure_diffoscope() -> bool {
    let have = || {
        Command::new("diffoscope")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return true;
    }
    let _ = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "diffoscope"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    have()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_differing_builder_holds_names_the_dissenter_and_the_diff_names_the_file() {
    let diffoscope = ensure_diffoscope();
    let b1 = Builder::new("b1");
    let b2 = Builder::new("b2");
    let b3 = Builder::new("b3");
    let fx = Fixture::start("t21", &[&b1, &b2, &b3], 2).await;
    let job = fx.enqueue("t21-hello", "1.0").await;
    let work = tempfile::tempdir().expect("tempdir");
    let good = build_deb(work.path(), "t21-hello", "1.0", "hello");
    let evil = build_deb(work.path(), "t21-hello", "1.0", "hello, backdoored");
    let name = "t21-hello_1.0_all.deb";
    assert_eq!(fx.attest(&b1, &job, &[(name, &good)]).await.0, 201);
    let (s, v) = fx.attest(&b3, &job, &[(name, &evil)]).await;
    assert_eq!((s, v["state"].as_str()), (201, Some("hold")), "{v}");
    let (s, v) = fx.attest(&b2, &job, &[(name, &good)]).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (201, Some("hold")),
        "2 of 3 agree, still hold: {v}"
    );

    let decisions = fx.decisions(&job).await;
    let d = &decisions.last().expect("decision")["decision"];
    assert_eq!(d["state"], "hold");
    assert_eq!(d["dissenters"], serde_json::json!([b3.fpr()]), "{d}");
    assert!(
        d["reason"].as_str().unwrap_or("").contains(&b3.fpr()[24..]),
        "{d}"
    );
    assert_eq!(
        d["artifacts"],
        serde_json::json!([]),
        "nothing agreed to ship"
    );

    // The HTTP diff.
    let started = std::time::Instant::now();
    let (s, diff) = fx
        .get_json(&format!(
            "/api/v1/diff/{}/{}/{}",
            job.source, job.version, job.arch
        ))
        .await;
    let diff_secs = started.elapsed().as_secs_f64();
    assert_eq!(s, 200, "{diff}");
    let art = &diff["artifacts"][0];
    assert_eq!(art["name"], name);
    assert_eq!(art["agree"], false);
    let variants = art["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 2);
    assert_eq!(variants[0]["builders"].as_array().map(Vec::len), Some(2));
    assert_eq!(variants[1]["builders"][0]["fingerprint"], b3.fpr());
    assert_eq!(variants[1]["builders"][0]["name"], "b3");
    let cmp = &art["comparisons"][0];
    assert!(cmp["error"].is_null(), "{cmp}");
    let files = cmp["files"].as_array().expect("files");
    let script = files
        .iter()
        .find(|f| f["path"] == "./usr/bin/t21-hello")
        .unwrap_or_else(|| panic!("the differing script is named: {cmp}"));
    assert_eq!(script["member"], "data");
    assert_ne!(script["a"]["sha256"], script["b"]["sha256"]);
    assert_eq!(script["a"]["mode"], "0755");
    assert!(
        files.iter().all(|f| f["path"] != "./usr/bin"),
        "equal entries are not listed"
    );
    let members: Vec<&str> = cmp["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(
        members.iter().any(|m| m.starts_with("data.tar")),
        "{members:?}"
    );
    assert!(!members.contains(&"debian-binary"), "{members:?}");
    assert!(
        cmp["control_fields"]
            .as_array()
            .expect("fields")
            .iter()
            .any(|f| f["field"] == "Description"),
        "{cmp}"
    );

    // diffoscope's report is archived as a blob and an immutable diff-report record.
    if diffoscope {
        let report = cmp["diffoscope_report"].as_str().expect("report linked");
        let bytes = fx
            .http
            .get(format!("{}/api/v1/blobs/{report}", fx.url))
            .send()
            .await
            .expect("GET report")
            .bytes()
            .await
            .expect("bytes");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("backdoored"),
            "diffoscope shows the change: {text}"
        );
        let records = fx
            .service
            .archive
            .records_for(&job.source, &job.version, &job.arch, Some("diff-report"))
            .expect("records");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].blobs[0].sha256.to_hex(), report);
        // A second request reuses the stored report.
        let (_, again) = fx
            .get_json(&format!(
                "/api/v1/diff/{}/{}/{}",
                job.source, job.version, job.arch
            ))
            .await;
        assert_eq!(
            again["artifacts"][0]["comparisons"][0]["diffoscope_report"],
            report
        );
        let records = fx
            .service
            .archive
            .records_for(&job.source, &job.version, &job.arch, Some("diff-report"))
            .expect("records");
        assert_eq!(records.len(), 1, "stored once");
    } else {
        eprintln!("diffoscope could not be installed; its part of this test was skipped");
    }
    eprintln!("diff with diffoscope took {diff_secs:.1} s");

    // The command line.
    let out = Command::new(lockstep_tests::lockstep_bin("lockstep"))
        .args([
            "--coordinator",
            &fx.url,
            "diff",
            &job.source,
            &job.version,
            &job.arch,
        ])
        .output()
        .expect("lockstep diff runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "differences exit 3: {text}");
    assert!(text.contains("./usr/bin/t21-hello"), "{text}");
    assert!(
        text.contains("b3 ("),
        "names the dissenting builder: {text}"
    );
    fx.stop().await;
}
