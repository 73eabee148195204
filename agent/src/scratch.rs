//! The scratch-space gate: whether the agent has room to take jobs.
//!
//! A build needs `min_free_bytes` free on the filesystem of the agent's work dir; the runtime
//! refuses to start one with less (an infrastructure error: the job is requeued). An agent whose
//! disk stays that full would take job after job only to give each back, and every return costs
//! the job one of its deliveries: the builder queues dead-letter a job at the delivery limit. So
//! the consumer asks this gate before it consumes and every [`SCRATCH_POLL`] while it runs; while
//! the answer is no it holds no consumer on its queue, the jobs wait there (or go to another
//! process of the same builder identity), and it consumes again once there is room. The gate
//! logs once when the agent stops taking jobs and once when it starts again.
//!
//! [`SCRATCH_POLL`]: crate::config::SCRATCH_POLL

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the agent takes no jobs while its disk is full, as its heartbeats say.
pub const PAUSED_SCRATCH_FULL: &str = "scratch disk full";

/// Reads the bytes an unprivileged writer may still use on the filesystem holding a path:
/// [`crate::runtime::free_bytes`], or a fake in tests.
pub type Probe = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// What the last reading said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    Room,
    Full,
    /// The free space could not be read: jobs are taken (the runtime checks again before each
    /// build), and the failure is logged once.
    Unknown,
}

/// Decides from the scratch space's free bytes whether the agent takes jobs.
pub struct ScratchGate {
    dir: PathBuf,
    min_free: u64,
    probe: Probe,
    last: Reading,
}

impl ScratchGate {
    /// A gate on the filesystem of `dir` (the agent's work root).
    pub fn new(dir: PathBuf, min_free: u64) -> ScratchGate {
        ScratchGate::with_probe(dir, min_free, Arc::new(crate::runtime::free_bytes))
    }

    /// A gate that reads free space with `probe` instead of `statvfs`.
    pub fn with_probe(dir: PathBuf, min_free: u64, probe: Probe) -> ScratchGate {
        ScratchGate {
            dir,
            min_free,
            probe,
            last: Reading::Room,
        }
    }

    /// Reads the free space now: `true` while the agent may take jobs. Logs when that changes.
    pub fn has_room(&mut self) -> bool {
        let reading = match (self.probe)(&self.dir) {
            Ok(free) if free < self.min_free => {
                if self.last != Reading::Full {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        free_bytes = free,
                        min_free_bytes = self.min_free,
                        "scratch disk full: {} free, below min_free_bytes ({}); not taking jobs until space is freed",
                        mib(free),
                        mib(self.min_free)
                    );
                }
                Reading::Full
            }
            Ok(free) => {
                if self.last == Reading::Full {
                    tracing::info!(
                        dir = %self.dir.display(),
                        free_bytes = free,
                        min_free_bytes = self.min_free,
                        "scratch disk has room again: {} free; taking jobs again",
                        mib(free)
                    );
                }
                Reading::Room
            }
            Err(e) => {
                if self.last != Reading::Unknown {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        error = %e,
                        "cannot read the scratch disk's free space; taking jobs anyway (each build checks it again)"
                    );
                }
                Reading::Unknown
            }
        };
        self.last = reading;
        reading != Reading::Full
    }

    /// Why the agent takes no jobs, as of the last reading (`None`: it takes them).
    pub fn paused(&self) -> Option<&'static str> {
        (self.last == Reading::Full).then_some(PAUSED_SCRATCH_FULL)
    }
}

/// Bytes for people, in MiB.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;

    const MIN: u64 = 32 << 20;
    /// A probe answer that stands for "statvfs failed".
    const FAILS: u64 = u64::MAX;

    /// A gate whose free space is whatever the returned cell holds.
    fn gate() -> (ScratchGate, Arc<AtomicU64>) {
        let free = Arc::new(AtomicU64::new(1 << 30));
        let f = free.clone();
        let probe: Probe = Arc::new(move |_| match f.load(Ordering::SeqCst) {
            FAILS => Err(std::io::Error::other("statvfs failed")),
            n => Ok(n),
        });
        (
            ScratchGate::with_probe(PathBuf::from("/scratch"), MIN, probe),
            free,
        )
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `f` logged.
    fn logged(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_full_disk_stops_taking_jobs_and_room_resumes_logging_each_change_once() {
        let (mut g, free) = gate();
        let log = logged(|| {
            assert!(g.has_room());
            assert_eq!(g.paused(), None);
            // Below the minimum, however long it stays there: no jobs, one line.
            for n in [10 << 20, MIN - 1, 0] {
                free.store(n, Ordering::SeqCst);
                assert!(!g.has_room(), "{n} bytes free");
                assert_eq!(g.paused(), Some(PAUSED_SCRATCH_FULL));
            }
            // Exactly the minimum is enough, as for the runtime's own check.
            free.store(MIN, Ordering::SeqCst);
            assert!(g.has_room());
            assert_eq!(g.paused(), None);
            free.store(1 << 30, Ordering::SeqCst);
            assert!(g.has_room());
        });
        assert_eq!(
            log.matches("not taking jobs until space is freed").count(),
            1,
            "{log}"
        );
        assert_eq!(log.matches("taking jobs again").count(), 1, "{log}");
        assert!(log.contains("10.0 MiB free"), "{log}");
        assert!(log.contains("below min_free_bytes (32.0 MiB)"), "{log}");
    }

    #[test]
    fn unreadable_free_space_does_not_stop_the_agent() {
        let (mut g, free) = gate();
        let log = logged(|| {
            free.store(FAILS, Ordering::SeqCst);
            assert!(g.has_room());
            assert!(g.has_room());
            assert_eq!(g.paused(), None);
            free.store(0, Ordering::SeqCst);
            assert!(!g.has_room());
            free.store(FAILS, Ordering::SeqCst);
            assert!(g.has_room());
        });
        assert_eq!(
            log.matches("cannot read the scratch disk").count(),
            2,
            "{log}"
        );
    }

    #[test]
    fn the_real_probe_reads_this_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(ScratchGate::new(dir.path().to_path_buf(), 0).has_room());
        let mut g = ScratchGate::new(dir.path().to_path_buf(), u64::MAX);
        assert!(!g.has_room(), "no filesystem has u64::MAX bytes free");
    }
}
