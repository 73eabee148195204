//! Crash injection for the fault suite. Compiled in only with the `failpoints` feature, which
//! the test crate enables (`tests/Cargo.toml`); release builds and `cargo build --bins` never
//! contain it. `LOCKSTEP_FAILPOINT=<name>` makes the process abort at that point — no unwinding,
//! no cleanup, no further I/O, like `kill -9`.

/// Aborts the process when `LOCKSTEP_FAILPOINT` names `name`. Frames already handed to a
/// connection get a moment to leave first, so "sent but not confirmed" is what is tested.
#[cfg(feature = "failpoints")]
pub async fn hit(name: &str) {
    if std::env::var("LOCKSTEP_FAILPOINT").is_ok_and(|v| v == name) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        eprintln!("lockstep-coordinator: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Without the `failpoints` feature: nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &str) {}
