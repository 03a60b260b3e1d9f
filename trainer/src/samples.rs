//! `--log-samples`: which samples each optimizer step read, one file per rank in `--output_dir`
//! (`samples.rank<R>.csv`, lines `epoch,step,i i i …`: the epoch, the global step being taken, and the
//! source indices of the rank's batch). It makes a claim checkable from outside: a run stopped and
//! resumed, on any number of processes, read each epoch's samples exactly as an uninterrupted run would.
//!
//! Lines are appended, whole, and flushed per step, so a run stopped by a signal leaves exactly its steps
//! taken; a resumed run appends to the same files. A run killed outright (kill -9) has logged the steps
//! after its last checkpoint too, which the resumed run takes, and logs, again.

use std::path::Path;

use crate::error::Result;
use crate::metrics::LineFile;

/// The sample log of one rank.
#[derive(Debug)]
pub struct SampleLog {
    file: LineFile,
    line: String,
}

impl SampleLog {
    /// Opens (appending) `samples.rank<rank>.csv` in `dir`.
    pub fn open(dir: &Path, rank: usize) -> Result<SampleLog> {
        Ok(SampleLog {
            file: LineFile::open(dir.join(format!("samples.rank{rank}.csv")))?,
            line: String::new(),
        })
    }

    /// Records that global step `step` of `epoch` reads `indices`.
    pub fn step(&mut self, epoch: u64, step: u64, indices: &[usize]) -> Result<()> {
        use std::fmt::Write as _;
        self.line.clear();
        let _ = write!(self.line, "{epoch},{step},");
        for (i, index) in indices.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let _ = write!(self.line, "{sep}{index}");
        }
        self.file.append(&self.line)
    }
}

/// Parses a sample log: `(epoch, step, indices)` per line.
pub fn read(path: &Path) -> std::io::Result<Vec<(u64, u64, Vec<usize>)>> {
    let text = std::fs::read_to_string(path)?;
    let bad = |n: usize| {
        std::io::Error::other(format!(
            "{}: line {n} is not epoch,step,indices",
            path.display()
        ))
    };
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let mut parts = line.splitn(3, ',');
            let (Some(e), Some(s), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(n + 1));
            };
            let indices = i
                .split_whitespace()
                .map(str::parse)
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| bad(n + 1))?;
            Ok((
                e.parse().map_err(|_| bad(n + 1))?,
                s.parse().map_err(|_| bad(n + 1))?,
                indices,
            ))
        })
        .collect()
}
