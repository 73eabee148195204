//! Group commit: appends that arrive while a commit is in progress share the next one.
//!
//! A caller queues its work and waits. A caller that finds no commit in progress becomes the
//! leader: it takes everything queued (up to a cap), runs it as one unit of work (for the archive:
//! one SQLite transaction, one signed checkpoint, one fsync), hands every caller its own result and
//! wakes them. Callers that arrived during that commit are taken by the next leader, one of
//! themselves, so a caller waits at most for the commit in progress and then its own. Nothing is
//! delayed on purpose: a lone caller commits at once, and under load the batch grows by itself to
//! whatever arrived during one fsync.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A queue of work items of type `J`, each answered with an `R`.
pub(crate) struct GroupCommit<J, R> {
    state: Mutex<State<J, R>>,
    max_batch: usize,
}

struct State<J, R> {
    queue: VecDeque<(Arc<Waiter<R>>, J)>,
    /// A leader is committing (or has been chosen and is about to).
    committing: bool,
}

/// One caller's mailbox: its answer, or the news that it leads the next group. Each caller
/// sleeps on its own condition variable, so a commit wakes exactly the callers it answered and
/// the next leader, not every waiting thread (with 32 callers that wake-up storm cost ~5 % of
/// the CPU; issue 7, P3).
struct Waiter<R> {
    slot: Mutex<Slot<R>>,
    wake: Condvar,
}

struct Slot<R> {
    result: Option<R>,
    lead: bool,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is short and does not panic (the commit itself runs unlocked
    // and under catch_unwind), so a poisoned lock still guards consistent state.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<R> Waiter<R> {
    fn new() -> Self {
        Waiter {
            slot: Mutex::new(Slot {
                result: None,
                lead: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn answer(&self, r: R) {
        relock(&self.slot).result = Some(r);
        self.wake.notify_one();
    }

    fn promote(&self) {
        relock(&self.slot).lead = true;
        self.wake.notify_one();
    }

    /// Sleeps until answered (`Ok`) or made the leader (`Err(())`).
    fn wait(&self) -> Result<R, ()> {
        let mut slot = relock(&self.slot);
        loop {
            if let Some(r) = slot.result.take() {
                return Ok(r);
            }
            if slot.lead {
                slot.lead = false;
                return Err(());
            }
            slot = self.wake.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<J, R> GroupCommit<J, R> {
    /// A group commit taking at most `max_batch` callers' work per commit.
    pub(crate) fn new(max_batch: usize) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                committing: false,
            }),
            max_batch: max_batch.max(1),
        }
    }

    /// Runs `job` in a group and returns its own result. `commit` gets the jobs of one group in
    /// arrival order and returns one result per job, in that order; a missing result, or a panic
    /// in `commit`, answers every job of that group with `failed()` (and the panic goes on in the
    /// leader's thread).
    #[cfg(test)]
    pub(crate) fn submit(
        &self,
        job: J,
        commit: impl Fn(Vec<J>) -> Vec<R>,
        failed: impl Fn() -> R,
    ) -> R {
        self.submit_then(job, || {}, commit, failed)
    }

    /// Runs `job` in a group like `submit`, and runs `queued` once the job is in the queue and
    /// before waiting for its commit: whatever is submitted after `queued` started is committed
    /// after this job, in the same group or a later one. `queued` must be short and must not wait
    /// for other callers' commits (this caller may have to lead the next group, which waits for
    /// `queued` to return). A panic in `queued` goes on once the job is answered.
    pub(crate) fn submit_then(
        &self,
        job: J,
        queued: impl FnOnce(),
        commit: impl Fn(Vec<J>) -> Vec<R>,
        failed: impl Fn() -> R,
    ) -> R {
        let me = Arc::new(Waiter::new());
        let lead_now = {
            let mut st = relock(&self.state);
            st.queue.push_back((me.clone(), job));
            !std::mem::replace(&mut st.committing, true)
        };
        match panic::catch_unwind(AssertUnwindSafe(queued)) {
            Ok(()) => self.answer_of(me, lead_now, commit, failed),
            Err(payload) => {
                let _ = self.answer_of(me, lead_now, commit, failed);
                panic::resume_unwind(payload)
            }
        }
    }

    /// Waits for the answer to `me`'s job, leading groups when it is this caller's turn.
    fn answer_of(
        &self,
        me: Arc<Waiter<R>>,
        lead_now: bool,
        commit: impl Fn(Vec<J>) -> Vec<R>,
        failed: impl Fn() -> R,
    ) -> R {
        if !lead_now {
            // Answered by another leader, or (Err) made the leader of the next group.
            if let Ok(r) = me.wait() {
                return r;
            }
        }
        loop {
            // The leader: take the oldest queued work (its own job is in it unless the queue is
            // longer than a batch, in which case a later group takes it).
            let (waiters, jobs): (Vec<Arc<Waiter<R>>>, Vec<J>) = {
                let mut st = relock(&self.state);
                let n = st.queue.len().min(self.max_batch);
                st.queue.drain(..n).unzip()
            };
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| commit(jobs)));
            let mut mine = None;
            let panicked = match outcome {
                Ok(results) => {
                    let mut results = results.into_iter();
                    for w in &waiters {
                        let r = results.next().unwrap_or_else(&failed);
                        if Arc::ptr_eq(w, &me) {
                            mine = Some(r);
                        } else {
                            w.answer(r);
                        }
                    }
                    None
                }
                Err(payload) => {
                    for w in waiters.iter().filter(|w| !Arc::ptr_eq(w, &me)) {
                        w.answer(failed());
                    }
                    Some(payload)
                }
            };
            // Hand over: the oldest waiting caller leads the next group, or nobody commits.
            {
                let mut st = relock(&self.state);
                if panicked.is_some() {
                    // This thread unwinds: a job of its own still queued goes with it.
                    st.queue.retain(|(w, _)| !Arc::ptr_eq(w, &me));
                }
                match st.queue.front() {
                    Some((next, _)) if !Arc::ptr_eq(next, &me) => next.promote(),
                    // Our own job is next (only without a panic): lead again.
                    Some(_) => continue,
                    None => st.committing = false,
                }
            }
            if let Some(payload) = panicked {
                panic::resume_unwind(payload);
            }
            if let Some(r) = mine {
                return r;
            }
            // Our job is still queued behind a full batch: wait like everyone else.
            match me.wait() {
                Ok(r) => return r,
                Err(()) => continue,
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

    /// Runs `f` on its own thread and fails the test if it does not finish in time (a lost
    /// wake-up would otherwise hang the suite).
    fn finishes<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the callers finished (no lost wake-up)")
    }

    #[test]
    fn a_small_cap_hands_the_lead_on_until_every_caller_is_answered() {
        let answered = finishes(|| {
            let g = Arc::new(GroupCommit::<u64, u64>::new(2));
            let biggest = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..16u64)
                .map(|i| {
                    let (g, biggest) = (g.clone(), biggest.clone());
                    std::thread::spawn(move || {
                        for j in 0..50u64 {
                            let job = i * 1000 + j;
                            let got = g.submit(
                                job,
                                |jobs| {
                                    biggest.fetch_max(jobs.len(), Ordering::SeqCst);
                                    std::thread::yield_now();
                                    jobs.into_iter().map(|x| x + 1).collect()
                                },
                                || u64::MAX,
                            );
                            assert_eq!(got, job + 1);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("no panic");
            }
            biggest.load(Ordering::SeqCst)
        });
        assert!(answered <= 2, "a group of {answered} exceeded the cap");
    }

    #[test]
    fn a_panicking_leader_fails_its_group_and_the_others_go_on() {
        let outcomes = finishes(|| {
            let g = Arc::new(GroupCommit::<u64, Result<u64, ()>>::new(4));
            let panics = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..12u64)
                .map(|i| {
                    let (g, panics) = (g.clone(), panics.clone());
                    std::thread::spawn(move || {
                        (0..20u64)
                            .map(|j| {
                                let job = i * 1000 + j;
                                panic::catch_unwind(AssertUnwindSafe(|| {
                                    g.submit(
                                        job,
                                        |jobs| {
                                            // Every fifth commit fails by panicking.
                                            if panics.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
                                                panic!("commit failed");
                                            }
                                            jobs.into_iter().map(Ok).collect()
                                        },
                                        || Err(()),
                                    )
                                }))
                                .map_or(
                                    "panicked",
                                    |r| match r {
                                        Ok(v) if v == job => "ok",
                                        Ok(_) => "wrong",
                                        Err(()) => "failed",
                                    },
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("the thread itself returns"))
                .collect::<Vec<_>>()
        });
        assert_eq!(outcomes.len(), 12 * 20);
        assert!(!outcomes.contains(&"wrong"));
        assert!(outcomes.contains(&"ok"));
        assert!(outcomes.contains(&"panicked") || outcomes.contains(&"failed"));
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
