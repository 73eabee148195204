//! Group commit: appends that arrive while a commit is in progress share the next one.
//!
//! A caller queues its work and waits. A caller that finds no commit in progress becomes the
//! leader: it takes everything queued (up to a cap), runs it as one unit of work (for the archive:
//! one SQLite transaction, one signed checkpoint, one fsync), hands every caller its own result and
//! wakes them. Callers that arrived during that commit are taken by the next leader, one of
//! themselves, so a caller waits at most for the commit in progress and then its own. Nothing is
//! delayed on purpose: a lone caller commits at once, and under load the batch grows by itself to
//! whatever arrived during one fsync.

use std::collections::{HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A queue of work items of type `J`, each answered with an `R`.
pub(crate) struct GroupCommit<J, R> {
    state: Mutex<State<J, R>>,
    wake: Condvar,
    max_batch: usize,
}

struct State<J, R> {
    next_ticket: u64,
    queue: VecDeque<(u64, J)>,
    done: HashMap<u64, R>,
    committing: bool,
}

impl<J, R> GroupCommit<J, R> {
    /// A group commit taking at most `max_batch` callers' work per commit.
    pub(crate) fn new(max_batch: usize) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                next_ticket: 0,
                queue: VecDeque::new(),
                done: HashMap::new(),
                committing: false,
            }),
            wake: Condvar::new(),
            max_batch: max_batch.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J, R>> {
        // The state is only changed in short, non-panicking sections (the commit itself runs
        // unlocked and under catch_unwind), so a poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job` in a group and returns its own result. `commit` gets the jobs of one group in
    /// arrival order and returns one result per job, in that order; a missing result, or a panic
    /// in `commit`, answers every job of that group with `failed()` (and the panic goes on in the
    /// leader's thread).
    pub(crate) fn submit(
        &self,
        job: J,
        commit: impl Fn(Vec<J>) -> Vec<R>,
        failed: impl Fn() -> R,
    ) -> R {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back((ticket, job));
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                return r;
            }
            if st.committing {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead the next group; it contains this job unless the queue is longer than a batch,
            // in which case a later round does.
            st.committing = true;
            let n = st.queue.len().min(self.max_batch);
            let (tickets, jobs): (Vec<u64>, Vec<J>) = st.queue.drain(..n).unzip();
            drop(st);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| commit(jobs)));
            st = self.lock();
            st.committing = false;
            match outcome {
                Ok(results) => {
                    let mut results = results.into_iter();
                    for t in tickets {
                        let r = results.next().unwrap_or_else(&failed);
                        st.done.insert(t, r);
                    }
                    self.wake.notify_all();
                }
                Err(payload) => {
                    for t in tickets {
                        if t != ticket {
                            st.done.insert(t, failed());
                        }
                    }
                    self.wake.notify_all();
                    drop(st);
                    panic::resume_unwind(payload);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn every_caller_gets_its_own_result_and_concurrent_callers_share_commits() {
        let g = Arc::new(GroupCommit::<u64, u64>::new(1000));
        let commits = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..32u64)
            .map(|i| {
                let (g, commits) = (g.clone(), commits.clone());
                std::thread::spawn(move || {
                    (0..20u64)
                        .map(|j| {
                            let job = i * 1000 + j;
                            let got = g.submit(
                                job,
                                |jobs| {
                                    commits.fetch_add(1, Ordering::SeqCst);
                                    std::thread::sleep(Duration::from_millis(2));
                                    jobs.into_iter().map(|x| x * 2).collect()
                                },
                                || u64::MAX,
                            );
                            assert_eq!(got, job * 2);
                            got
                        })
                        .count()
                })
            })
            .collect();
        let answered: usize = threads
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .sum();
        assert_eq!(answered, 32 * 20);
        let commits = commits.load(Ordering::SeqCst);
        assert!(
            commits < answered,
            "{commits} commits for {answered} jobs: nothing was grouped"
        );
    }

    #[test]
    fn a_short_answer_fails_the_unanswered_jobs_and_a_cap_splits_groups() {
        let g = GroupCommit::<u32, Result<u32, ()>>::new(1);
        let r = g.submit(7, |_| Vec::new(), || Err(()));
        assert_eq!(r, Err(()));
        let r = g.submit(8, |jobs| jobs.into_iter().map(Ok).collect(), || Err(()));
        assert_eq!(r, Ok(8));
    }

    #[test]
    fn a_panicking_commit_does_not_wedge_the_queue() {
        let g = GroupCommit::<u32, u32>::new(10);
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            g.submit(1, |_| panic!("commit failed"), || 0)
        }));
        assert!(caught.is_err());
        assert_eq!(g.submit(2, |jobs| jobs, || 0), 2);
    }
}
