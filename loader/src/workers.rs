//! A pool of threads of our own, each with its own mutable state (a decoder and its buffers, a resizer…),
//! reused for every item the thread handles: the one way the loader, the decode pool, the shard writer and
//! the tools keep per-thread scratch.
//!
//! [`Workers::with`] hands the calling pool thread its own state. Called from a thread that is not one of
//! the pool's (or re-entered on a pool thread whose state is in use, which happens when a job waits on
//! the pool and the thread picks up another job meanwhile), it makes a fresh state for that call: never
//! another thread's, never a deadlock on our own lock.

use std::fmt;
use std::sync::{Mutex, TryLockError};

use crate::error::{Error, Result};

/// A thread pool with one `S` per thread; see the module docs.
pub struct Workers<S> {
    pool: rayon::ThreadPool,
    states: Vec<Mutex<S>>,
    make: Box<dyn Fn() -> Result<S> + Send + Sync>,
}

impl<S> fmt::Debug for Workers<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.states.len())
            .finish_non_exhaustive()
    }
}

impl<S: Send> Workers<S> {
    /// Starts `threads` threads named `<name>-<i>`, each with a state from `make`.
    pub fn new(
        threads: usize,
        name: &'static str,
        make: impl Fn() -> Result<S> + Send + Sync + 'static,
    ) -> Result<Self> {
        if threads == 0 {
            return Err(Error::Config {
                what: "threads",
                reason: "must be at least 1".to_owned(),
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
            .map_err(|e| Error::Config {
                what: "threads",
                reason: format!("cannot start worker threads: {e}"),
            })?;
        let states = (0..threads)
            .map(|_| make().map(Mutex::new))
            .collect::<Result<_>>()?;
        Ok(Workers {
            pool,
            states,
            make: Box::new(make),
        })
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.states.len()
    }

    /// Runs `f` on the pool (rayon's parallel iterators inside it use the pool's threads).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Runs `f` on the pool without waiting for it.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        self.pool.spawn(f)
    }

    /// Calls `f` with the calling thread's state (a fresh one off the pool; see the module docs).
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> Result<R> {
        let slot = self
            .pool
            .current_thread_index()
            .and_then(|t| self.states.get(t));
        if let Some(slot) = slot {
            match slot.try_lock() {
                Ok(mut state) => return Ok(f(&mut state)),
                // A panic while the state was held: the state is scratch, refilled on every use.
                Err(TryLockError::Poisoned(p)) => return Ok(f(&mut p.into_inner())),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        Ok(f(&mut (self.make)()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_pool_thread_keeps_its_state_and_outsiders_get_a_fresh_one() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let workers = Workers::new(2, "test", move || {
            Ok((m.fetch_add(1, Ordering::SeqCst), 0u32))
        })
        .unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 2);
        let ids: Vec<usize> = workers.install(|| {
            (0..200)
                .into_par_iter()
                .map(|_| {
                    workers
                        .with(|s| {
                            s.1 += 1;
                            s.0
                        })
                        .unwrap()
                })
                .collect()
        });
        // Only the pool's own two states served the pool's threads.
        assert!(ids.iter().all(|&id| id < 2), "{ids:?}");
        assert_eq!(made.load(Ordering::SeqCst), 2);
        // This thread is not the pool's: a fresh state, not thread 0's.
        let (id, count) = workers.with(|s| *s).unwrap();
        assert_eq!((id, count), (2, 0));
        // Re-entered while its state is in use: a fresh one for the inner call, no deadlock.
        let inner = workers
            .install(|| workers.with(|_| workers.with(|s| s.0).unwrap()))
            .unwrap();
        assert!(inner >= 3, "{inner}");
        assert!(Workers::new(0, "test", || Ok(())).is_err());
    }
}
