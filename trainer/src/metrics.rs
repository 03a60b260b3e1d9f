//! The numbers of a training run, as files in `--output_dir` that tools and people read while it runs and
//! after: `metrics.jsonl` and `summary.csv`.
//!
//! The same records go to a TensorBoard event file beside them ([`crate::tensorboard`]) and, with
//! `--enable_wandb`, to Weights & Biases through a sidecar that follows `metrics.jsonl`
//! ([`crate::wandb`]).
//!
//! `metrics.jsonl` holds one JSON object per line ([`Record`]): a `train` or `val` record each time a
//! progress line is printed (the running averages of the line, so the file and the log agree), and one
//! `epoch` record after each epoch's validation. `summary.csv` holds one row per epoch, with timm's
//! columns first (`epoch,train_loss,eval_loss,eval_top1,eval_top5,lr`) and ours after them.
//!
//! Both survive crashes and resumes:
//! - every line is written whole with one `write` on a file opened for appending, and flushed, so a reader
//!   sees complete lines, or a last line cut short by a crash (which readers skip);
//! - a run that starts at epoch `E` (a resume, or a fresh run: `E` = 0) first keeps only the complete
//!   lines of epochs before `E`: the rows a run wrote for an epoch whose checkpoint it never saved (it died
//!   in between) are dropped, and the run writes them again. The rewrite is atomic
//!   ([`imgloader::atomic::write_file`]). Epoch rows are written before the checkpoint of that epoch, so
//!   no epoch is ever missing either.
//!
//! Only a training run writes them; `--evaluate` writes nothing.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::tensorboard::EventFile;
use crate::trainer::{EpochStats, ValStats};
use crate::wandb::Sidecar;

/// The JSON-lines file of a run.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The per-epoch CSV file of a run.
pub const SUMMARY_FILE: &str = "summary.csv";
/// `summary.csv`'s header: timm's columns, then ours.
pub const SUMMARY_HEADER: &str = "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr,train_top1,train_top5,\
                                  images_per_sec,data_wait,bad_samples,global_step,seconds";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A training progress line: running averages over the epoch's steps so far.
    Train(Progress),
    /// A validation progress line.
    Val(Progress),
    /// An epoch, trained and validated.
    Epoch(EpochRecord),
}

impl Record {
    /// The epoch the record belongs to.
    pub fn epoch(&self) -> u64 {
        match self {
            Record::Train(p) | Record::Val(p) => p.epoch,
            Record::Epoch(e) => e.epoch,
        }
    }

    /// The run's optimizer steps so far when the record was written.
    pub fn global_step(&self) -> u64 {
        match self {
            Record::Train(p) | Record::Val(p) => p.global_step,
            Record::Epoch(e) => e.global_step,
        }
    }
}

/// A progress line's numbers: `step` is 1-based like the printed `[step/steps]`; `loss`, `top1` and `top5`
/// are the averages printed in parentheses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: u64,
    pub step: usize,
    pub steps: usize,
    /// Optimizer steps taken so far in the run (training; the epoch's last for validation).
    pub global_step: u64,
    /// Learning rate of the last step (training) or of the epoch's end (validation).
    pub lr: f64,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    /// Images per second over the epoch so far.
    pub images_per_sec: f64,
    /// Share of the epoch's time so far spent waiting for batches (0-1; training only).
    pub data_wait: Option<f64>,
    /// Bad samples met so far in the epoch (replaced in training, left out in validation).
    pub bad_samples: usize,
}

/// An epoch's numbers; `epoch` counts from 0 like the printed `Epoch: [N]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub global_step: u64,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1: f64,
    pub train_top5: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    /// Validation images evaluated (bad ones left out) and the split's size.
    pub val_images: u64,
    pub val_expected: u64,
    pub images_per_sec: f64,
    pub data_wait: f64,
    /// Bad training samples replaced plus bad validation images left out.
    pub bad_samples: usize,
    /// Seconds of training (not validation).
    pub seconds: f64,
}

impl EpochRecord {
    /// The record of `epoch`, trained as `t` says and validated as `v` says.
    pub fn new(epoch: u64, global_step: u64, t: &EpochStats, v: &ValStats) -> EpochRecord {
        EpochRecord {
            epoch,
            global_step,
            lr: t.lr,
            train_loss: t.loss,
            train_top1: t.acc1,
            train_top5: t.acc5,
            val_loss: v.loss,
            val_top1: v.acc1,
            val_top5: v.acc5,
            val_images: v.images,
            val_expected: v.expected,
            images_per_sec: t.images as f64 / t.seconds.max(1e-9),
            data_wait: t.data_wait,
            bad_samples: t.bad_samples + v.left_out.len(),
            seconds: t.seconds,
        }
    }

    /// Its row of `summary.csv` (numbers only: nothing to quote).
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.epoch,
            self.train_loss,
            self.val_loss,
            self.val_top1,
            self.val_top5,
            self.lr,
            self.train_top1,
            self.train_top5,
            self.images_per_sec,
            self.data_wait,
            self.bad_samples,
            self.global_step,
            self.seconds
        )
    }
}

/// Appends whole lines to one file (the run's records, and `--log-samples`).
#[derive(Debug)]
pub(crate) struct LineFile {
    path: PathBuf,
    file: File,
}

impl LineFile {
    pub(crate) fn open(path: PathBuf) -> Result<LineFile> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::RunRecord {
                path: path.clone(),
                source,
            })?;
        Ok(LineFile { path, file })
    }

    /// Writes `line` and its newline with one `write_all` of one buffer, then flushes.
    pub(crate) fn append(&mut self, line: &str) -> Result<()> {
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        self.file
            .write_all(buf.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::RunRecord {
                path: self.path.clone(),
                source,
            })
    }
}

/// Keeps the lines of `text` that `keep` accepts, up to the last complete line: what a run starting at
/// some epoch keeps of an earlier run's file. Returns the kept text and whether anything was dropped.
fn keep_lines(text: &str, mut keep: impl FnMut(usize, &str) -> bool) -> (String, bool) {
    let mut kept = String::with_capacity(text.len());
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut dropped = complete.len() != text.len();
    for (i, line) in complete.lines().enumerate() {
        if keep(i, line) {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped = true;
        }
    }
    (kept, dropped)
}

/// Reads `path` (absent: empty), keeps what `keep` accepts, and rewrites the file atomically if that
/// dropped anything. Returns the number of lines dropped.
fn trim_file(path: &Path, keep: impl FnMut(usize, &str) -> bool) -> Result<usize> {
    let err = |source| TrainError::RunRecord {
        path: path.to_owned(),
        source,
    };
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err(e)),
    };
    let (kept, dropped) = keep_lines(&text, keep);
    if !dropped {
        return Ok(0);
    }
    let before = text.split_terminator('\n').count();
    imgloader::atomic::write_file(path, kept.as_bytes()).map_err(err)?;
    Ok(before - kept.lines().count())
}

/// The epoch of a `summary.csv` row, if the row is one.
fn row_epoch(line: &str) -> Option<u64> {
    line.split(',').next()?.trim().parse().ok()
}

/// Writes `metrics.jsonl`, `summary.csv` and the TensorBoard events of a training run (see the module
/// docs), and holds the W&B sidecar following them, if any, until the run ends.
#[derive(Debug)]
pub struct MetricsLog {
    jsonl: RefCell<LineFile>,
    csv: LineFile,
    events: RefCell<EventFile>,
    /// Dropped last: it finishes once the files above are complete.
    sidecar: Option<Sidecar>,
}

impl MetricsLog {
    /// Opens the files in `dir` for a run starting at `start_epoch`: drops what an earlier run wrote for
    /// epochs from `start_epoch` on (and any torn last line), saying so, and writes `summary.csv`'s header
    /// when the file is new. A `summary.csv` with another header is started afresh. Starts a new
    /// TensorBoard event file that hides earlier files' steps past the kept records.
    pub fn open(dir: &Path, start_epoch: u64, resume_step: Option<u64>) -> Result<MetricsLog> {
        let jsonl_path = dir.join(METRICS_FILE);
        let csv_path = dir.join(SUMMARY_FILE);
        let mut last_kept_step = 0;
        let dropped_json = trim_file(&jsonl_path, |_, line| {
            // A run resumed inside `start_epoch` (`resume_step`: the steps its checkpoint had taken)
            // keeps that epoch's training lines up to there.
            let kept = serde_json::from_str::<Record>(line).ok().filter(|r| {
                r.epoch() < start_epoch
                    || (r.epoch() == start_epoch
                        && matches!(r, Record::Train(_))
                        && resume_step.is_some_and(|g| r.global_step() <= g))
            });
            if let Some(r) = &kept {
                last_kept_step = last_kept_step.max(r.global_step());
            }
            kept.is_some()
        })?;
        let mut same_header = true;
        let dropped_csv = trim_file(&csv_path, |i, line| {
            if i == 0 {
                same_header = line == SUMMARY_HEADER;
                return same_header;
            }
            same_header && row_epoch(line).is_some_and(|e| e < start_epoch)
        })?;
        if dropped_json + dropped_csv > 0 {
            println!(
                "=> metrics: dropped {dropped_json} line(s) of {} and {dropped_csv} of {} written for \
                 epoch {start_epoch} or later by an earlier run",
                jsonl_path.display(),
                csv_path.display()
            );
        }
        let is_empty = |p: &Path| std::fs::metadata(p).map_or(true, |m| m.len() == 0);
        let new_csv = is_empty(&csv_path);
        let mut csv = LineFile::open(csv_path)?;
        if new_csv {
            csv.append(SUMMARY_HEADER)?;
        }
        let jsonl = RefCell::new(LineFile::open(jsonl_path)?);
        let events = RefCell::new(EventFile::create(dir, last_kept_step + 1)?);
        Ok(MetricsLog {
            jsonl,
            csv,
            events,
            sidecar: None,
        })
    }

    /// Hands the log a W&B sidecar following its `metrics.jsonl`; dropping the log ends the sidecar
    /// after its last record and waits for it.
    pub fn attach(&mut self, sidecar: Sidecar) {
        self.sidecar = Some(sidecar);
    }

    /// Appends one record to `metrics.jsonl` and writes its scalars to the TensorBoard events.
    pub fn record(&self, record: &Record) -> Result<()> {
        let line = serde_json::to_string(record).expect("records serialise");
        self.jsonl.borrow_mut().append(&line)?;
        self.events.borrow_mut().record(record)
    }

    /// Appends an epoch's record to `metrics.jsonl` and its row to `summary.csv`. Call it before the
    /// epoch's checkpoint is written.
    pub fn epoch(&mut self, e: EpochRecord) -> Result<()> {
        let row = e.csv_row();
        self.record(&Record::Epoch(e))?;
        self.csv.append(&row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_complete_lines_it_is_told_to() {
        let (kept, dropped) = keep_lines("a\nb\nc", |_, l| l != "b");
        assert_eq!((kept.as_str(), dropped), ("a\n", true));
        let (kept, dropped) = keep_lines("a\nb\n", |_, _| true);
        assert_eq!((kept.as_str(), dropped), ("a\nb\n", false));
        assert_eq!(keep_lines("", |_, _| true), (String::new(), false));
        assert_eq!(row_epoch("12,0.5"), Some(12));
        assert_eq!(row_epoch("epoch,train_loss"), None);
    }
}
