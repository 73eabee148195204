//! `GET /api/v1/status`, the web overview and `/metrics` over many keys: the status is streamed
//! in chunks (memory stays flat at 100,000 keys, see P7 in docs/performance.md) and must still be
//! one JSON array, row for row the service's own status; the overview counts every package and
//! lists one page; the metrics count the same rows without collecting them.

mod decisions_support;
mod ops_support;

use decisions_support::*;
use ops_support::{scrape, value};
use serde_json::Value;

/// Enough keys (about 260 bytes of JSON each) for the streamed body to span 64 KiB chunks.
const KEYS: usize = 320;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_many_keys_streams_as_one_array_equal_to_the_service_rows() {
    let b = Builder::new("builder-1");
    let f = Fixture::start("status-many", &[&b], 1).await;
    let mut jobs = Vec::new();
    for i in 0..KEYS {
        jobs.push(f.enqueue(&format!("pkg{i:04}"), "1.0-1").await);
    }
    // One key decided, so the rows are not all alike.
    let deb = build_deb(f.dir.path(), "pkg0007", "1.0-1", "hello");
    let (s, v) = f
        .attest(&b, &jobs[7], &[("pkg0007_1.0-1_all.deb", &deb)])
        .await;
    assert_eq!(s, 201, "attest: {v}");

    let r = f
        .http
        .get(format!("{}/api/v1/status", f.url))
        .send()
        .await
        .expect("GET status");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|h| h.to_str().ok()),
        Some("application/json")
    );
    let body = r.bytes().await.expect("status body");
    assert!(
        body.len() > 64 * 1024,
        "{} bytes: too few keys to cross a chunk boundary",
        body.len()
    );
    let streamed: Value = serde_json::from_slice(&body).expect("the streamed status parses");
    let rows = streamed.as_array().expect("an array");
    assert_eq!(rows.len(), KEYS);
    let own = serde_json::to_value(f.service.status(None).expect("service status"))
        .expect("status rows serialise");
    assert_eq!(&streamed, &own, "streamed rows differ from the service's");
    let ship: Vec<&Value> = rows.iter().filter(|r| r["state"] == "ship").collect();
    assert_eq!(ship.len(), 1);
    assert_eq!(ship[0]["source"], "pkg0007");

    // One source only: still an array, of that source's row.
    let (s, one) = f.get_json("/api/v1/status?source=pkg0100").await;
    assert_eq!(s, 200);
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(one[0]["source"], "pkg0100");
    // An unknown source: an empty array, not an error.
    let (s, none) = f.get_json("/api/v1/status?source=nosuch").await;
    assert_eq!(s, 200);
    assert_eq!(none, Value::Array(vec![]));

    // The web overview counts every package and lists one page of them.
    let page = |path: &str| {
        let url = format!("{}{path}", f.url);
        let http = f.http.clone();
        async move {
            let r = http.get(url).send().await.expect("GET page");
            assert_eq!(r.status().as_u16(), 200);
            r.text().await.expect("page body")
        }
    };
    let first = page("/").await;
    assert!(first.contains(&format!("<b>{KEYS}</b>packages")), "{first}");
    assert!(first.contains("<b>1</b>ship"));
    assert!(first.contains(">pkg0000<") && first.contains(">pkg0319<"));
    let tail = page("/?from=300").await;
    assert!(
        tail.contains(&format!("Packages 301–{KEYS} of {KEYS}")),
        "{tail}"
    );
    assert!(tail.contains("href=\"/?from=0\">previous 500"));
    assert!(tail.contains(">pkg0300<") && !tail.contains(">pkg0299<"));
    assert!(tail.contains(&format!("<b>{KEYS}</b>packages")));
    let beyond = page("/?from=9999").await;
    assert!(beyond.contains(&format!(
        "No packages from number 10000 on: there are {KEYS}"
    )));

    // The metrics count the same rows.
    let (_, m) = scrape(&f.url).await;
    assert_eq!(
        value(&m, "lockstep_packages", &[("state", "pending")]),
        (KEYS - 1) as f64
    );
    assert_eq!(value(&m, "lockstep_packages", &[("state", "ship")]), 1.0);
    f.stop().await;
}
