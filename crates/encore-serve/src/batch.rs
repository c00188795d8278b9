//! The fold-ins waiting for one run, scored together.
//!
//! At catalogue scale a fold-in is one read of the model's output layer (MultiVAE on 56,512
//! tracks: 135 MB) and the memory bandwidth, not the arithmetic, bounds it; more clients then
//! only queue for the same read. Fold-ins that wait for the same run are therefore taken
//! together, up to [`MAX_BATCH`], and scored in one pass (`ServedRun::recommend_histories`:
//! each answer exactly, bit for bit, the one its listener gets alone, so batching changes
//! latency and throughput, never an answer).
//!
//! The first request that finds no pass going starts one (`draining`); the pass takes
//! whatever has arrived by the time a worker permit is free, answers it, and takes again
//! until nothing waits. A request whose client gave up (the request timeout dropped its
//! receiver) is left out of the next pass.

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::served::{FoldIn, Scored};

/// Fold-ins scored in one pass at most: enough for a full core's worth of arithmetic per read
/// of the output layer, few enough that the first of them does not wait long for the last.
pub(crate) const MAX_BATCH: usize = 16;

/// What a waiting request gets back.
pub(crate) type Answer = Result<Vec<Scored>, ApiError>;

/// A fold-in and where its answer goes.
pub(crate) struct Waiting {
    pub job: FoldIn,
    pub reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    /// A pass is going (or about to start) and will take what is queued.
    draining: bool,
}

/// The queue of one run's fold-ins.
#[derive(Default)]
pub(crate) struct FoldInQueue {
    state: Mutex<State>,
}

impl FoldInQueue {
    /// Queue `job`: the receiver of its answer, and whether the caller must start the pass
    /// (none was going).
    pub fn push(&self, job: FoldIn) -> (oneshot::Receiver<Answer>, bool) {
        let (reply, rx) = oneshot::channel();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.push(Waiting { job, reply });
        let start = !std::mem::replace(&mut s.draining, true);
        (rx, start)
    }

    /// The next fold-ins to score, oldest first, at most [`MAX_BATCH`], their clients still
    /// waiting; `None` when nothing is left, which ends the pass (the next push starts one).
    pub fn take(&self) -> Option<Vec<Waiting>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.retain(|w| !w.reply.is_closed());
        if s.waiting.is_empty() {
            s.draining = false;
            return None;
        }
        let n = s.waiting.len().min(MAX_BATCH);
        Some(s.waiting.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(k: usize) -> FoldIn {
        FoldIn {
            history: vec![1],
            exclude: vec![],
            k,
        }
    }

    /// The first push starts the pass, later ones join it; a pass takes the oldest first, at
    /// most MAX_BATCH, leaves out requests nobody waits for, and ends when nothing is left,
    /// after which the next push starts a new one.
    #[test]
    fn a_pass_takes_what_waits_and_ends_when_nothing_does() {
        let q = FoldInQueue::default();
        let (_a, start) = q.push(job(0));
        assert!(start);
        let mut keep = Vec::new();
        for k in 1..MAX_BATCH + 3 {
            let (rx, start) = q.push(job(k));
            assert!(!start);
            keep.push(rx);
        }
        drop(keep.remove(0)); // the client of job 1 gave up
        let first = q.take().unwrap();
        let ks: Vec<usize> = first.iter().map(|w| w.job.k).collect();
        assert_eq!(ks, (0..=MAX_BATCH).filter(|&k| k != 1).collect::<Vec<_>>());
        let second = q.take().unwrap();
        assert_eq!(
            second.iter().map(|w| w.job.k).collect::<Vec<_>>(),
            [MAX_BATCH + 1, MAX_BATCH + 2]
        );
        assert!(q.take().is_none());
        let (_b, start) = q.push(job(9));
        assert!(start, "a new pass after the last one ended");
    }
}
