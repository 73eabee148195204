//! `POST /api/v1/blobs`: several blobs in one multipart request, stored as one archive batch.
//! A good batch is stored in part order, readable and deduplicated; every kind of bad batch is
//! refused with a message naming the problem (and the part), and nothing of it is stored; the
//! agent's client streams files and bytes through it and classifies a refusal as one.

#[path = "decisions_support/mod.rs"]
mod decisions_support;

use decisions_support::Fixture;
use lockstep_agent::client::{BlobSource, Client, ClientError};
use lockstep_proto::digest::Sha256Digest;
use serde_json::Value;

/// The coordinator's per-blob limit in these tests: room for the 8 MiB blobs, small enough to go
/// over cheaply.
const MAX_BLOB: u64 = 9 * 1024 * 1024;

const BOUNDARY: &str = "lockstep-test-boundary";

async fn fixture(test: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "default_threshold = 1\n").expect("policy");
    Fixture::start_configured(test, dir, policy, |cfg| cfg.max_blob_bytes = MAX_BLOB).await
}

/// `len` bytes of a pattern that differs with `seed` (and never contains a boundary).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|j| (j.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7919)) % 251) as u8)
        .collect()
}

/// One multipart part with field name `name`.
fn part(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut p = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    p.extend_from_slice(bytes);
    p.extend_from_slice(b"\r\n");
    p
}

/// A part named by the digest of its bytes.
fn blob(bytes: &[u8]) -> Vec<u8> {
    part(&Sha256Digest::of(bytes).to_hex(), bytes)
}

/// Parts followed by the closing boundary.
fn body(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut b = parts.concat();
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn multipart() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

async fn post(f: &Fixture, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = f
        .http
        .post(format!("{}/api/v1/blobs", f.url))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /api/v1/blobs answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(f: &Fixture, d: &Sha256Digest) -> (u16, Vec<u8>) {
    let r = f
        .http
        .get(format!("{}/api/v1/blobs/{d}", f.url))
        .send()
        .await
        .expect("GET blob");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body").to_vec())
}

/// Registered blobs (rows, not files).
fn registered(f: &Fixture) -> u64 {
    f.service.archive.stats().expect("stats").blobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_in_part_order_readable_and_deduplicated_on_a_second_upload() {
    let f = fixture("batch-ok").await;
    let big = pattern(8 * 1024 * 1024, 1);
    let blobs: Vec<Vec<u8>> = vec![
        b"alpha".to_vec(),
        big.clone(),
        Vec::new(),
        b"alpha".to_vec(), // twice in one batch: stored once
        b"omega".to_vec(),
    ];
    let (s, v) = post(
        &f,
        &multipart(),
        body(&blobs.iter().map(|b| blob(b)).collect::<Vec<_>>()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let answered = v["blobs"].as_array().expect("blobs");
    assert_eq!(answered.len(), blobs.len(), "{v}");
    for (i, (b, a)) in blobs.iter().zip(answered).enumerate() {
        assert_eq!(a["sha256"], Sha256Digest::of(b).to_hex(), "part {i}: {v}");
        assert_eq!(a["size"], b.len() as u64, "part {i}: {v}");
        assert_eq!(
            a["created"],
            i != 3,
            "part {i}: only the repeat is not new: {v}"
        );
        let (s, got) = get(&f, &Sha256Digest::of(b)).await;
        assert_eq!(s, 200);
        assert!(got == *b, "part {i}: GET returns the uploaded bytes");
    }
    assert_eq!(registered(&f), 4, "four distinct blobs registered");

    // Again, with one new blob: the known ones are reported as not created.
    let (s, v) = post(
        &f,
        &multipart(),
        body(&[blob(b"omega"), blob(b"new"), blob(&big)]),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let created: Vec<&Value> = v["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .map(|b| &b["created"])
        .collect();
    assert_eq!(created, [false, true, false], "{v}");
    assert_eq!(registered(&f), 5);
    let tmp = f.service.archive.blob_root().join("tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "no temp file left"
    );
    f.stop().await;
}

/// A refused request: its status, what its message must say, and the good blobs it carried.
struct Bad {
    case: &'static str,
    content_type: String,
    body: Vec<u8>,
    status: u16,
    says: Vec<String>,
    good: Vec<Vec<u8>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_is_refused_naming_the_problem_and_nothing_of_it_is_stored() {
    let f = fixture("batch-bad").await;
    let good = |case: &str| format!("a good blob sent with the bad batch {case:?}").into_bytes();
    let other = Sha256Digest::of(b"other bytes").to_hex();
    let too_big = pattern(MAX_BLOB as usize + 1, 2);
    let big_good = pattern(8 * 1024 * 1024, 3);
    let mut cases = vec![
        Bad {
            case: "not multipart",
            content_type: "application/octet-stream".into(),
            body: body(&[blob(&good("not multipart"))]),
            status: 400,
            says: vec![
                "multipart/form-data".into(),
                "application/octet-stream".into(),
            ],
            good: vec![good("not multipart")],
        },
        Bad {
            case: "no boundary",
            content_type: "multipart/form-data".into(),
            body: body(&[blob(&good("no boundary"))]),
            status: 400,
            says: vec!["boundary".into()],
            good: vec![good("no boundary")],
        },
        Bad {
            case: "name is not a digest",
            content_type: multipart(),
            body: body(&[blob(&good("name")), part("hello_1.0_amd64.deb", b"x")]),
            status: 400,
            says: vec![
                "part 2".into(),
                "hello_1.0_amd64.deb".into(),
                "not a SHA-256".into(),
            ],
            good: vec![good("name")],
        },
        Bad {
            case: "no name",
            content_type: multipart(),
            body: body(&[
                blob(&good("no name")),
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nbytes\r\n")
                    .into_bytes(),
            ]),
            status: 400,
            says: vec!["part 2".into(), "no name".into()],
            good: vec![good("no name")],
        },
        Bad {
            case: "bytes do not match the name",
            content_type: multipart(),
            body: body(&[blob(&good("mismatch")), part(&other, b"these bytes")]),
            status: 422,
            says: vec!["part 2".into(), other.clone(), "hash to".into()],
            good: vec![good("mismatch")],
        },
        Bad {
            case: "a part over the size limit",
            content_type: multipart(),
            body: body(&[blob(&good("too large")), blob(&too_big)]),
            status: 413,
            says: vec!["part 2".into(), format!("size limit of {MAX_BLOB} bytes")],
            good: vec![good("too large")],
        },
        Bad {
            case: "body cut off inside a part",
            content_type: multipart(),
            body: {
                let mut b = blob(&good("cut"));
                let whole = blob(b"the part that is cut off");
                b.extend_from_slice(&whole[..whole.len() - 10]);
                b
            },
            status: 400,
            says: vec!["part 2".into(), "malformed or incomplete".into()],
            good: vec![good("cut")],
        },
        Bad {
            case: "no closing boundary",
            content_type: multipart(),
            body: [blob(&good("unclosed 1")), blob(&good("unclosed 2"))].concat(),
            status: 400,
            says: vec!["malformed or incomplete".into()],
            good: vec![good("unclosed 1"), good("unclosed 2")],
        },
        Bad {
            case: "not multipart at all",
            content_type: multipart(),
            body: b"just some text".to_vec(),
            status: 400,
            says: vec!["part 1".into(), "malformed or incomplete".into()],
            good: vec![],
        },
        Bad {
            case: "no parts",
            content_type: multipart(),
            body: body(&[]),
            status: 400,
            says: vec!["no parts".into()],
            good: vec![],
        },
        // The coordinator stops reading at part 1; the client still gets the answer.
        Bad {
            case: "bad name before a big part",
            content_type: multipart(),
            body: body(&[part("nope", b"x"), blob(&big_good)]),
            status: 400,
            says: vec!["part 1".into(), "\"nope\"".into()],
            good: vec![big_good.clone()],
        },
    ];
    let mut many = vec![blob(&good("too many parts"))];
    many.extend((0..10_000).map(|_| blob(b"")));
    cases.push(Bad {
        case: "too many parts",
        content_type: multipart(),
        body: body(&many),
        status: 413,
        says: vec!["part 10001".into(), "more than 10000 parts".into()],
        good: vec![good("too many parts"), Vec::new()],
    });

    let before = registered(&f);
    for c in cases {
        let (s, v) = post(&f, &c.content_type, c.body).await;
        assert_eq!(s, c.status, "{}: {v}", c.case);
        let msg = v["error"].as_str().unwrap_or_default();
        for needle in &c.says {
            assert!(
                msg.contains(needle.as_str()),
                "{}: {needle:?} in {msg:?}",
                c.case
            );
        }
        for g in &c.good {
            let d = Sha256Digest::of(g);
            assert_eq!(
                get(&f, &d).await.0,
                404,
                "{}: {d} must not be stored",
                c.case
            );
        }
        assert_eq!(registered(&f), before, "{}: nothing registered", c.case);
        let tmp = f.service.archive.blob_root().join("tmp");
        assert_eq!(
            std::fs::read_dir(&tmp).expect("tmp").count(),
            0,
            "{}: no temp file left",
            c.case
        );
    }
    // The same good blobs in a well-formed batch are new: none was stored by a refused one.
    let (s, v) = post(
        &f,
        &multipart(),
        body(&[blob(&good("name")), blob(&big_good)]),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["blobs"][0]["created"], true, "{v}");
    assert_eq!(v["blobs"][1]["created"], true, "{v}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_client_streams_files_and_bytes_in_one_batch_and_a_refusal_is_not_transient() {
    let f = fixture("batch-client").await;
    let work = tempfile::tempdir().expect("tempdir");
    let big = pattern(8 * 1024 * 1024, 4);
    let (big_path, small_path) = (work.path().join("big.deb"), work.path().join("small.deb"));
    std::fs::write(&big_path, &big).expect("write");
    std::fs::write(&small_path, b"small package").expect("write");
    let log = b"the build log\n".to_vec();
    let client = Client::new(&f.url).expect("client");
    let items = vec![
        (Sha256Digest::of(&big), BlobSource::File(big_path)),
        (
            Sha256Digest::of(b"small package"),
            BlobSource::File(small_path),
        ),
        (
            Sha256Digest::of(&log),
            BlobSource::Bytes(log.clone().into()),
        ),
    ];
    client.upload_batch(&items).await.expect("uploaded");
    for (bytes, (d, _)) in [&big[..], &b"small package"[..], &log[..]]
        .iter()
        .zip(&items)
    {
        let (s, got) = get(&f, d).await;
        assert_eq!(s, 200);
        assert!(got == *bytes, "{d} reads back as uploaded");
    }
    assert_eq!(registered(&f), 3);

    // A blob whose bytes do not match its digest: refused (not retried), naming the part.
    let wrong = Sha256Digest::of(b"other bytes");
    let bad = vec![
        (
            Sha256Digest::of(b"fine"),
            BlobSource::Bytes(b"fine".to_vec().into()),
        ),
        (
            wrong,
            BlobSource::Bytes(b"not the other bytes".to_vec().into()),
        ),
    ];
    match client.upload_batch(&bad).await {
        Err(ClientError::Refused(m)) => {
            assert!(
                m.contains("422") && m.contains("part 2") && m.contains(&wrong.to_hex()),
                "{m}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(get(&f, &Sha256Digest::of(b"fine")).await.0, 404);
    assert_eq!(registered(&f), 3);
    f.stop().await;
}
