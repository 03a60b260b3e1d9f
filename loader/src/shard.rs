//! Write any [`Source`] as webdataset shards: `shard-000000.tar`, … each holding `<key>.jpg` (or `.png`),
//! `<key>.cls` and optionally `<key>.json`, an index sidecar per shard and a `manifest.json`, all readable
//! by [`crate::open`] on the output folder.
//!
//! ```
//! use imgloader::{OpenOptions, shard::ShardWriter};
//!
//! # let dir = tempfile::tempdir()?;
//! # let cfg = imgfixtures::SynthConfig { classes: 2, train_per_class: 3, val_per_class: 1, min_side: 64, max_side: 96, ..Default::default() };
//! # imgfixtures::write_dataset(&cfg, dir.path())?;
//! let source = imgloader::open(&dir.path().join("train.tar"), &OpenOptions::default())?;
//! let out = dir.path().join("shards");
//! let summary = ShardWriter::builder().num_shards(2).seed(7).threads(2).build()?.write(&*source, &out, &|_| {})?;
//! assert_eq!((summary.shards.len(), summary.samples), (2, 6));
//! let shards = imgloader::open(&out, &OpenOptions::default())?;
//! assert_eq!(shards.len(), 6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What goes where
//!
//! Samples are shuffled across shards by a permutation of the source indices fixed by the seed, then laid
//! out in that order: each shard takes the next run of the permutation. With [`ShardSplit::Count`] shard
//! `s` of `N` takes positions `s·n/N .. (s+1)·n/N`; with [`ShardSplit::Bytes`] a shard is closed before the
//! sample that would take it over the size (a shard always holds at least one sample).
//!
//! A key is `<source index, zero-padded>_<file stem>`, the stem reduced to `[A-Za-z0-9_-]` (at most 64
//! characters): never a `/`, a `.` or a `..`, whatever the source names were. Keys sort in source order, so
//! the shards read back through [`crate::open`] list the samples at the same indices as the source.
//!
//! Tar headers are fixed (ustar, mode 0644, uid/gid 0, mtime 0, no user names), so the same source, seed
//! and settings give byte-identical shards (on the same CPU architecture: resizing uses SIMD).
//!
//! # Images
//!
//! Without [`Reencode`] the original bytes are copied; each is checked first as a decode would check it
//! before any pixel work ([`check`](crate::decode::check): headers, the pixel cap, JPEG's end-of-image
//! marker), and a sample that fails is bad. A PNG (ImageNet has one named `.JPEG`) is stored as
//! `<key>.png` because webdataset decoders pick the codec by extension. With [`Reencode`] every image is
//! decoded (CMYK, grayscale and PNG become RGB), shrunk so its longer side is at most `max_side` (Hamming
//! filter: bilinear's cost, bicubic-like quality when shrinking), and encoded as baseline JPEG at `quality`
//! with `jpeg-encoder` (chroma 4:4:4 from quality 90 up, 4:2:0 below, that crate's default).
//!
//! # Interruption
//!
//! Each shard is written to `.shard-NNNNNN.tar.tmp`, synced, and renamed; then its index is built and the
//! hidden progress file `.shard-progress.json` (settings + finished shards with sizes and CRC-32s) is
//! replaced. A shard's content depends only on the source, the settings and where the previous shard ended,
//! so a re-run with the same settings keeps every listed shard whose size and CRC-32 still match, and writes
//! the rest: the result is byte-identical to an uninterrupted run. A re-run with other settings, or into a
//! folder holding anything else, is refused. Nothing is written outside the output folder.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use std::time::Duration;

use fast_image_resize as fir;
use rayon::prelude::*;
use serde_json::{Value, json};

use crate::decode::{self, Decoder, ImageFormat};
use crate::error::{Error, Result};
use crate::rng::shuffle;
use crate::source::Source;
use crate::workers::Workers;

/// Name of the progress file in the output folder (hidden: readers skip it).
pub const PROGRESS_FILE: &str = ".shard-progress.json";
/// Name of the manifest in the output folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest and progress file layout.
const FORMAT_VERSION: u64 = 1;
/// Longest stem kept in a key.
const MAX_STEM: usize = 64;

/// How samples are split into shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSplit {
    /// Close a shard before it would pass this many bytes (tar overhead included).
    Bytes(u64),
    /// Exactly this many shards, of equal sample counts (±1).
    Count(usize),
}

/// Re-encoding settings: decode, shrink, encode as JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reencode {
    /// Longest side after shrinking; `None` keeps the size.
    pub max_side: Option<u32>,
    /// JPEG quality, `1..=100`.
    pub quality: u8,
    /// Chroma resolution of the re-encoded JPEGs.
    pub chroma: Chroma,
}

impl Default for Reencode {
    /// FFCV's ImageNet setting: quality 90, sizes kept.
    fn default() -> Self {
        Reencode {
            max_side: None,
            quality: 90,
            chroma: Chroma::Auto,
        }
    }
}

/// Chroma subsampling of re-encoded JPEGs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Chroma {
    /// jpeg-encoder's rule: 4:4:4 from quality 90 up, 4:2:0 below.
    #[default]
    Auto,
    /// Full chroma resolution (4:4:4): sharpest colour edges, largest files, slowest to decode.
    Full,
    /// Half chroma resolution both ways (4:2:0), as ImageNet's own JPEGs and Pillow's default save:
    /// ~20% smaller files and ~15% faster training reads than 4:4:4 at max side 320.
    Half,
}

impl Chroma {
    /// The name used on command lines and in manifests: `auto`, `444`, `420`.
    pub fn name(self) -> &'static str {
        match self {
            Chroma::Auto => "auto",
            Chroma::Full => "444",
            Chroma::Half => "420",
        }
    }
}

impl fmt::Display for Chroma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Chroma {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Chroma::Auto),
            "444" | "4:4:4" => Ok(Chroma::Full),
            "420" | "4:2:0" => Ok(Chroma::Half),
            _ => Err(format!(
                "unknown chroma subsampling {s:?}: expected auto, 444 or 420"
            )),
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    split: ShardSplit,
    reencode: Option<Reencode>,
    seed: u64,
    threads: usize,
    json: bool,
    skip_bad: bool,
    pause: Duration,
}

/// Settings of a [`ShardWriter`]; [`ShardWriterBuilder::build`] checks them.
#[derive(Debug, Clone)]
pub struct ShardWriterBuilder {
    config: Config,
}

impl Default for ShardWriterBuilder {
    fn default() -> Self {
        ShardWriterBuilder {
            config: Config {
                split: ShardSplit::Bytes(1 << 30),
                reencode: None,
                seed: 0,
                threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                json: false,
                skip_bad: false,
                pause: Duration::ZERO,
            },
        }
    }
}

impl ShardWriterBuilder {
    /// Defaults: 1 GiB shards, original bytes, seed 0, all cores, no `.json` members, bad samples fail.
    pub fn new() -> Self {
        Self::default()
    }

    /// How to split; see [`ShardSplit`].
    pub fn split(&mut self, split: ShardSplit) -> &mut Self {
        self.config.split = split;
        self
    }

    /// Shards of at most `bytes` each (one sample larger than that gets a shard of its own).
    pub fn shard_bytes(&mut self, bytes: u64) -> &mut Self {
        self.split(ShardSplit::Bytes(bytes))
    }

    /// Exactly `n` shards.
    pub fn num_shards(&mut self, n: usize) -> &mut Self {
        self.split(ShardSplit::Count(n))
    }

    /// Re-encode the images (`None`: copy the original bytes).
    pub fn reencode(&mut self, reencode: Option<Reencode>) -> &mut Self {
        self.config.reencode = reencode;
        self
    }

    /// Seed of the shuffle across shards.
    pub fn seed(&mut self, seed: u64) -> &mut Self {
        self.config.seed = seed;
        self
    }

    /// Worker threads (a pool of this writer's own).
    pub fn threads(&mut self, threads: usize) -> &mut Self {
        self.config.threads = threads;
        self
    }

    /// Also write `<key>.json`: original name, class name, width, height and byte size.
    pub fn json(&mut self, yes: bool) -> &mut Self {
        self.config.json = yes;
        self
    }

    /// Leave out samples that cannot be read or decoded (listed in the manifest) instead of failing.
    pub fn skip_bad(&mut self, yes: bool) -> &mut Self {
        self.config.skip_bad = yes;
        self
    }

    /// Sleep this long after each sample is written. For tests that interrupt a run.
    #[doc(hidden)]
    pub fn pause_per_sample(&mut self, pause: Duration) -> &mut Self {
        self.config.pause = pause;
        self
    }

    /// Checks the settings and starts the worker pool.
    pub fn build(&self) -> Result<ShardWriter> {
        let c = &self.config;
        let bad = |what, reason: String| Err(Error::Config { what, reason });
        match c.split {
            ShardSplit::Bytes(b) if b < 4096 => {
                return bad("shard size", format!("{b} bytes; at least 4096"));
            }
            ShardSplit::Count(0) => return bad("number of shards", "0".into()),
            _ => {}
        }
        if let Some(r) = c.reencode {
            if !(1..=100).contains(&r.quality) {
                return bad("JPEG quality", format!("{}; it must be 1..=100", r.quality));
            }
            if let Some(side) = r.max_side
                && !(1..=65_535).contains(&side)
            {
                return bad(
                    "maximum side",
                    format!("{side} px; it must be 1..=65535 (JPEG's limit)"),
                );
            }
        }
        if c.threads == 0 {
            return bad("threads", "0; at least 1".into());
        }
        let workers = Workers::new(c.threads, "imgloader-shard", || Ok(Scratch::default()))?;
        Ok(ShardWriter {
            config: c.clone(),
            workers,
        })
    }
}

/// Where a run stands, for progress bars. Positions count samples taken from the shuffled source order,
/// written or skipped.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct ShardProgress {
    /// Positions done, including those of shards kept from an earlier run.
    pub done: usize,
    /// All positions (the source's length).
    pub total: usize,
    /// Positions covered by shards kept from an earlier run (done before this run started).
    pub resumed: usize,
    /// Shards finished, kept ones included.
    pub shards: usize,
    /// Bytes of finished shards, kept ones included.
    pub bytes: u64,
}

/// One finished shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// File name in the output folder.
    pub file: String,
    /// Samples in it.
    pub samples: usize,
    /// Positions of the shuffled order it covers (samples + bad samples left out).
    pub span: usize,
    /// File size.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the file.
    pub crc32: u32,
}

/// A sample left out by [`ShardWriterBuilder::skip_bad`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSample {
    /// Index in the source.
    pub index: usize,
    /// Full name ([`Source::name`]).
    pub name: String,
    /// Why, as one line.
    pub error: String,
}

/// What [`ShardWriter::write`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShardSummary {
    /// All shards, in order.
    pub shards: Vec<ShardInfo>,
    /// Samples written.
    pub samples: usize,
    /// Shards kept from an earlier, interrupted run.
    pub kept: usize,
    /// Samples left out.
    pub bad: Vec<BadSample>,
    /// Samples per class.
    pub class_counts: Vec<u64>,
    /// The manifest written.
    pub manifest: PathBuf,
}

/// Per-thread scratch: one decoder and one resizer per worker, reused for every image.
#[derive(Debug, Default)]
struct Scratch {
    read: Vec<u8>,
    decoder: Decoder,
    resizer: Option<fir::Resizer>,
    resized: Vec<u8>,
}

/// Converts a [`Source`] to webdataset shards. See the module docs.
#[derive(Debug)]
pub struct ShardWriter {
    config: Config,
    /// The pool that reads and re-encodes, with one [`Scratch`] per thread.
    workers: Workers<Scratch>,
}

/// A sample ready to go into a tar.
#[derive(Debug)]
struct Encoded {
    ext: &'static str,
    data: Vec<u8>,
    width: u32,
    height: u32,
    original_bytes: usize,
}

/// The file name of shard `n`.
pub fn shard_file_name(n: usize) -> String {
    format!("shard-{n:06}.tar")
}

fn tmp_name(n: usize) -> String {
    format!(".{}.tmp", shard_file_name(n))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn dir_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::ShardDir {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The shuffled order of `0..len` for `seed` (stream 2 of [`shuffle`]: apart from the sampler's).
fn permutation(len: usize, seed: u64) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..len as u32).collect();
    shuffle(&mut perm, seed, 2);
    perm
}

/// Key-safe file stem of a sample name: last path component, up to its first dot, reduced to
/// `[A-Za-z0-9_-]`, at most [`MAX_STEM`] characters.
fn safe_stem(name: &str) -> String {
    let base = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(name)
        .rsplit(" › ")
        .next()
        .unwrap_or(name);
    let stem = base.split('.').next().unwrap_or("");
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM)
        .collect()
}

/// Length of the prefix shared by all names, cut back to just after a separator (`/` or `› `), so that
/// names in shards do not depend on where the dataset was when it was sharded.
fn common_prefix(names: &[String]) -> usize {
    let Some(first) = names.first() else {
        return 0;
    };
    let mut len = first.len();
    for n in &names[1..] {
        len = first
            .bytes()
            .zip(n.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    while !first.is_char_boundary(len) {
        len -= 1; // names differing inside a multi-byte character
    }
    // Never strip a whole name (a one-sample source); cut just after a separator.
    let mut cut = first[..len].rfind(['/', ' ']).map_or(0, |i| i + 1);
    while names.iter().any(|n| n.len() <= cut) && cut > 0 {
        cut = first[..cut - 1].rfind(['/', ' ']).map_or(0, |i| i + 1);
    }
    cut
}

fn crc_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// CRC-32 and length of a file.
fn file_crc(path: &Path) -> std::io::Result<(u32, u64)> {
    let mut f = File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((h.finalize(), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

/// Writes `bytes` to `dest` atomically and durably ([`crate::atomic::write_file`]).
fn replace_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    crate::atomic::write_file(dest, bytes).map_err(|e| Error::Io {
        path: dest.to_owned(),
        source: e,
    })
}

/// A tar being written, with its running CRC and size.
struct TarOut {
    n: usize,
    tmp: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    bytes: u64,
    samples: usize,
    span: usize,
}

const BLOCK: u64 = 512;

fn tar_len(data: usize) -> u64 {
    BLOCK + (data as u64).div_ceil(BLOCK) * BLOCK
}

impl TarOut {
    fn create(dir: &Path, n: usize) -> Result<TarOut> {
        let tmp = dir.join(tmp_name(n));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(TarOut {
            n,
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            samples: 0,
            span: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(io_err(&self.tmp))?;
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// One member: a ustar header with fixed fields, the data, zero padding to the block.
    fn member(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).map_err(io_err(&self.tmp))?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.put(h.as_bytes())?;
        self.put(data)?;
        let pad = (BLOCK - data.len() as u64 % BLOCK) % BLOCK;
        self.put(&[0u8; BLOCK as usize][..pad as usize])
    }

    /// Ends the archive, syncs it and renames it to its final name.
    fn finish(mut self, dir: &Path) -> Result<ShardInfo> {
        self.put(&[0u8; 2 * BLOCK as usize])?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        let name = shard_file_name(self.n);
        let dest = dir.join(&name);
        std::fs::rename(&self.tmp, &dest).map_err(io_err(&dest))?;
        Ok(ShardInfo {
            file: name,
            samples: self.samples,
            span: self.span,
            bytes: self.bytes,
            crc32: self.crc.finalize(),
        })
    }
}

fn shard_json(s: &ShardInfo) -> Value {
    json!({"file": s.file, "samples": s.samples, "span": s.span, "bytes": s.bytes, "crc32": crc_hex(s.crc32)})
}

fn shard_from_json(v: &Value) -> Option<ShardInfo> {
    Some(ShardInfo {
        file: v.get("file")?.as_str()?.to_owned(),
        samples: v.get("samples")?.as_u64()? as usize,
        span: v.get("span")?.as_u64()? as usize,
        bytes: v.get("bytes")?.as_u64()?,
        crc32: u32::from_str_radix(v.get("crc32")?.as_str()?, 16).ok()?,
    })
}

fn bad_json(b: &BadSample) -> Value {
    json!({"index": b.index, "name": b.name, "error": b.error})
}

fn bad_from_json(v: &Value) -> Option<BadSample> {
    Some(BadSample {
        index: v.get("index")?.as_u64()? as usize,
        name: v.get("name")?.as_str()?.to_owned(),
        error: v.get("error")?.as_str()?.to_owned(),
    })
}

/// Finished shards with the bad samples each one's positions held.
struct Resume {
    shards: Vec<ShardInfo>,
    bad: Vec<Vec<BadSample>>,
}

/// The sequential half of a run: appends encoded samples to the open shard, closes shards.
struct WriteState<'a> {
    dir: &'a Path,
    settings: &'a Value,
    shards: Vec<ShardInfo>,
    /// Bad samples by shard, parallel to `shards`.
    bad: Vec<Vec<BadSample>>,
    current: Option<TarOut>,
    current_bad: Vec<BadSample>,
    /// Next position of the shuffled order.
    pos: usize,
    total: usize,
    resumed: usize,
    key_width: usize,
    config: &'a Config,
}

impl WriteState<'_> {
    fn progress(&self) -> ShardProgress {
        ShardProgress {
            done: self.pos,
            total: self.total,
            resumed: self.resumed,
            shards: self.shards.len(),
            bytes: self.shards.iter().map(|s| s.bytes).sum(),
        }
    }

    fn save_progress(&self) -> Result<()> {
        let shards: Vec<Value> = self
            .shards
            .iter()
            .zip(&self.bad)
            .map(|(s, bad)| {
                let mut v = shard_json(s);
                v["bad"] = bad.iter().map(bad_json).collect();
                v
            })
            .collect();
        let progress = json!({"settings": self.settings, "shards": shards});
        let text = serde_json::to_vec_pretty(&progress).expect("JSON values serialise");
        replace_file(&self.dir.join(PROGRESS_FILE), &text)
    }

    fn open_shard(&mut self) -> Result<&mut TarOut> {
        if self.current.is_none() {
            self.current = Some(TarOut::create(self.dir, self.shards.len())?);
        }
        Ok(self.current.as_mut().expect("just opened"))
    }

    /// Finishes the open shard (if any): rename, index, progress file.
    fn close_shard(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let info = cur.finish(self.dir)?;
        let path = self.dir.join(&info.file);
        let indexed = crate::source::index_shard(&path, self.dir)?;
        if indexed != info.samples {
            return Err(Error::Index {
                path,
                reason: format!(
                    "the shard reads back as {indexed} samples, {} were written",
                    info.samples
                ),
            });
        }
        self.shards.push(info);
        self.bad.push(std::mem::take(&mut self.current_bad));
        self.save_progress()
    }

    /// Takes the sample at the next position: writes it, or records it as bad.
    fn take(
        &mut self,
        index: usize,
        encoded: Result<Encoded>,
        source: &dyn Source,
        names: &[String],
    ) -> Result<()> {
        if let ShardSplit::Count(n) = self.config.split {
            let end = (self.shards.len() + 1) * self.total / n;
            if self.pos >= end {
                self.close_shard()?;
            }
        }
        match encoded {
            Err(e) if self.config.skip_bad => {
                self.open_shard()?.span += 1;
                self.current_bad.push(BadSample {
                    index,
                    name: source.name(index),
                    error: crate::error::chain(&e),
                });
            }
            Err(e) => return Err(e),
            Ok(e) => {
                let label = source.label(index);
                let cls = label.to_string();
                let meta = self.config.json.then(|| {
                    let class = source.classes().get(label as usize).map(String::as_str);
                    json!({
                        "name": names[index],
                        "class": class,
                        "width": e.width,
                        "height": e.height,
                        "bytes": e.original_bytes,
                    })
                    .to_string()
                });
                let size = tar_len(e.data.len())
                    + tar_len(cls.len())
                    + meta.as_ref().map_or(0, |m| tar_len(m.len()));
                if let ShardSplit::Bytes(limit) = self.config.split
                    && let Some(cur) = &self.current
                    && cur.samples > 0
                    && cur.bytes + size + 2 * BLOCK > limit
                {
                    self.close_shard()?;
                }
                let stem = safe_stem(&names[index]);
                let key = if stem.is_empty() {
                    format!("{index:0w$}", w = self.key_width)
                } else {
                    format!("{index:0w$}_{stem}", w = self.key_width)
                };
                let pause = self.config.pause;
                let cur = self.open_shard()?;
                cur.member(&format!("{key}.{}", e.ext), &e.data)?;
                cur.member(&format!("{key}.cls"), cls.as_bytes())?;
                if let Some(meta) = meta {
                    cur.member(&format!("{key}.json"), meta.as_bytes())?;
                }
                cur.samples += 1;
                cur.span += 1;
                if !pause.is_zero() {
                    cur.out.flush().map_err(io_err(&cur.tmp))?;
                    std::thread::sleep(pause);
                }
            }
        }
        self.pos += 1;
        Ok(())
    }
}

impl ShardWriter {
    /// Starts a [`ShardWriterBuilder`].
    pub fn builder() -> ShardWriterBuilder {
        ShardWriterBuilder::new()
    }

    /// The settings as recorded in the manifest and the progress file; a re-run must match them to resume.
    fn settings(&self, source: &dyn Source, names: &[String]) -> Value {
        let c = &self.config;
        let split = match c.split {
            ShardSplit::Bytes(b) => json!({"bytes": b}),
            ShardSplit::Count(n) => json!({"count": n}),
        };
        let reencode = c.reencode.map_or(
            Value::Null,
            // `chroma` only when set, so that shards written before it existed still resume.
            |r| match r.chroma {
                Chroma::Auto => json!({"max_side": r.max_side, "quality": r.quality}),
                c => json!({"max_side": r.max_side, "quality": r.quality, "chroma": c.name()}),
            },
        );
        // The source, by what the shards hold: names (relative), labels and classes.
        let mut h = crc32fast::Hasher::new();
        for (i, name) in names.iter().enumerate() {
            h.update(name.as_bytes());
            h.update(&source.label(i).to_le_bytes());
        }
        for class in source.classes() {
            h.update(class.as_bytes());
            h.update(b"\n");
        }
        json!({
            "version": FORMAT_VERSION,
            "seed": c.seed,
            "split": split,
            "reencode": reencode,
            "json": c.json,
            "skip_bad": c.skip_bad,
            "source": {
                "samples": source.len(),
                "classes": source.classes().len(),
                "digest": crc_hex(h.finalize()),
            },
        })
    }

    /// Checks the output folder and reads what an earlier run left there, keeping the leading shards that
    /// are still intact and removing everything after them.
    fn prepare(&self, out: &Path, settings: &Value) -> Result<Resume> {
        let mut resume = Resume {
            shards: Vec::new(),
            bad: Vec::new(),
        };
        // `metadata` follows a link: an output folder may be a link to another disk.
        match std::fs::metadata(out) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(out).map_err(io_err(out))?;
                return Ok(resume);
            }
            Err(e) => return Err(io_err(out)(e)),
            Ok(m) if !m.is_dir() => return Err(dir_err(out, "exists and is not a folder")),
            Ok(_) => {}
        }
        let mut ours_only = true;
        let mut any = false;
        for entry in std::fs::read_dir(out).map_err(io_err(out))? {
            let entry = entry.map_err(io_err(out))?;
            any = true;
            let name = entry.file_name().to_string_lossy().into_owned();
            ours_only &= is_ours(&name) && entry.file_type().is_ok_and(|t| t.is_file());
        }
        if !any {
            return Ok(resume);
        }
        let progress_path = out.join(PROGRESS_FILE);
        if !ours_only || !progress_path.is_file() {
            return Err(dir_err(
                out,
                "is not empty and holds no shard run of ours to resume; choose a new or empty folder",
            ));
        }
        let text = std::fs::read(&progress_path).map_err(io_err(&progress_path))?;
        let corrupt =
            |why: String| dir_err(&progress_path, format!("unusable progress file: {why}"));
        let progress: Value = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if progress.get("settings") != Some(settings) {
            return Err(dir_err(
                out,
                format!(
                    "holds shards written with other settings or from another source ({}), not {}; re-run \
                     with the same settings to resume, or choose a new folder",
                    progress.get("settings").unwrap_or(&Value::Null),
                    settings
                ),
            ));
        }
        let listed = progress
            .get("shards")
            .and_then(Value::as_array)
            .ok_or_else(|| corrupt("no shard list".into()))?;
        let mut shards = Vec::with_capacity(listed.len());
        let mut bad = Vec::with_capacity(listed.len());
        for v in listed {
            let s = shard_from_json(v).ok_or_else(|| corrupt(format!("bad shard entry {v}")))?;
            let b: Option<Vec<BadSample>> = v
                .get("bad")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(bad_from_json).collect());
            shards.push(s);
            bad.push(b.ok_or_else(|| corrupt(format!("bad sample list of {v}")))?);
        }
        // Keep the longest run of leading shards that are intact (checked in parallel).
        let intact: Vec<bool> = self.workers.install(|| {
            shards
                .par_iter()
                .enumerate()
                .map(|(n, s)| {
                    s.file == shard_file_name(n)
                        && file_crc(&out.join(&s.file))
                            .is_ok_and(|(crc, len)| crc == s.crc32 && len == s.bytes)
                })
                .collect()
        });
        let keep = intact.iter().take_while(|&&ok| ok).count();
        shards.truncate(keep);
        bad.truncate(keep);
        // Everything after the kept shards is redone: remove it (names of ours only, checked above).
        for entry in std::fs::read_dir(out).map_err(io_err(out))? {
            let entry = entry.map_err(io_err(out))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let shard_no = name
                .strip_prefix("shard-")
                .and_then(|r| r.split('.').next())
                .and_then(|d| d.parse::<usize>().ok());
            if name.ends_with(".tmp")
                || name == MANIFEST_FILE
                || shard_no.is_some_and(|n| n >= keep)
            {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        resume.shards = shards;
        resume.bad = bad;
        Ok(resume)
    }

    /// Writes `source` as shards into `out` (created if needed), resuming an interrupted run there.
    /// `progress` is called from the writing thread after each chunk of samples.
    pub fn write(
        &self,
        source: &dyn Source,
        out: &Path,
        progress: &(dyn Fn(&ShardProgress) + Sync),
    ) -> Result<ShardSummary> {
        let n = source.len();
        if n == 0 {
            return Err(Error::EmptyDataset {
                path: out.to_owned(),
                reason: "the source has no samples".into(),
            });
        }
        if n >= u32::MAX as usize {
            return Err(Error::Config {
                what: "source",
                reason: format!("{n} samples; at most 2^32-2"),
            });
        }
        if let ShardSplit::Count(k) = self.config.split
            && k > n
        {
            return Err(Error::Config {
                what: "number of shards",
                reason: format!("{k} shards for {n} samples: some would be empty"),
            });
        }
        let mut names: Vec<String> = (0..n).map(|i| source.name(i)).collect();
        let cut = common_prefix(&names);
        for name in &mut names {
            name.drain(..cut);
        }
        let settings = self.settings(source, &names);
        let resume = self.prepare(out, &settings)?;
        let perm = permutation(n, self.config.seed);

        let kept = resume.shards.len();
        let pos: usize = resume.shards.iter().map(|s| s.span).sum();
        let mut state = WriteState {
            dir: out,
            settings: &settings,
            shards: resume.shards,
            bad: resume.bad,
            current: None,
            current_bad: Vec::new(),
            pos,
            total: n,
            resumed: pos,
            key_width: (n - 1).to_string().len().max(8),
            config: &self.config,
        };
        // A kept shard's index may be missing (killed right after its rename); this loads or rebuilds it.
        for s in &state.shards {
            crate::source::index_shard(&out.join(&s.file), out)?;
        }
        state.save_progress()?;
        progress(&state.progress());

        let chunk = self.config.threads * 16;
        let todo = perm.get(pos..).unwrap_or_default();
        let names = &names;
        std::thread::scope(|scope| -> Result<()> {
            // Encode the next chunk on the pool while this thread writes the last one.
            let (tx, rx) = crossbeam_channel::bounded::<Vec<(usize, Result<Encoded>)>>(1);
            scope.spawn(move || {
                for part in todo.chunks(chunk) {
                    let encoded = self.workers.install(|| {
                        part.par_iter()
                            .map(|&i| (i as usize, self.encode(source, i as usize)))
                            .collect()
                    });
                    if tx.send(encoded).is_err() {
                        return; // the writer failed and dropped the receiver
                    }
                }
            });
            for encoded in rx {
                for (index, e) in encoded {
                    state.take(index, e, source, names)?;
                }
                progress(&state.progress());
            }
            Ok(())
        })?;
        state.close_shard()?;
        progress(&state.progress());

        let bad: Vec<BadSample> = state.bad.concat();
        let mut class_counts = vec![0u64; source.classes().len()];
        for i in 0..n {
            class_counts[source.label(i) as usize] += 1;
        }
        for b in &bad {
            class_counts[source.label(b.index) as usize] -= 1;
        }
        let samples = state.shards.iter().map(|s| s.samples).sum();
        let manifest = json!({
            "format": "webdataset",
            "writer": "imgloader::shard",
            "version": FORMAT_VERSION,
            "samples": samples,
            "classes": source.classes(),
            "class_counts": class_counts,
            "shards": state.shards.iter().map(shard_json).collect::<Vec<_>>(),
            "bad": bad.iter().map(bad_json).collect::<Vec<_>>(),
            "settings": settings,
        });
        let manifest_path = out.join(MANIFEST_FILE);
        let text = serde_json::to_vec_pretty(&manifest).expect("JSON values serialise");
        replace_file(&manifest_path, &text)?;
        Ok(ShardSummary {
            samples,
            kept,
            shards: state.shards,
            bad,
            class_counts,
            manifest: manifest_path,
        })
    }

    /// Reads (and re-encodes) sample `index`; runs on a pool thread.
    fn encode(&self, source: &dyn Source, index: usize) -> Result<Encoded> {
        self.workers
            .with(|scratch| self.encode_with(scratch, source, index))?
    }

    fn encode_with(
        &self,
        scratch: &mut Scratch,
        source: &dyn Source,
        index: usize,
    ) -> Result<Encoded> {
        let Scratch {
            read,
            decoder,
            resizer,
            resized,
        } = scratch;
        let bytes = source.bytes(index, read)?;
        let original_bytes = bytes.len();
        let sample_err = |e| Error::Decode {
            sample: source.name(index),
            source: e,
        };
        let Some(r) = self.config.reencode else {
            // The checks a decode makes before any pixel work, so that a file the readers would refuse
            // (cut short, or a header declaring gigapixels) is not copied into the shards.
            let info = decode::check(bytes, decoder.options()).map_err(sample_err)?;
            let ext = if info.format == ImageFormat::Png {
                "png"
            } else {
                "jpg"
            };
            return Ok(Encoded {
                ext,
                data: bytes.to_vec(),
                width: info.width,
                height: info.height,
                original_bytes,
            });
        };
        let img = decoder.decode(bytes).map_err(sample_err)?;
        let (width, height) = (img.width, img.height);
        let (w, h) = fit(width, height, r.max_side);
        let fail = |e: &dyn std::fmt::Display| Error::Encode {
            sample: source.name(index),
            reason: e.to_string(),
        };
        let pixels: &[u8] = if (w, h) == (width, height) {
            img.pixels
        } else {
            let src = fir::images::ImageRef::new(width, height, img.pixels, fir::PixelType::U8x3)
                .map_err(|e| fail(&e))?;
            resized.resize(w as usize * h as usize * 3, 0);
            let mut dst = fir::images::Image::from_slice_u8(w, h, resized, fir::PixelType::U8x3)
                .map_err(|e| fail(&e))?;
            let options = fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Hamming));
            resizer
                .get_or_insert_with(fir::Resizer::new)
                .resize(&src, &mut dst, &options)
                .map_err(|e| fail(&e))?;
            resized
        };
        let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
            return Err(fail(&format!(
                "{w}x{h} is over JPEG's 65535-pixel side; set a maximum side"
            )));
        };
        let mut data = Vec::with_capacity(original_bytes.max(4096));
        // jpeg-encoder's own rule (Auto): full chroma (4:4:4) from quality 90, 4:2:0 (cheaper to decode)
        // below. Sharp colour edges lose ~3 dB to 4:2:0, which would take quality 90-95 under 35 dB PSNR.
        let mut encoder = jpeg_encoder::Encoder::new(&mut data, r.quality);
        match r.chroma {
            Chroma::Auto => {}
            Chroma::Full => encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4),
            Chroma::Half => encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0),
        }
        encoder
            .encode(pixels, w16, h16, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| fail(&e))?;
        Ok(Encoded {
            ext: "jpg",
            data,
            width,
            height,
            original_bytes,
        })
    }
}

/// Whether a file name in an output folder is one this module writes.
fn is_ours(name: &str) -> bool {
    let shard_like = |n: &str| {
        n.strip_prefix("shard-")
            .and_then(|r| r.split('.').next())
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    name == PROGRESS_FILE
        || name == MANIFEST_FILE
        || crate::atomic::is_temporary_of(name, PROGRESS_FILE)
        || crate::atomic::is_temporary_of(name, MANIFEST_FILE)
        || (shard_like(name) && (name.ends_with(".tar") || name.ends_with(".tar.idx")))
        || (shard_like(name.trim_start_matches('.')) && name.ends_with(".tmp"))
}

/// Size with the longer side at most `max_side`: aspect kept, rounded, at least 1 pixel.
pub fn fit(width: u32, height: u32, max_side: Option<u32>) -> (u32, u32) {
    let Some(m) = max_side else {
        return (width, height);
    };
    let long = width.max(height);
    if long <= m {
        return (width, height);
    }
    let scale = |s: u32| {
        ((u64::from(s) * u64::from(m) + u64::from(long) / 2) / u64::from(long)).max(1) as u32
    };
    if width >= height {
        (m, scale(height))
    } else {
        (scale(width), m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{OpenOptions, open};
    use std::sync::Arc;

    /// A small class-folder tar and the folder it came from.
    fn dataset(dir: &Path, per_class: usize) -> Arc<dyn Source> {
        let cfg = imgfixtures::SynthConfig {
            classes: 3,
            train_per_class: per_class,
            val_per_class: 1,
            min_side: 64,
            max_side: 160,
            ..Default::default()
        };
        imgfixtures::write_dataset(&cfg, dir).unwrap();
        open(&dir.join("train.tar"), &OpenOptions::default()).unwrap()
    }

    fn write(src: &dyn Source, out: &Path, b: &ShardWriterBuilder) -> ShardSummary {
        b.build().unwrap().write(src, out, &|_| {}).unwrap()
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().into_string().unwrap(), e.path()))
            .filter(|(n, _)| n.ends_with(".tar") || n == MANIFEST_FILE)
            .map(|(n, p)| (n, std::fs::read(p).unwrap()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keys_are_safe_and_sizes_fit() {
        assert_eq!(safe_stem("a/b/n01_12.JPEG"), "n01_12");
        assert_eq!(safe_stem("x.tar › ../../etc/passwd"), "passwd");
        assert_eq!(safe_stem("t.tar › dir/..hidden.jpg"), "");
        assert_eq!(safe_stem("c:\\x\\é b.c.jpg"), "__b");
        assert_eq!(safe_stem(&"z".repeat(200)).len(), MAX_STEM);
        assert_eq!(fit(500, 375, Some(320)), (320, 240));
        assert_eq!(fit(375, 500, Some(320)), (240, 320));
        assert_eq!(fit(5000, 1, Some(100)), (100, 1));
        assert_eq!(fit(50, 40, Some(100)), (50, 40));
        assert_eq!(fit(50, 40, None), (50, 40));
        let names: Vec<String> = ["/d/t.tar › a/x.jpg", "/d/t.tar › b/y.jpg"]
            .map(String::from)
            .into();
        assert_eq!(&names[0][common_prefix(&names)..], "a/x.jpg");
        let accents: Vec<String> = ["/d/é/x.jpg", "/d/è/x.jpg"].map(String::from).into();
        assert_eq!(&accents[1][common_prefix(&accents)..], "è/x.jpg");
        let one = vec!["/d/x.jpg".to_owned()];
        assert_eq!(&one[0][common_prefix(&one)..], "x.jpg");
        let p = permutation(1000, 3);
        assert_eq!(p, permutation(1000, 3));
        assert_ne!(p, permutation(1000, 4));
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        assert!(is_ours("shard-000001.tar") && is_ours(".shard-000001.tar.tmp"));
        assert!(!is_ours("shard-.tar") && !is_ours("notes.txt") && !is_ours("shard-1x.tar"));
    }

    #[test]
    fn round_trip_copies_bytes_and_is_deterministic() {
        let t = tempfile::tempdir().unwrap();
        let src = dataset(t.path(), 7);
        let out = t.path().join("s");
        let mut b = ShardWriter::builder();
        b.num_shards(4).seed(5).threads(3).json(true);
        let sum = write(&*src, &out, &b);
        assert_eq!((sum.samples, sum.shards.len(), sum.kept), (21, 4, 0));
        assert_eq!(sum.class_counts, [7, 7, 7]);
        assert_eq!(
            sum.shards.iter().map(|s| s.samples).collect::<Vec<_>>(),
            [5, 5, 5, 6]
        );
        let back = open(&out, &OpenOptions::default()).unwrap();
        assert_eq!(back.len(), src.len());
        assert_eq!(back.classes(), src.classes());
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        for i in 0..src.len() {
            assert_eq!(back.label(i), src.label(i));
            assert_eq!(
                back.bytes(i, &mut s1).unwrap(),
                src.bytes(i, &mut s2).unwrap()
            );
            let name = back.name(i);
            assert!(name.ends_with(".jpg"), "{name}");
            assert!(name.contains(&format!("{i:08}_n")), "{name}");
        }
        // Shuffled: shard 0 does not hold the first five samples.
        let first = open(&out.join("shard-000000.tar"), &OpenOptions::default()).unwrap();
        assert_eq!(first.len(), 5);
        let keys: Vec<usize> = (0..5)
            .map(|i| {
                first.name(i).rsplit(" › ").next().unwrap()[..8]
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_ne!(keys, [0, 1, 2, 3, 4]);
        assert!(out.join("shard-000000.tar.idx").is_file());
        // Same again with one thread: byte-identical.
        let out2 = t.path().join("s2");
        b.threads(1);
        write(&*src, &out2, &b);
        assert_eq!(files(&out), files(&out2));
        // Another seed shuffles differently.
        let out3 = t.path().join("s3");
        b.seed(6);
        write(&*src, &out3, &b);
        assert_ne!(files(&out)[1], files(&out3)[1]);
        // Fixed tar headers.
        let data = std::fs::read(out.join("shard-000001.tar")).unwrap();
        let mut ar = tar::Archive::new(&data[..]);
        for e in ar.entries().unwrap() {
            let h = e.unwrap().header().clone();
            assert_eq!(
                (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
                (0, 0, 0)
            );
            assert_eq!(h.mode().unwrap(), 0o644);
        }
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(manifest["samples"], 21);
        assert_eq!(manifest["shards"][3]["samples"], 6);
    }

    #[test]
    fn reencoding_shrinks_within_35_db() {
        let t = tempfile::tempdir().unwrap();
        let src = dataset(t.path(), 3);
        let mut dec = Decoder::default();
        let mut dec2 = Decoder::default();
        let mut scratch = Vec::new();
        for (max_side, quality) in [(None, 95), (Some(60), 95)] {
            let out = t.path().join(format!("q{max_side:?}"));
            let mut b = ShardWriter::builder();
            b.shard_bytes(12_000).reencode(Some(Reencode {
                max_side,
                quality,
                ..Reencode::default()
            }));
            let sum = write(&*src, &out, &b);
            assert!(sum.shards.len() > 1);
            for s in &sum.shards {
                assert!(s.bytes <= 12_000 || s.samples == 1, "{s:?}");
            }
            let back = open(&out, &OpenOptions::default()).unwrap();
            assert_eq!(back.len(), src.len());
            let mut resizer = fir::Resizer::new();
            for i in 0..src.len() {
                assert_eq!(back.label(i), src.label(i));
                let orig = dec.decode(src.bytes(i, &mut scratch).unwrap()).unwrap();
                let got = dec2
                    .decode(back.bytes(i, &mut Vec::new()).unwrap())
                    .unwrap();
                let (w, h) = fit(orig.width, orig.height, max_side);
                assert_eq!((got.width, got.height), (w, h));
                assert!(w.max(h) <= max_side.unwrap_or(u32::MAX));
                let mut want = vec![0u8; w as usize * h as usize * 3];
                if (w, h) == (orig.width, orig.height) {
                    want.copy_from_slice(orig.pixels);
                } else {
                    let s = fir::images::ImageRef::new(
                        orig.width,
                        orig.height,
                        orig.pixels,
                        fir::PixelType::U8x3,
                    )
                    .unwrap();
                    let mut d =
                        fir::images::Image::from_slice_u8(w, h, &mut want, fir::PixelType::U8x3)
                            .unwrap();
                    let o = fir::ResizeOptions::new()
                        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Hamming));
                    resizer.resize(&s, &mut d, &o).unwrap();
                }
                let db = imgfixtures::psnr(&want, got.pixels);
                assert!(db >= 35.0, "sample {i}: {db:.1} dB");
            }
        }
    }

    #[test]
    fn resumes_after_damage_and_refuses_other_settings() {
        let t = tempfile::tempdir().unwrap();
        let src = dataset(t.path(), 6);
        let full = t.path().join("full");
        let mut b = ShardWriter::builder();
        b.shard_bytes(8_000).seed(1).reencode(Some(Reencode {
            max_side: Some(80),
            quality: 80,
            chroma: Chroma::Half,
        }));
        let whole = write(&*src, &full, &b);
        assert!(whole.shards.len() >= 4, "{:?}", whole.shards);

        // An interrupted run: later shards missing, one corrupt, a partial temporary file.
        let part = t.path().join("part");
        write(&*src, &part, &b);
        std::fs::remove_file(part.join(MANIFEST_FILE)).unwrap();
        std::fs::remove_file(part.join("shard-000003.tar")).unwrap();
        let mut two = std::fs::read(part.join("shard-000002.tar")).unwrap();
        two[700] ^= 1;
        std::fs::write(part.join("shard-000002.tar"), &two).unwrap();
        std::fs::write(part.join(".shard-000004.tar.tmp"), b"partial").unwrap();
        let again = write(&*src, &part, &b);
        assert_eq!(again.kept, 2);
        assert_eq!(files(&full), files(&part));
        assert!(!part.join(".shard-000004.tar.tmp").exists());
        // A finished run re-run keeps everything.
        assert_eq!(write(&*src, &part, &b).kept, whole.shards.len());

        let err = b
            .clone()
            .seed(2)
            .build()
            .unwrap()
            .write(&*src, &part, &|_| {});
        let msg = crate::error::chain(&err.unwrap_err());
        assert!(msg.contains("other settings"), "{msg}");
        // Another chroma is another setting too.
        let full_chroma = b
            .clone()
            .reencode(Some(Reencode {
                max_side: Some(80),
                quality: 80,
                chroma: Chroma::Full,
            }))
            .build()
            .unwrap()
            .write(&*src, &part, &|_| {});
        let msg = crate::error::chain(&full_chroma.unwrap_err());
        assert!(msg.contains("other settings"), "{msg}");
        let foreign = t.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
        let err = b.build().unwrap().write(&*src, &foreign, &|_| {});
        let msg = crate::error::chain(&err.unwrap_err());
        assert!(msg.contains("not empty"), "{msg}");
        assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);
    }

    /// The luma sampling factors of a baseline JPEG's frame header: 0x22 for 4:2:0, 0x11 for 4:4:4.
    fn luma_sampling(jpeg: &[u8]) -> u8 {
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 11]
    }

    #[test]
    fn chroma_setting_picks_the_subsampling() {
        let t = tempfile::tempdir().unwrap();
        let src = dataset(t.path(), 2);
        for (quality, chroma, want) in [
            (90, Chroma::Auto, 0x11),
            (80, Chroma::Auto, 0x22),
            (95, Chroma::Half, 0x22),
            (50, Chroma::Full, 0x11),
        ] {
            let out = t.path().join(format!("{quality}-{chroma}"));
            let mut b = ShardWriter::builder();
            b.reencode(Some(Reencode {
                max_side: Some(64),
                quality,
                chroma,
            }));
            write(&*src, &out, &b);
            let mut jpegs = 0;
            for (name, data) in files(&out) {
                if !name.ends_with(".tar") {
                    continue;
                }
                let mut archive = tar::Archive::new(&data[..]);
                for entry in archive.entries().unwrap() {
                    let mut entry = entry.unwrap();
                    if entry
                        .path()
                        .unwrap()
                        .extension()
                        .is_some_and(|e| e == "jpg")
                    {
                        let mut jpeg = Vec::new();
                        entry.read_to_end(&mut jpeg).unwrap();
                        assert_eq!(luma_sampling(&jpeg), want, "{quality} {chroma}");
                        jpegs += 1;
                    }
                }
            }
            assert!(jpegs > 0);
        }
        assert_eq!("420".parse::<Chroma>(), Ok(Chroma::Half));
        assert!(
            "4:1:1"
                .parse::<Chroma>()
                .unwrap_err()
                .contains("auto, 444 or 420")
        );
    }

    #[test]
    fn bad_samples_fail_or_are_listed() {
        let t = tempfile::tempdir().unwrap();
        let class = t.path().join("odd").join("c");
        std::fs::create_dir_all(&class).unwrap();
        for f in imgfixtures::odd::all() {
            std::fs::write(class.join(f.name), &f.bytes).unwrap();
        }
        let src = open(&t.path().join("odd"), &OpenOptions::default()).unwrap();
        let re = Some(Reencode::default());
        let err = ShardWriter::builder()
            .reencode(re)
            .build()
            .unwrap()
            .write(&*src, &t.path().join("a"), &|_| {})
            .unwrap_err();
        let msg = crate::error::chain(&err);
        assert!(
            msg.contains("empty.JPEG") || msg.contains("not_an_image") || msg.contains("truncated"),
            "{msg}"
        );

        for reencode in [None, re] {
            let out = t.path().join(format!("b{}", reencode.is_some()));
            let sum = write(
                &*src,
                &out,
                ShardWriter::builder()
                    .reencode(reencode)
                    .skip_bad(true)
                    .num_shards(2),
            );
            let mut bad: Vec<&str> = sum
                .bad
                .iter()
                .map(|b| b.name.rsplit('/').next().unwrap())
                .collect();
            bad.sort();
            // Copying makes a decode's header-level checks, which find the truncated scan too.
            let want: &[&str] = &["empty.JPEG", "not_an_image.JPEG", "truncated.jpg"];
            assert_eq!(bad, want);
            let back = open(&out, &OpenOptions::default()).unwrap();
            assert_eq!(back.len(), src.len() - want.len());
            let png = (0..back.len())
                .filter(|&i| back.name(i).ends_with(".png"))
                .count();
            assert_eq!(png, usize::from(reencode.is_none()));
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        for (b, what) in [
            (
                ShardWriter::builder().num_shards(0).clone(),
                "number of shards",
            ),
            (ShardWriter::builder().shard_bytes(10).clone(), "shard size"),
            (ShardWriter::builder().threads(0).clone(), "threads"),
            (
                ShardWriter::builder()
                    .reencode(Some(Reencode {
                        max_side: None,
                        quality: 0,
                        ..Reencode::default()
                    }))
                    .clone(),
                "quality",
            ),
            (
                ShardWriter::builder()
                    .reencode(Some(Reencode {
                        max_side: Some(0),
                        quality: 90,
                        ..Reencode::default()
                    }))
                    .clone(),
                "maximum side",
            ),
        ] {
            let msg = b.build().unwrap_err().to_string();
            assert!(msg.contains(what), "{msg}");
        }
    }
}
