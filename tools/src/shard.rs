//! `imgtool shard`: arguments to a [`ShardWriterBuilder`], a progress bar, a summary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use imgloader::IndexPolicy;
use imgloader::shard::{Chroma, Reencode, ShardSplit, ShardWriter};

use crate::Labels;
use crate::escape::Esc;
use crate::progress::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset to convert: tar, tar of tars, flat tar (with --labels, or indexed with them), folder, shard folder.
    src: PathBuf,
    #[command(flatten)]
    labels: Labels,
    /// Output folder: created, or an interrupted run of the same command to resume. Nothing is written
    /// elsewhere (the source's index is used if `imgtool index` saved one, else built in memory).
    #[arg(long)]
    out: PathBuf,
    /// Largest shard: a number of bytes with an optional unit (KB/MB/GB = 1000^n, K/M/G, KiB/MiB/GiB =
    /// 1024^n). Default 1GiB.
    #[arg(long, value_parser = parse_size, conflicts_with = "num_shards")]
    shard_size: Option<u64>,
    /// Exactly this many shards instead of a size.
    #[arg(long)]
    num_shards: Option<usize>,
    /// Re-encode so that the longer side is at most PX pixels (FFCV stores ImageNet at 400-500).
    #[arg(long, value_name = "PX")]
    max_side: Option<u32>,
    /// Re-encode at this JPEG quality (default 90 when only --max-side is given). Without --max-side and
    /// --quality the original bytes are copied.
    #[arg(long, value_name = "Q")]
    quality: Option<u8>,
    /// Chroma subsampling when re-encoding: auto (4:4:4 from quality 90, else 4:2:0), 444, or 420 (as
    /// ImageNet's originals; smaller and faster to train from). Implies re-encoding.
    #[arg(long, value_name = "MODE")]
    chroma: Option<Chroma>,
    /// Seed of the shuffle across shards.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also store `<key>.json`: original name, class, width, height, bytes.
    #[arg(long)]
    meta: bool,
    /// Leave out unreadable or undecodable images (listed in manifest.json) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Worker threads.
    #[arg(long, short = 'j', default_value_t = crate::cores())]
    threads: usize,
    /// Sleep this many milliseconds after each sample written (to test interruption).
    #[arg(long, hide = true, default_value_t = 0)]
    pause_per_sample_ms: u64,
}

/// `1GiB`, `500MB`, `64k`, `4096` -> bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number of bytes, e.g. 1GiB or 500MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}`: out of range"));
    }
    Ok(bytes as u64)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Read-only: nothing is written outside --out, not even the source's index (`imgtool index` saves it).
    let (source, report) = crate::open_with(&args.src, &args.labels, IndexPolicy::ReadOnly)?;
    let src = Esc(args.src.display());
    if let Some(line) = crate::skipped_line(&report.skipped) {
        // Say so before the long work: rejected members (links, `..`, absolute paths) are never read.
        eprintln!("{src}: {line}");
    }
    if report.indexes_built > 0 {
        eprintln!(
            "{src}: indexed in memory; `imgtool index {src}` saves the index so that re-runs start at once",
        );
    }
    let split = match args.num_shards {
        Some(n) => ShardSplit::Count(n),
        None => ShardSplit::Bytes(args.shard_size.unwrap_or(1 << 30)),
    };
    let reencode = (args.max_side.is_some() || args.quality.is_some() || args.chroma.is_some())
        .then(|| Reencode {
            max_side: args.max_side,
            quality: args.quality.unwrap_or(90),
            chroma: args.chroma.unwrap_or_default(),
        });
    let writer = ShardWriter::builder()
        .split(split)
        .reencode(reencode)
        .seed(args.seed)
        .threads(args.threads)
        .json(args.meta)
        .skip_bad(args.skip_bad)
        .pause_per_sample(Duration::from_millis(args.pause_per_sample_ms))
        .build()
        .context("invalid shard settings")?;

    let start = Instant::now();
    let progress = Progress::new("shard", source.len() as u64);
    let summary = writer
        .write(&*source, &args.out, &|p| {
            progress.set(p.done as u64, p.resumed as u64)
        })
        .with_context(|| {
            format!(
                "sharding {} into {}",
                args.src.display(),
                args.out.display()
            )
        });
    progress.finish();
    let summary = summary?;
    let secs = start.elapsed().as_secs_f64();

    let bytes: u64 = summary.shards.iter().map(|s| s.bytes).sum();
    let kept_samples: usize = summary.shards[..summary.kept]
        .iter()
        .map(|s| s.samples)
        .sum();
    let done_now = summary.samples - kept_samples;
    let rate = done_now as f64 / secs.max(1e-9);
    outln!(
        "{src}: {} samples in {} classes -> {} shards, {:.1} MB, in {} ({:.1}s: {rate:.1} img/s, {:.1} per thread, {} threads)",
        summary.samples,
        source.classes().len(),
        summary.shards.len(),
        bytes as f64 / 1e6,
        Esc(args.out.display()),
        secs,
        rate / args.threads as f64,
        args.threads,
    );
    if summary.kept > 0 {
        outln!(
            "resumed: kept {} finished shard(s) ({kept_samples} samples) from an earlier run",
            summary.kept
        );
    }
    if !summary.bad.is_empty() {
        outln!("left out {} bad sample(s):", summary.bad.len());
        for b in &summary.bad {
            outln!("  {}: {}", Esc(&b.name), Esc(&b.error));
        }
    }
    outln!("manifest: {}", Esc(summary.manifest.display()));
    Ok(())
}
