//! Run a function over every sample of a source on a pool of our own, in order, with progress.

use std::sync::Mutex;

use anyhow::Context;
use imgloader::Source;
use rayon::prelude::*;

use crate::progress::Progress;

/// `f(state, index)` for every sample, on `threads` threads each with its own `S` (a decoder and its
/// buffers, reused for every image). Results come back in sample order.
pub fn each_sample<T, S, F>(
    source: &dyn Source,
    threads: usize,
    task: &'static str,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send,
    S: Default + Send,
    F: Fn(&mut S, usize) -> T + Sync,
{
    anyhow::ensure!(threads > 0, "invalid threads: 0; at least 1");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("imgtool-{task}-{i}"))
        .build()
        .with_context(|| format!("starting {threads} threads"))?;
    let states: Vec<Mutex<S>> = (0..threads).map(|_| Mutex::default()).collect();
    let n = source.len();
    let progress = Progress::new(task, n as u64);
    let mut out = Vec::with_capacity(n);
    // Chunks keep the progress moving and the result order fixed; large enough to keep every thread busy.
    let chunk = (threads * 64).max(256);
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let part: Vec<T> = pool.install(|| {
            (start..end)
                .into_par_iter()
                .map(|i| {
                    let t = rayon::current_thread_index().unwrap_or(0) % states.len();
                    let mut state = states[t].lock().unwrap_or_else(|p| p.into_inner());
                    f(&mut state, i)
                })
                .collect()
        });
        out.extend(part);
        progress.set(end as u64, 0);
    }
    progress.finish();
    Ok(out)
}
