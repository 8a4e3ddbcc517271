//! The CPU backend's threads: rayon's pool, over which burn's Flex backend, `gemm` and
//! simplegpt's CPU ops split their work. Two things make a small model's step on the CPU
//! faster here (BENCHMARKS.md, "CPU step: threads that wait awake, row loops in SIMD,
//! outputs not zeroed"):
//!
//! - The main thread is one of the pool's workers (`join_the_pool`). From any other thread
//!   each parallel op is handed to the pool and the caller sleeps until it is done; on a
//!   worker the op is split where it is called, the caller taking a part.
//! - During a step the other workers wait for the next op spinning, not asleep
//!   (`keep_awake`). A sleeping worker is woken through the kernel (a futex; on a virtual
//!   machine an interrupt to another virtual CPU): tens of microseconds on the step's path,
//!   and a small model's step has a few hundred parallel ops. OpenMP's threads, which
//!   PyTorch's CPU ops run on, do the same (GNU libgomp spins some 300 000 rounds before it
//!   sleeps; Intel's runtime 200 ms). A worker stops spinning
//!   after `IDLE` without work, so a pause between steps, or a run on a GPU, does not keep
//!   a core busy.
//!
//! Neither changes what is computed: the ops split their work the same way on any thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a kept-awake worker spins without work before it goes back to rayon's sleep.
/// The gaps between a step's parallel ops are a few to a few hundred microseconds.
const IDLE: Duration = Duration::from_millis(2);

/// Makes the calling thread the first worker of rayon's global pool (the pool's other
/// workers are spawned as before: one thread per core in all). Call it at the start of the
/// main thread, before any parallel op; where the pool exists already it does nothing. The
/// thread keeps its stack and, under glibc, its heap: a spawned thread's own malloc arena
/// would map large blocks afresh each step (2.3x the page faults at nanoGPT's size).
///
/// Not with a pool of one thread (`RAYON_NUM_THREADS=1`, or one core): that thread would be
/// the main thread only, which runs the pool's jobs only while it waits inside an op, so a
/// job handed to the pool from another thread could wait on it for ever.
pub fn join_the_pool() {
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0);
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads >= 2 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global();
    }
}

/// Workers now spinning.
static SPINNING: AtomicUsize = AtomicUsize::new(0);
/// A call to spin has been sent and no worker has taken it yet.
static SENT: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread is spinning (a job it runs while spinning may call `keep_awake` again).
    static IN_SPIN: Cell<bool> = const { Cell::new(false) };
}

/// Keeps the pool's other workers spinning, ready for the next parallel op, until each has
/// gone `IDLE` without work; while one still spins, no other is sent (a worker that stopped
/// waits asleep for the next call). Call it from the main thread after `join_the_pool`,
/// where a step on the CPU begins, with no parallel op in flight: a spinner sent to a worker
/// that is waiting inside an op would hold that op up. Elsewhere, or with one thread, it does
/// nothing.
pub fn keep_awake() {
    let Some(caller) = rayon::current_thread_index() else { return };
    if rayon::current_num_threads() < 2 || SPINNING.load(Ordering::Acquire) > 0 || SENT.swap(true, Ordering::AcqRel) {
        return;
    }
    // One copy runs on each worker, the caller's included (which drops it).
    rayon::spawn_broadcast(move |worker| {
        if worker.index() == caller {
            return;
        }
        SENT.store(false, Ordering::Release);
        if !IN_SPIN.get() {
            spin();
        }
    });
}

/// Takes the pool's work as it comes (`rayon::yield_now`: this worker's jobs, then the
/// others' and the pool's), until `IDLE` passes without any.
fn spin() {
    IN_SPIN.set(true);
    SPINNING.fetch_add(1, Ordering::AcqRel);
    let mut last_work = Instant::now();
    while last_work.elapsed() < IDLE {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last_work = Instant::now(),
            _ => std::hint::spin_loop(),
        }
    }
    SPINNING.fetch_sub(1, Ordering::AcqRel);
    IN_SPIN.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// Polls `done` (busily: a spinner may spin for only `IDLE`) until it is true or 5 s
    /// have passed; whether it came true.
    fn within_5s(done: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Off a worker, or in a pool of one, nothing spins. In a pool of two the other worker
    /// spins once asked; while work comes (a parallel sum, which gives the sequential one) a
    /// call made meanwhile starts no second spinner on it; once idle it stops. One test: the counters are the process's.
    #[test]
    fn the_other_worker_spins_while_work_comes_then_stops() {
        keep_awake();
        pool(1).install(keep_awake);
        assert_eq!(SPINNING.load(Ordering::Acquire), 0);
        assert!(!SENT.load(Ordering::Acquire));

        let xs: Vec<u64> = (0..1_000_000).collect();
        let (sums, most_spinning) = pool(2).install(|| {
            // Asked again until seen spinning: on a busy machine it may go idle before it is seen.
            let seen = within_5s(|| {
                keep_awake();
                SPINNING.load(Ordering::Acquire) == 1
            });
            assert!(seen, "the other worker spins");
            let (mut sums, mut most_spinning) = (Vec::new(), 0);
            for _ in 0..50 {
                keep_awake();
                sums.push(xs.par_chunks(1000).map(|c| c.iter().sum::<u64>()).sum::<u64>());
                most_spinning = most_spinning.max(SPINNING.load(Ordering::Acquire));
            }
            (sums, most_spinning)
        });
        assert!(sums.iter().all(|&s| s == xs.iter().sum::<u64>()));
        // (It may stop and start again between calls on a busy machine, but never nests.)
        assert!(most_spinning <= 1, "at most one spinner on the one other worker: {most_spinning}");
        assert!(within_5s(|| SPINNING.load(Ordering::Acquire) == 0), "the spinner stopped when idle");
    }
}
