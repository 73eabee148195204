//! Attestations of one package arriving at the same moment (issue 7, P3): an attestation that
//! changes no decision lets go of its package's lock once it is queued for the archive's group
//! commit, and the next attestation of that package counts its vote while it is still in flight.
//! Whatever the interleaving, every package must end shipped with one linear chain of decisions
//! counting every vote, and a redelivery racing its original must be answered as one.

mod decisions_support;

use decisions_support::*;
use lockstep_proto::v1::{Decision, State};

const PACKAGES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attestations_arriving_together_ship_once_each_with_a_linear_decision_chain() {
    let builders = [
        Builder::new("builder-1"),
        Builder::new("builder-2"),
        Builder::new("builder-3"),
    ];
    let f = Fixture::start("concurrent", &builders.iter().collect::<Vec<_>>(), 2).await;
    let mut jobs = Vec::new();
    let mut uploads = Vec::new();
    for i in 0..PACKAGES {
        let name = format!("conc{i:02}");
        let job = f.enqueue(&name, "1.0-1").await;
        let deb = build_deb(f.dir.path(), &name, "1.0-1", "same bytes for everyone");
        let file = format!("{name}_1.0-1_all.deb");
        for b in &builders {
            let (_, up) = f.prepare(b, &job, &[(file.as_str(), &deb)]).await;
            uploads.push((i, b.name.clone(), up));
        }
        jobs.push(job);
    }
    // Every builder's attestation of every package at once, and builder-1's twice (a
    // redelivery racing its original).
    let redeliveries: Vec<_> = uploads
        .iter()
        .filter(|(_, b, _)| b == "builder-1")
        .cloned()
        .collect();
    let posts: Vec<_> = uploads
        .into_iter()
        .chain(redeliveries)
        .map(|(i, b, up)| {
            let (http, url) = (f.http.clone(), f.url.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/api/v1/attestations"))
                    .json(&up)
                    .send()
                    .await
                    .expect("POST attestation");
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.expect("JSON answer");
                (i, b, status, body)
            })
        })
        .collect();
    let mut created = vec![[0usize; 3]; PACKAGES];
    for p in posts {
        let (i, b, status, body) = p.await.expect("request task");
        assert!(
            status == 201 || status == 200,
            "{b} on package {i}: {status} {body}"
        );
        assert_eq!(body["created"], status == 201, "{body}");
        let n: usize = b["builder-".len()..].parse().expect("builder number");
        created[i][n - 1] += usize::from(status == 201);
    }
    assert!(
        created.iter().all(|c| *c == [1, 1, 1]),
        "each attestation is stored exactly once: {created:?}"
    );

    let fprs: std::collections::BTreeSet<String> = builders.iter().map(|b| b.fpr()).collect();
    for job in &jobs {
        let records = f
            .service
            .archive
            .records_for(&job.source, &job.version, &job.arch, None)
            .expect("records");
        let attestations = records.iter().filter(|r| r.kind == "attestation").count();
        assert_eq!(attestations, 3, "{}: one record per builder", job.source);
        let decisions: Vec<_> = records.iter().filter(|r| r.kind == "decision").collect();
        assert!(!decisions.is_empty(), "{}: no decision at all", job.source);
        let mut previous = None;
        for r in &decisions {
            let d: Decision = serde_json::from_slice(&r.body).expect("a decision");
            assert_eq!(
                d.supersedes, previous,
                "{}: decisions form one chain, each superseding the one before",
                job.source
            );
            assert_eq!(d.state, State::Ship, "{}: {}", job.source, d.reason);
            previous = Some(r.body_sha256);
        }
        let last: Decision =
            serde_json::from_slice(&decisions[decisions.len() - 1].body).expect("a decision");
        let counted: std::collections::BTreeSet<String> = last.counted.into_iter().collect();
        assert_eq!(
            counted, fprs,
            "{}: the last decision counts every builder",
            job.source
        );
        assert!(
            decisions.len() <= 2,
            "{}: a ship, then at most one more as the third vote is counted: {} decisions",
            job.source,
            decisions.len()
        );
    }
    let report = f.service.archive.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    f.stop().await;
}
