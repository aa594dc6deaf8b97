//! The threads that read answer bodies for `HttpPortal` under a watchdog:
//! a pool that hands each body to a thread already waiting, and starts a
//! new one only when every thread is busy, instead of one thread per answer
//! (a thread start is a dozen system calls; a first send of 450,000 fees
//! made 450,000 of them).
//!
//! A body is never queued behind another: a job is only queued after
//! reserving an idle thread, so a thread stuck on a server that trickles
//! (each read still ends at reqwest's per-read timeout) delays no other
//! answer, which keeps the whole-attempt deadline exact. At most
//! `IDLE_READERS_MAX` threads wait for work; one that finds that many
//! already waiting ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A body to read, with where to send what was read.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// The most reader threads kept waiting for work.
pub const IDLE_READERS_MAX: usize = 16;

struct Pool {
    jobs: Sender<Job>,
    queue: Arc<Mutex<Receiver<Job>>>,
    /// Threads waiting for work and not yet reserved by a caller.
    idle: Arc<AtomicUsize>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = mpsc::channel();
        Pool {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    })
}

/// Runs `job` on a reader thread at once: a waiting one, else a new one.
/// Fails only when no thread can be started.
pub fn run(job: Job) -> std::io::Result<()> {
    let pool = pool();
    let reserved = pool
        .idle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if reserved {
        // A reserved thread is waiting on the queue, or about to: the pool
        // holds the receiver for the life of the process, so this send
        // cannot fail.
        pool.jobs
            .send(job)
            .expect("the reader pool's queue lives as long as the process");
        return Ok(());
    }
    let queue = Arc::clone(&pool.queue);
    let idle = Arc::clone(&pool.idle);
    std::thread::Builder::new()
        .name("cpsync-http-body".to_string())
        .spawn(move || {
            job();
            wait_for_work(&queue, &idle);
        })
        .map(|_| ())
}

/// A reader thread between jobs: offers itself (unless enough threads wait
/// already) and runs what it is handed.
fn wait_for_work(queue: &Mutex<Receiver<Job>>, idle: &AtomicUsize) {
    loop {
        let offered = idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < IDLE_READERS_MAX).then_some(n + 1)
            })
            .is_ok();
        if !offered {
            return;
        }
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_busy_reader_delays_no_other_job_and_threads_are_reused() {
        let (release, blocked) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel::<Option<std::thread::ThreadId>>();
        let stuck = done.clone();
        run(Box::new(move || {
            let _ = blocked.recv();
            let _ = stuck.send(None);
        }))
        .unwrap();
        let mut threads = std::collections::HashSet::new();
        for _ in 0..50 {
            // Give the last reader time to offer itself again.
            for _ in 0..100 {
                if pool().idle.load(Ordering::SeqCst) > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let done = done.clone();
            run(Box::new(move || {
                let _ = done.send(Some(std::thread::current().id()));
            }))
            .unwrap();
            let read = finished.recv_timeout(Duration::from_secs(5));
            let Ok(Some(thread)) = read else {
                panic!("a job never waits behind a busy reader: {read:?}");
            };
            threads.insert(thread);
        }
        assert!(
            threads.len() < 25,
            "readers are reused: 50 jobs ran on {} threads",
            threads.len()
        );
        release.send(()).unwrap();
        assert_eq!(finished.recv_timeout(Duration::from_secs(5)), Ok(None));
    }
}
