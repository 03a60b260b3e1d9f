//! Run a function over every sample of a source on a pool of our own, in order, with progress.

use std::ops::Range;

use anyhow::Context;
use imgloader::Source;
use imgloader::workers::Workers;
use rayon::prelude::*;

use crate::progress::Progress;

/// `f(state, index)` for every sample, on `threads` threads each with its own `S` (a decoder and its
/// buffers, reused for every image: the loader's [`Workers`]). Results come back in sample order.
pub fn each_sample<T, S, F>(
    source: &dyn Source,
    threads: usize,
    task: &'static str,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send,
    S: Default + Send + 'static,
    F: Fn(&mut S, usize) -> T + Sync,
{
    anyhow::ensure!(threads > 0, "invalid threads: 0; at least 1");
    let workers = Workers::new(threads, task, || Ok(S::default()))
        .with_context(|| format!("starting {threads} threads"))?;
    let mut out = Vec::with_capacity(source.len());
    in_chunks(source.len(), threads, task, |range| {
        let part: Vec<T> = workers.install(|| {
            range
                .into_par_iter()
                .map(|i| workers.with(|state| f(state, i)))
                .collect::<imgloader::Result<_>>()
        })?;
        out.extend(part);
        Ok(())
    })?;
    Ok(out)
}

/// `run(range)` over `0..n` in consecutive chunks, with a progress bar named `task` advanced after each.
/// Chunks keep the progress moving and the result order fixed; they are large enough to keep `threads`
/// busy.
pub fn in_chunks(
    n: usize,
    threads: usize,
    task: &'static str,
    mut run: impl FnMut(Range<usize>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let progress = Progress::new(task, n as u64);
    let chunk = (threads * 64).max(256);
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        run(start..end)?;
        progress.set(end as u64, 0);
    }
    progress.finish();
    Ok(())
}
