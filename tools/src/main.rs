//! `imgtool`: dataset tools. Thin: parse arguments, call the loader and fixtures crates, print.

/// `println!` that hands a write error (above all a closed pipe: `imgtool stats ... | head`) back to the
/// caller with `?`, for `main` to judge, where `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

mod escape;
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
use serde::Serialize;
use std::sync::Arc;

use crate::escape::Esc;

use imgloader::decode::JpegBackend;
use imgloader::{
    BadSamples, DecodeOptions, DecodePool, DistributedSampler, IndexPolicy, Loader, OpenOptions,
    OpenReport, Source, TrainAugment, Transform, ValAugment,
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
    /// Chart imgtrain runs: loss, top-1, top-5, learning rate and images/s per epoch, from each run
    /// folder's metrics.jsonl (or summary.csv, timm's too); several runs on one chart.
    ///
    /// Example: imgtool plot runs/a runs/b --out runs.png
    Plot(PlotArgs),
}

#[derive(Debug, clap::Args)]
struct PlotArgs {
    /// Run folders: imgtrain's --output_dir.
    #[arg(required = true, value_name = "RUN_DIR")]
    dirs: Vec<PathBuf>,
    /// The chart: FILE.png or FILE.svg.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Width in pixels.
    #[arg(long, default_value_t = 1500)]
    width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = 900)]
    height: u32,
}

fn plot(args: PlotArgs) -> anyhow::Result<()> {
    if args.width < 600 || args.height < 400 {
        anyhow::bail!(
            "--width {} --height {}: at least 600 x 400 pixels, to fit six panels",
            args.width,
            args.height
        );
    }
    let size = imgtool::plot::Size {
        width: args.width,
        height: args.height,
    };
    let runs = imgtool::plot::plot(&args.dirs, &args.out, size)?;
    let epochs: usize = runs.iter().map(|r| r.epochs.len()).sum();
    outln!(
        "{}: {} run(s), {epochs} epoch(s)",
        args.out.display(),
        runs.len()
    );
    Ok(())
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
    /// ILSVRC2012_validation_ground_truth.txt (which also needs --synsets). A flat tar's index keeps the
    /// labels: later opens need no --labels, and a changed labels file makes them be read again.
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
    /// Decode only: no augmentation, no batch assembly, on the same number of threads.
    Decode,
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
    /// Epochs to time (after a warm-up over the first batches of an untimed epoch).
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Stop after this many images (whole batches), over all epochs; 0: whole epochs. For big datasets.
    #[arg(long, default_value_t = 0)]
    max_images: usize,
    /// Seed of shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output side length.
    #[arg(long, default_value_t = 224)]
    crop_size: u32,
    /// JPEG decoder: turbo (libjpeg-turbo, region decode; the default when built in) or zune (zune-jpeg,
    /// pure Rust).
    #[arg(long, default_value_t = JpegBackend::default())]
    jpeg: JpegBackend,
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
    outln!(
        "wrote {} classes: {} train + {} val images ({:.1} MB of JPEG, written as folders and as train.tar/val.tar) in {} ({:.1}s)",
        summary.classes,
        summary.train.images,
        summary.val.images,
        (summary.train.jpeg_bytes + summary.val.jpeg_bytes) as f64 / 1e6,
        Esc(args.out.display()),
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
    let (source, report) = imgloader::open_with_report(src, &opts)
        .with_context(|| format!("opening {}", src.display()))?;
    // On stderr for every command, so that `--json` output stays one object.
    for warning in &report.warnings {
        eprintln!("imgtool: warning: {}", Esc(warning));
    }
    Ok((source, report))
}

/// What `--json` prints when a command fails before it has a result: stdout still holds one JSON
/// object, and the error also goes to stderr and sets the exit code, as without `--json`.
#[derive(Debug, Serialize)]
struct JsonFailure {
    source: String,
    ok: bool,
    error: String,
}

/// Runs `f`; with `json`, a failure is also printed on stdout as a [`JsonFailure`].
fn json_on_failure<T>(
    json: bool,
    src: &Path,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let result = f();
    if let (true, Err(err)) = (json, &result) {
        let failure = JsonFailure {
            source: src.display().to_string(),
            ok: false,
            error: format!("{err:#}"),
        };
        // Serialising these three strings cannot fail; a failed write (a closed pipe) leaves the error
        // itself to be reported.
        if let Ok(line) = serde_json::to_string(&failure) {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    }
    result
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
    outln!(
        "{}: {:?}, {} images in {} classes, {:.1} MB of images",
        Esc(args.src.display()),
        r.layout,
        r.images,
        r.classes,
        r.image_bytes as f64 / 1e6
    );
    if let Some(line) = skipped_line(&r.skipped) {
        outln!("{line}");
    }
    if let Some(labels) = &r.labels_file {
        let synsets = r
            .synsets_file
            .as_ref()
            .map(|s| format!(" + {}", Esc(s.display())))
            .unwrap_or_default();
        let how = match (r.labels_from_index, r.layout) {
            (true, _) => "labels from the index",
            (false, imgloader::Layout::FlatTar) => "read, and kept in the index",
            _ => "read",
        };
        outln!("labels: {}{synsets} ({how})", Esc(labels.display()));
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
        outln!("{} archive(s): {what}", r.archives);
    }
    for note in &r.notes {
        outln!("note: {}", Esc(note));
    }
    for file in &r.index_files {
        outln!("index: {}", Esc(file.display()));
    }
    outln!("took {secs:.3}s");
    Ok(())
}

/// Peak resident set size of this process, from /proc (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Resident set size of this process now, from /proc (Linux), in bytes.
fn current_rss() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

/// Time all threads of this process have spent so far on a CPU, and runnable but waiting for one, in
/// seconds, from /proc/self/task/*/schedstat. Load elsewhere on the machine slows the wall clock but not
/// the first, so the CPU time per image compares tools fairly even on a busy machine; the second tells
/// waiting for a core (other load) apart from waiting for work (a stall in the pipeline).
fn cpu_seconds() -> Option<(f64, f64)> {
    let (mut on_cpu, mut waiting) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        let mut fields = stat.split_whitespace().map(str::parse::<u64>);
        on_cpu += fields.next()?.ok()?;
        waiting += fields.next()?.ok()?;
    }
    Some((on_cpu as f64 / 1e9, waiting as f64 / 1e9))
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One timed epoch of `imgtool bench`.
#[derive(Debug)]
struct EpochRun {
    images: usize,
    bad: usize,
    secs: f64,
    /// Resident set size right after the epoch: it must not grow from one epoch to the next.
    rss: u64,
}

/// What the bench runs: the loader (train/val: decode + augment + batch), or the decode pool alone.
enum BenchRunner {
    Loader(Loader),
    Decode {
        pool: DecodePool,
        sampler: DistributedSampler,
    },
}

impl BenchRunner {
    fn new(args: &BenchArgs, source: Arc<dyn Source>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            args.jpeg.is_available(),
            "--jpeg {}: this imgtool was built without libjpeg-turbo \
             (cargo build --release -p imgtool --features turbojpeg)",
            args.jpeg
        );
        let decode = DecodeOptions {
            jpeg: args.jpeg,
            ..DecodeOptions::default()
        };
        let transform = match args.pipeline {
            Pipeline::Train => Transform::Train(TrainAugment {
                size: (args.crop_size, args.crop_size),
                ..Default::default()
            }),
            Pipeline::Val => Transform::Val(ValAugment {
                crop: args.crop_size,
                ..Default::default()
            }),
            Pipeline::Decode => {
                let pool = DecodePool::new(source.clone(), args.threads, decode)
                    .context("configuring the decode pool")?;
                // Shuffled like the train pipeline, so both read the files in the same kind of order.
                let sampler = DistributedSampler::new(source.len(), 0, 1, true, args.seed, false)
                    .context("configuring the sampler")?;
                anyhow::ensure!(
                    args.batch_size > 0,
                    "invalid batch size: must be at least 1"
                );
                return Ok(BenchRunner::Decode { pool, sampler });
            }
        };
        let loader = Loader::builder(source)
            .batch_size(args.batch_size)
            .threads(args.threads)
            .transform(transform)
            .decode_options(decode)
            .seed(args.seed)
            .bad_samples(BadSamples::Skip {
                max_total: usize::MAX,
                max_consecutive: 16,
            })
            .build()
            .context("configuring the loader")?;
        Ok(BenchRunner::Loader(loader))
    }

    /// Runs epoch `epoch`, stopping after `limit` images (whole batches); returns (images, bad samples)
    /// and appends the indices read to `seen`.
    fn epoch(
        &self,
        epoch: u64,
        limit: usize,
        seen: &mut Vec<usize>,
    ) -> anyhow::Result<(usize, usize)> {
        match self {
            BenchRunner::Loader(loader) => {
                let bad_before = loader.bad_samples();
                let mut images = 0;
                for batch in loader.epoch(epoch) {
                    let batch = batch?;
                    images += batch.len;
                    seen.extend_from_slice(&batch.indices);
                    if images >= limit {
                        break;
                    }
                }
                Ok((images, loader.bad_samples() - bad_before))
            }
            BenchRunner::Decode { pool, sampler } => {
                let mut indices = sampler.indices(epoch);
                indices.truncate(limit);
                let summary = pool.decode(&indices, |_, _| {})?;
                seen.extend_from_slice(&indices);
                Ok((summary.images, summary.bad))
            }
        }
    }
}

/// What `bench` measured, before it is printed.
struct BenchRun {
    runs: Vec<EpochRun>,
    images: usize,
    bad: usize,
    secs: f64,
    /// Encoded bytes of the images read.
    bytes: usize,
    /// CPU time and run-queue wait of the timed epochs, where /proc tells.
    cpu: Option<(f64, f64)>,
    peak_rss: u64,
}

fn measure(args: &BenchArgs) -> anyhow::Result<BenchRun> {
    let (source, _) = open(&args.src, &args.labels, false)?;
    let runner = BenchRunner::new(args, source.clone())?;
    let limit = match args.max_images {
        0 => usize::MAX,
        n => n,
    };

    // Warm-up on an epoch that is never timed: the first batches fault in the files, start the threads
    // and grow the workers' scratch buffers.
    let mut seen = Vec::new();
    runner.epoch(u64::MAX, 2 * args.batch_size, &mut seen)?;
    seen.clear();

    let mut runs = Vec::new();
    let mut left = limit;
    let cpu_start = cpu_seconds();
    for epoch in 0..args.epochs {
        if left == 0 {
            break;
        }
        let start = Instant::now();
        let (images, bad) = runner.epoch(epoch, left, &mut seen)?;
        let secs = start.elapsed().as_secs_f64();
        left = left.saturating_sub(images);
        runs.push(EpochRun {
            images,
            bad,
            secs,
            rss: current_rss().unwrap_or(0),
        });
    }
    let cpu = cpu_seconds()
        .zip(cpu_start)
        .map(|(end, start)| (end.0 - start.0, end.1 - start.1));
    // Counted after the clock stops: a folder source reads the file again to learn its size.
    let mut scratch = Vec::new();
    let bytes: usize = seen
        .iter()
        .map(|&i| source.bytes(i, &mut scratch).map_or(0, <[u8]>::len))
        .sum();
    Ok(BenchRun {
        images: runs.iter().map(|r| r.images).sum(),
        bad: runs.iter().map(|r| r.bad).sum(),
        secs: runs.iter().map(|r| r.secs).sum(),
        runs,
        bytes,
        cpu,
        peak_rss: peak_rss().unwrap_or(0),
    })
}

/// `bench --json`, the fields `scripts/` compare across tools. Rates are `null` where they do not exist
/// (no image decoded, or no time measured): JSON has no `inf` or `NaN`.
#[derive(Debug, Serialize)]
struct BenchJson {
    tool: &'static str,
    pipeline: String,
    jpeg: String,
    threads: usize,
    batch_size: usize,
    epochs: usize,
    images: usize,
    seconds: f64,
    images_per_sec: Option<f64>,
    images_per_sec_per_thread: Option<f64>,
    mb_per_sec: Option<f64>,
    peak_rss_bytes: u64,
    bad_samples: usize,
    cpu_seconds: Option<f64>,
    cpu_ms_per_image: Option<f64>,
    runqueue_wait_seconds: Option<f64>,
    epoch_images_per_sec: Vec<Option<f64>>,
    epoch_rss_bytes: Vec<u64>,
}

/// `v`, or `None` when it is infinite or NaN (a rate over zero images or zero seconds).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let BenchRun {
        runs,
        images,
        bad,
        secs,
        bytes,
        cpu,
        peak_rss: rss,
    } = json_on_failure(args.json, &args.src, || measure(&args))?;
    let ips = images as f64 / secs;
    let cpu_ms_per_image = cpu.map(|c| c.0 * 1e3 / images as f64);
    let pipeline = format!("{:?}", args.pipeline).to_lowercase();
    if args.json {
        let v = BenchJson {
            tool: "imgloader",
            pipeline,
            jpeg: args.jpeg.to_string(),
            threads: args.threads,
            batch_size: args.batch_size,
            epochs: runs.len(),
            images,
            seconds: secs,
            images_per_sec: finite(ips),
            images_per_sec_per_thread: finite(ips / args.threads as f64),
            mb_per_sec: finite(bytes as f64 / secs / 1e6),
            peak_rss_bytes: rss,
            bad_samples: bad,
            cpu_seconds: cpu.map(|c| c.0),
            cpu_ms_per_image: cpu_ms_per_image.and_then(finite),
            runqueue_wait_seconds: cpu.map(|c| c.1),
            epoch_images_per_sec: runs
                .iter()
                .map(|r| finite(r.images as f64 / r.secs))
                .collect(),
            epoch_rss_bytes: runs.iter().map(|r| r.rss).collect(),
        };
        outln!("{}", serde_json::to_string(&v)?);
    } else {
        // `inf`/`NaN` would read as a measurement; say there is none.
        let rate = |v: f64, digits: usize| {
            finite(v).map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
        };
        outln!(
            "{pipeline}: {images} images in {secs:.2}s = {} img/s ({} per thread, {} threads), \
             {} MB/s of encoded images, peak RSS {:.0} MiB, {bad} bad samples{}; JPEG by {}",
            rate(ips, 1),
            rate(ips / args.threads as f64, 1),
            args.threads,
            rate(bytes as f64 / secs / 1e6, 1),
            rss as f64 / (1 << 20) as f64,
            cpu_ms_per_image
                .and_then(finite)
                .map_or(String::new(), |c| format!(", {c:.2} ms of CPU per image")),
            args.jpeg,
        );
        if runs.len() > 1 {
            for (epoch, r) in runs.iter().enumerate() {
                outln!(
                    "  epoch {epoch}: {} images, {} img/s, RSS after it {:.0} MiB",
                    r.images,
                    rate(r.images as f64 / r.secs, 1),
                    r.rss as f64 / (1 << 20) as f64
                );
            }
        }
    }
    Ok(())
}

/// The loader's events (`tracing`) on stderr, as RUST_LOG asks (e.g. `RUST_LOG=imgloader=debug`); none
/// by default but warnings.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Synth(a) => synth(a),
        Command::Index(a) => index(a),
        Command::Bench(a) => bench(a),
        Command::Shard(a) => shard::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Plot(a) => plot(a),
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
            // Escaped here, once: messages carry member and file names, which are untrusted text.
            let _ = writeln!(
                std::io::stderr(),
                "imgtool: error: {}",
                Esc(format!("{err:#}"))
            );
            ExitCode::FAILURE
        }
    }
}
