//! `imgtool`: dataset tools. Thin: parse arguments, call the loader and fixtures crates, print.

mod progress;
mod scan;
mod shard;
mod stats;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use imgloader::{
    BadSamples, IndexPolicy, Loader, OpenOptions, OpenReport, Source, TrainAugment, Transform,
    ValAugment,
};

/// Dataset tools for ImageNet-style data: synthesise, index, shard, verify, stats, benchmark.
#[derive(Debug, Parser)]
#[command(name = "imgtool", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a small learnable dataset: class folders plus train.tar/val.tar, from a seed.
    ///
    /// Example: imgtool synth --out demo-data --classes 10 --train-per-class 60 --val-per-class 20
    Synth(SynthArgs),
    /// Build (or check) the sidecar index of a tar, or scan a folder, and print a summary.
    ///
    /// Example: imgtool index demo-data/train.tar
    Index(IndexArgs),
    /// Convert a dataset into shuffled webdataset tar shards (`<key>.jpg` + `<key>.cls`), optionally
    /// re-encoded smaller; resumable.
    ///
    /// Writes `<out>/shard-000000.tar`, … each with an index sidecar, and `manifest.json` (counts, classes,
    /// per-shard CRC-32s). The loader and webdataset read the folder. An interrupted run is resumed by
    /// running the same command again.
    ///
    /// Example: imgtool shard train.tar --out train-shards --shard-size 1GiB --max-side 500 --quality 90
    Shard(shard::Args),
    /// Decode every image; list odd files (CMYK, grayscale, PNG named .JPEG) and bad ones (truncated,
    /// corrupt, oversized) by full name; exit non-zero on any bad file or wrong count.
    ///
    /// Example: imgtool verify ILSVRC2012_img_train.tar --expect imagenet-train
    Verify(verify::Args),
    /// Class counts, resolution and file-size distributions (text histograms or --json), from image
    /// headers only.
    ///
    /// Example: imgtool stats val.tar --labels LOC_val_solution.csv
    Stats(stats::Args),
    /// Measure the loader as a user gets it: source -> decode -> augment -> batches in memory.
    ///
    /// Example: imgtool bench demo-data/train.tar --pipeline train --threads 2
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct SynthArgs {
    /// Output folder (created; existing files of the same names are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Training images per class.
    #[arg(long, default_value_t = 60)]
    train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 20)]
    val_per_class: usize,
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `learnable`: the class is visible (shape, colour, texture); `realistic`: photo-like benchmark corpus.
    #[arg(long, value_enum, default_value_t = StyleArg::Learnable)]
    style: StyleArg,
    /// Replace an earlier dataset in --out (only train/, val/, train.tar, val.tar and their indexes).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StyleArg {
    Learnable,
    Realistic,
}

#[derive(Debug, clap::Args)]
struct IndexArgs {
    /// A tar (train.tar, val.tar, ILSVRC2012_img_train.tar) or a folder of class folders.
    src: PathBuf,
    #[command(flatten)]
    labels: Labels,
    /// Rebuild the index even if the existing one is valid.
    #[arg(long)]
    rebuild: bool,
}

/// Labels of a flat val tar or folder.
#[derive(Debug, clap::Args)]
struct Labels {
    /// Labels file: LOC_val_solution.csv, `file<TAB>synset` lines, or the devkit's
    /// ILSVRC2012_validation_ground_truth.txt (which also needs --synsets).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Synset list with the devkit's ids (map_clsloc.txt: `n02119789 1 kit_fox`), for the ground truth file.
    #[arg(long, value_name = "FILE")]
    synsets: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pipeline {
    /// RandomResizedCrop + flip.
    Train,
    /// Resize shorter side + centre crop.
    Val,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Dataset to read (tar, folder, shard directory).
    src: PathBuf,
    #[command(flatten)]
    labels: Labels,
    /// Which transform to run.
    #[arg(long, value_enum, default_value_t = Pipeline::Train)]
    pipeline: Pipeline,
    /// Worker threads.
    #[arg(long, short = 'j', default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
    /// Samples per batch.
    #[arg(long, short = 'b', default_value_t = 64)]
    batch_size: usize,
    /// Epochs to time (after one warm-up pass over the first batches).
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Output side length.
    #[arg(long, default_value_t = 224)]
    crop_size: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn synth(args: SynthArgs) -> anyhow::Result<()> {
    let base = match args.style {
        StyleArg::Learnable => imgfixtures::SynthConfig::default(),
        StyleArg::Realistic => imgfixtures::SynthConfig::realistic(),
    };
    let cfg = imgfixtures::SynthConfig {
        classes: args.classes,
        train_per_class: args.train_per_class,
        val_per_class: args.val_per_class,
        seed: args.seed,
        ..base
    };
    cfg.validate().context("invalid dataset settings")?;
    if args.force {
        for name in ["train", "val"] {
            let dir = args.out.join(name);
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            for file in [format!("{name}.tar"), format!("{name}.tar.idx")] {
                let file = args.out.join(file);
                if file.exists() {
                    std::fs::remove_file(&file)
                        .with_context(|| format!("removing {}", file.display()))?;
                }
            }
        }
    }
    let start = Instant::now();
    let summary = imgfixtures::write_dataset(&cfg, &args.out)
        .with_context(|| format!("writing the dataset to {}", args.out.display()))?;
    println!(
        "wrote {} classes: {} train + {} val images ({:.1} MB of JPEG, written as folders and as train.tar/val.tar) in {} ({:.1}s)",
        summary.classes,
        summary.train.images,
        summary.val.images,
        (summary.train.jpeg_bytes + summary.val.jpeg_bytes) as f64 / 1e6,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Default worker count: every core.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn open(
    src: &Path,
    labels: &Labels,
    rebuild: bool,
) -> anyhow::Result<(Arc<dyn Source>, OpenReport)> {
    let policy = if rebuild {
        IndexPolicy::Rebuild
    } else {
        IndexPolicy::Use
    };
    open_with(src, labels, policy)
}

fn open_with(
    src: &Path,
    labels: &Labels,
    index: IndexPolicy,
) -> anyhow::Result<(Arc<dyn Source>, OpenReport)> {
    let opts = OpenOptions {
        labels: labels.labels.clone(),
        synsets: labels.synsets.clone(),
        index,
        ..Default::default()
    };
    imgloader::open_with_report(src, &opts).with_context(|| format!("opening {}", src.display()))
}

/// `skipped N entries: 2 not an image, 1 link (rejected), …`, or `None` when nothing was skipped.
fn skipped_line(s: &imgloader::Skipped) -> Option<String> {
    if s.total() == 0 {
        return None;
    }
    let reasons = [
        ("not an image", s.non_image),
        ("unsupported image format", s.unsupported_image),
        ("directory", s.directories),
        ("hidden", s.hidden),
        ("outside any class folder", s.outside_class),
        ("link (rejected)", s.links),
        ("device or fifo (rejected)", s.devices),
        ("absolute path (rejected)", s.absolute),
        ("`..` in path (rejected)", s.dotdot),
        ("other", s.other),
    ];
    let listed: Vec<String> = reasons
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
    Some(format!(
        "skipped {} entries: {}",
        s.total(),
        listed.join(", ")
    ))
}

fn index(args: IndexArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let (_, r) = open(&args.src, &args.labels, args.rebuild)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {:?}, {} images in {} classes, {:.1} MB of images",
        args.src.display(),
        r.layout,
        r.images,
        r.classes,
        r.image_bytes as f64 / 1e6
    );
    if let Some(line) = skipped_line(&r.skipped) {
        println!("{line}");
    }
    if r.archives > 0 {
        let what = if r.members_scanned == 0 {
            format!(
                "index loaded, nothing rescanned ({} tar headers on record)",
                r.members
            )
        } else {
            format!(
                "scanned {} tar headers, {} index(es) built",
                r.members_scanned, r.indexes_built
            )
        };
        println!("{} archive(s): {what}", r.archives);
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    for file in &r.index_files {
        println!("index: {}", file.display());
    }
    println!("took {secs:.3}s");
    Ok(())
}

/// Peak resident set size of this process, from /proc (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let (source, _) = open(&args.src, &args.labels, false)?;
    let transform = match args.pipeline {
        Pipeline::Train => Transform::Train(TrainAugment {
            size: (args.crop_size, args.crop_size),
            ..Default::default()
        }),
        Pipeline::Val => Transform::Val(ValAugment {
            crop: args.crop_size,
            ..Default::default()
        }),
    };
    let loader = Loader::builder(source.clone())
        .batch_size(args.batch_size)
        .threads(args.threads)
        .transform(transform)
        .bad_samples(BadSamples::Skip {
            max_total: usize::MAX,
            max_consecutive: 16,
        })
        .build()
        .context("configuring the loader")?;

    // Warm-up: the first few batches fault in the files and the workers' scratch buffers.
    for batch in loader.epoch(u64::MAX).take(2) {
        batch?;
    }
    let bad_before = loader.bad_samples();
    let start = Instant::now();
    let (mut images, mut bytes) = (0usize, 0usize);
    let mut scratch = Vec::new();
    for epoch in 0..args.epochs {
        for batch in loader.epoch(epoch) {
            let batch = batch?;
            images += batch.len;
            for &i in &batch.indices {
                bytes += source.bytes(i, &mut scratch).map_or(0, <[u8]>::len);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ips = images as f64 / secs;
    let bad = loader.bad_samples() - bad_before;
    let rss = peak_rss().unwrap_or(0);
    let pipeline = format!("{:?}", args.pipeline).to_lowercase();
    if args.json {
        println!(
            "{{\"tool\":\"imgloader\",\"pipeline\":\"{pipeline}\",\"threads\":{},\"batch_size\":{},\"images\":{images},\
             \"seconds\":{secs:.4},\"images_per_sec\":{ips:.2},\"images_per_sec_per_thread\":{:.2},\
             \"mb_per_sec\":{:.3},\"peak_rss_bytes\":{rss},\"bad_samples\":{bad}}}",
            args.threads,
            args.batch_size,
            ips / args.threads as f64,
            bytes as f64 / secs / 1e6,
        );
    } else {
        println!(
            "{pipeline}: {images} images in {secs:.2}s = {ips:.1} img/s ({:.1} per thread, {} threads), \
             {:.1} MB/s of JPEG, peak RSS {:.0} MiB, {bad} bad samples",
            ips / args.threads as f64,
            args.threads,
            bytes as f64 / secs / 1e6,
            rss as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(a) => synth(a),
        Command::Index(a) => index(a),
        Command::Bench(a) => bench(a),
        Command::Shard(a) => shard::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Stats(a) => stats::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`imgtool ... | head`) is not a failure.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "imgtool: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
