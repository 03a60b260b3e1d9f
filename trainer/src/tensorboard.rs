//! TensorBoard event files: the scalars of `metrics.jsonl`, for `tensorboard --logdir RUN_DIR`.
//!
//! Written by hand (with the `crc32c` crate) rather than with a TensorBoard crate: those found bring more
//! than the ~100 lines a scalar writer takes (tensorboard-rs: inactive since 2022, pulls in protobuf 2 and
//! image 0.23; tfrecord: a large dependency tree for tensors, images and async). What is written:
//!
//! - TFRecord framing: the payload's length (u64 LE), the masked CRC-32C of those 8 bytes, the payload, the
//!   masked CRC-32C of the payload.
//! - Payloads are `tensorflow.Event` protobufs, encoded here field by field: `wall_time` (1, double), `step`
//!   (2, int64), and one of `file_version` (3, string), `summary` (5: repeated `Value { tag = 1; simple_value
//!   = 2 }`) or `session_log` (7: `status = 1`). `simple_value` is what PyTorch's `SummaryWriter` writes too.
//!
//! The files go straight into the run's output folder, not a subfolder: `tensorboard --logdir PARENT` then
//! names each run by its folder, as `imgtool plot` does.
//!
//! Every scalar's step is the run's global step (optimizer steps so far), epoch scalars included, so one
//! step axis serves them all and a resume can be purged by step (below).
//!
//! A resumed run (or a run started again in the same folder) writes a new file beside the earlier ones;
//! TensorBoard reads a folder's files in name order as one stream. Its first events are `file_version`
//! `brain.Event:2` and a `SessionLog` `START` at the first step this run may write (one past the last step
//! kept in `metrics.jsonl`): TensorBoard then drops whatever earlier files hold from that step on (what a
//! run wrote for an epoch whose checkpoint it never saved), just as `metrics.jsonl` drops those lines, so
//! no step shows twice. That is the event `tf.summary` writers use for restarts; TensorBoard's Python reader
//! (`EventAccumulator`) honours it (tested), whether the newer Rust data server does was not checked.
//! The name's timestamp is kept past any earlier file's, so this file sorts after them even when runs
//! start within the same second.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use crate::metrics::{EpochRecord, Progress, Record};

/// The start of every event file's name (TensorBoard looks for `tfevents` in names).
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";

/// One run's event file, flushed after every record so TensorBoard shows a live run.
#[derive(Debug)]
pub struct EventFile {
    path: PathBuf,
    file: File,
}

impl EventFile {
    /// Creates a new event file in `dir` and writes its header events: the file version, and the restart
    /// mark that drops earlier files' scalars from step `first_step` on.
    pub fn create(dir: &Path, first_step: u64) -> Result<EventFile> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let latest_earlier = std::fs::read_dir(dir)
            .map_err(|source| TrainError::RunRecord {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(EVENTS_PREFIX)?
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max();
        let secs = latest_earlier.map_or(now, |t| now.max(t + 1));
        let name = format!(
            "{EVENTS_PREFIX}{secs}.{}.{}",
            crate::run_info::host_name(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| TrainError::RunRecord {
                path: path.clone(),
                source,
            })?;
        let mut events = EventFile { path, file };
        let mut buf = Vec::new();
        event(&mut buf, 0, |e| bytes_field(e, 3, b"brain.Event:2"));
        frame(&mut buf);
        let mut start = Vec::new();
        // SessionLog { status: START }
        varint_field(&mut start, 1, 1);
        let first = buf.len();
        event(&mut buf, first_step, |e| bytes_field(e, 7, &start));
        frame_from(&mut buf, first);
        events.write(&buf)?;
        Ok(events)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the scalars of one `metrics.jsonl` record as one event at its global step.
    pub fn record(&mut self, record: &Record) -> Result<()> {
        let (step, scalars) = scalars(record);
        let mut summary = Vec::new();
        for (tag, value) in &scalars {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            // simple_value: field 2, fixed32.
            v.push(2 << 3 | 5);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        let mut buf = Vec::new();
        event(&mut buf, step, |e| bytes_field(e, 5, &summary));
        frame(&mut buf);
        self.write(&buf)
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.file
            .write_all(buf)
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::RunRecord {
                path: self.path.clone(),
                source,
            })
    }
}

/// The tags and values a record becomes, and its step. Tags are grouped by the part before the `/`, as
/// TensorBoard's sections: `train/` and `val/` for progress lines, `epoch/` for epochs.
pub fn scalars(record: &Record) -> (u64, Vec<(String, f64)>) {
    fn progress(split: &str, p: &Progress) -> Vec<(String, f64)> {
        let mut v = vec![
            (format!("{split}/loss"), p.loss),
            (format!("{split}/top1"), p.top1),
            (format!("{split}/top5"), p.top5),
        ];
        // Validation lines repeat the epoch's last learning rate; only training ones carry news.
        if split == "train" {
            v.push(("train/lr".into(), p.lr));
        }
        v.push((format!("{split}/images_per_sec"), p.images_per_sec));
        if let Some(w) = p.data_wait {
            v.push((format!("{split}/data_wait"), w));
        }
        v
    }
    fn epoch(e: &EpochRecord) -> Vec<(String, f64)> {
        [
            ("train_loss", e.train_loss),
            ("train_top1", e.train_top1),
            ("train_top5", e.train_top5),
            ("val_loss", e.val_loss),
            ("val_top1", e.val_top1),
            ("val_top5", e.val_top5),
            ("lr", e.lr),
            ("images_per_sec", e.images_per_sec),
            ("data_wait", e.data_wait),
            ("epoch", e.epoch as f64),
        ]
        .into_iter()
        .map(|(k, v)| (format!("epoch/{k}"), v))
        .collect()
    }
    match record {
        Record::Train(p) => (p.global_step, progress("train", p)),
        Record::Val(p) => (p.global_step, progress("val", p)),
        Record::Epoch(e) => (e.global_step, epoch(e)),
    }
}

/// Appends an `Event` with the wall time now, `step`, and the fields `what` appends.
fn event(buf: &mut Vec<u8>, step: u64, what: impl FnOnce(&mut Vec<u8>)) {
    let wall_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    buf.push(1 << 3 | 1);
    buf.extend_from_slice(&wall_time.to_le_bytes());
    varint_field(buf, 2, step);
    what(buf);
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_field(buf: &mut Vec<u8>, field: u64, v: u64) {
    varint(buf, field << 3);
    varint(buf, v);
}

/// A length-delimited field: a string, bytes, or an embedded message.
fn bytes_field(buf: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(buf, field << 3 | 2);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of data holding CRCs stays strong.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Frames the whole of `buf` (one payload) as a TFRecord.
fn frame(buf: &mut Vec<u8>) {
    frame_from(buf, 0);
}

/// Frames `buf[from..]` as a TFRecord, in place.
fn frame_from(buf: &mut Vec<u8>, from: usize) {
    let payload = buf.split_off(from);
    let len = (payload.len() as u64).to_le_bytes();
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
    buf.extend_from_slice(&payload);
    buf.extend_from_slice(&masked_crc(&payload).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_varints_match_known_values() {
        // CRC-32C's check value (RFC 3720).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        // A TFRecord of an empty payload: length 0, its masked CRC, then the masked CRC of nothing.
        let mut r = Vec::new();
        frame(&mut r);
        assert_eq!(r.len(), 16);
        assert_eq!(&r[..8], &[0; 8]);
        assert_eq!(u32::from_le_bytes(r[12..].try_into().unwrap()), 0xa282_ead8);
    }

    #[test]
    fn an_unusable_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        for bad in [dir.path().join("gone"), file] {
            let err = EventFile::create(&bad, 0).unwrap_err();
            let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(
                msg.starts_with(&format!("run record {}: ", bad.display())),
                "{msg}"
            );
        }
    }

    #[test]
    fn later_files_sort_after_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let far = u64::MAX / 4;
        std::fs::write(dir.path().join(format!("{EVENTS_PREFIX}{far}.h.1")), b"").unwrap();
        let f = EventFile::create(dir.path(), 1).unwrap();
        let name = f.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{EVENTS_PREFIX}{}.", far + 1)),
            "{name}"
        );
    }
}
