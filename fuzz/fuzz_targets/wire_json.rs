//! Job and statement JSON decoding (what agents and the coordinator accept from the wire), and
//! the `Statement::canonical_bytes` round trip: whatever decodes must re-encode to bytes that
//! decode to the same value and re-encode identically (the signed form is a fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_proto::v1::{
    AgentEvent, AttestationUpload, Decision, EnqueueRequest, FailureUpload, Job, Statement,
};

/// Decodes `data` as `T`; if that works, checks the serialise → decode → serialise fixed point.
fn round_trip<T>(data: &[u8], encode: impl Fn(&T) -> Vec<u8>)
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(v) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let bytes = encode(&v);
    let again: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "canonical bytes do not decode: {e}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(v, again, "decode(encode(v)) != v");
    assert_eq!(bytes, encode(&again), "encoding is not a fixed point");
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Statement>(data, |s| s.canonical_bytes());
    round_trip::<Job>(data, |j| serde_json::to_vec(j).expect("a job serialises"));
    round_trip::<Decision>(data, |d| d.canonical_bytes());
    // Request bodies: decoding must never panic.
    let _ = serde_json::from_slice::<AttestationUpload>(data);
    let _ = serde_json::from_slice::<FailureUpload>(data);
    let _ = serde_json::from_slice::<EnqueueRequest>(data);
    let _ = serde_json::from_slice::<AgentEvent>(data);
    if let Ok(s) = serde_json::from_slice::<Statement>(data) {
        let _ = s.artifact_set();
    }
});
