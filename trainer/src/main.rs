//! `imgtrain`: train and evaluate torchvision architectures on ImageNet-style data with libtorch, with the
//! command line of pytorch/examples' ImageNet `main.py`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use imgloader::decode::JpegBackend;
use imgtrain::amp::Amp;
use imgtrain::config::RecipeFlags;
use imgtrain::console::Verbosity;
use imgtrain::dist::{Backend, DistFlags};
use imgtrain::schedule::LrSchedule;
use imgtrain::wandb::WandbConfig;
use imgtrain::{RunSummary, TrainConfig};

/// Train image classifiers with libtorch, fed by the imgloader pipeline.
///
/// The flags are those of pytorch/examples' ImageNet main.py, with the same defaults. Without DATA or
/// --dummy, imgtrain only checks libtorch and the device.
#[derive(Debug, Parser)]
#[command(name = "imgtrain", version, about)]
struct Args {
    /// Dataset folder: train.tar and val.tar, or train/ and val/ (class folders or webdataset shards), or
    /// ImageNet as downloaded (ILSVRC2012_img_train.tar + ILSVRC2012_img_val.tar + LOC_val_solution.csv,
    /// or Kaggle's ILSVRC/Data/CLS-LOC/).
    #[arg(value_name = "DATA")]
    data_positional: Option<PathBuf>,
    /// The dataset folder, as an option.
    #[arg(long = "data", value_name = "DIR", conflicts_with = "data_positional")]
    data: Option<PathBuf>,
    /// Model architecture (unknown names list the choices) [default: resnet18].
    #[arg(short = 'a', long, value_name = "ARCH")]
    arch: Option<String>,
    /// Loader threads decoding and augmenting images [default: 4].
    #[arg(short = 'j', long, value_name = "N")]
    workers: Option<usize>,
    /// Total epochs to run [default: 90, or the checkpoint's with --resume].
    #[arg(long, value_name = "N")]
    epochs: Option<u64>,
    /// Epoch to start from (default: 0, or the checkpoint's with --resume).
    #[arg(long = "start-epoch", visible_alias = "start_epoch", value_name = "N")]
    start_epoch: Option<u64>,
    /// Mini-batch size: the total of the processes of a node, as in main.py [default: 256].
    #[arg(
        short = 'b',
        long = "batch-size",
        visible_alias = "batch_size",
        value_name = "N"
    )]
    batch_size: Option<usize>,
    /// Initial learning rate [default: 0.1, or the checkpoint's with --resume].
    #[arg(
        long = "lr",
        visible_alias = "learning-rate",
        value_name = "LR",
        allow_negative_numbers = true
    )]
    lr: Option<f64>,
    /// SGD momentum [default: 0.9, or the checkpoint's with --resume].
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Weight decay, applied to every parameter as in main.py [default: 1e-4, or the checkpoint's with
    /// --resume].
    #[arg(
        long = "wd",
        visible_alias = "weight-decay",
        visible_alias = "weight_decay",
        value_name = "W",
        allow_negative_numbers = true
    )]
    weight_decay: Option<f64>,
    /// Print a progress line every N batches [default: 10].
    #[arg(
        short = 'p',
        long = "print-freq",
        visible_alias = "print_freq",
        value_name = "N"
    )]
    print_freq: Option<usize>,
    /// Resume from a checkpoint: model, momentum buffers, epoch, best Acc@1, seed, loss scaler, and the
    /// recipe (lr, momentum, wd, schedule, warm-up, label smoothing, epochs); a recipe flag given here
    /// overrides the checkpoint's, and says so.
    #[arg(long, value_name = "PATH")]
    resume: Option<PathBuf>,
    /// Evaluate the model on the validation split only.
    #[arg(short = 'e', long)]
    evaluate: bool,
    /// Start from pre-trained weights: a safetensors file of a torchvision state_dict.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    pretrained: Option<Option<PathBuf>>,
    /// Seed for weights, data order and augmentation; makes CPU runs bit-reproducible.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// GPU to use (default: GPU 0 when CUDA is available, else the CPU).
    #[arg(long, value_name = "N")]
    gpu: Option<usize>,
    /// Synthetic batches made on the device (no files, no decoding): measures the device alone.
    #[arg(long)]
    dummy: bool,
    /// Folder for checkpoint.safetensors, model_best.safetensors, metrics.jsonl, summary.csv, run.json and
    /// TensorBoard event files (tensorboard --logdir DIR) [default: .].
    #[arg(long = "output_dir", visible_alias = "output-dir", value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Mixed precision [default: bf16 on CUDA, off on the CPU].
    #[arg(long, value_enum, value_name = "MODE")]
    amp: Option<AmpArg>,
    /// Feed the model channels_last (NHWC) tensors [default: on for CUDA, off on the CPU].
    #[arg(long = "channels-last", visible_alias = "channels_last", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    channels_last: Option<bool>,
    /// Learning-rate schedule: step (x0.1 every 30 epochs, as main.py) or cosine (per step, to 0)
    /// [default: step, or the checkpoint's with --resume].
    #[arg(long = "lr-schedule", visible_alias = "lr_schedule", value_enum)]
    lr_schedule: Option<ScheduleArg>,
    /// Epochs of linear learning-rate warm-up, fractions allowed; fewer than --epochs [default: 0, or the
    /// checkpoint's with --resume].
    #[arg(
        long = "warmup-epochs",
        visible_alias = "warmup_epochs",
        value_name = "E",
        allow_negative_numbers = true
    )]
    warmup_epochs: Option<f64>,
    /// Label smoothing of the cross-entropy loss [default: 0, or the checkpoint's with --resume].
    #[arg(
        long = "label-smoothing",
        visible_alias = "label_smoothing",
        value_name = "S",
        allow_negative_numbers = true
    )]
    label_smoothing: Option<f64>,
    /// Dropout probability of the classifier of alexnet and vgg* (torchvision's `dropout`) [default: 0.5,
    /// or the checkpoint's with --resume].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    dropout: Option<f64>,
    /// Training crop size (RandomResizedCrop) and validation centre crop [default: 224].
    #[arg(long = "crop-size", visible_alias = "crop_size", value_name = "PX")]
    crop_size: Option<u32>,
    /// Validation: resize the shorter side to this before the centre crop [default: 256].
    #[arg(long = "val-resize", visible_alias = "val_resize", value_name = "PX")]
    val_resize: Option<u32>,
    /// Use only N training samples, spread evenly over the split (quick runs, tests).
    #[arg(long = "limit-train", visible_alias = "limit_train", value_name = "N")]
    limit_train: Option<usize>,
    /// Use only N validation samples, spread evenly over the split.
    #[arg(long = "limit-val", visible_alias = "limit_val", value_name = "N")]
    limit_val: Option<usize>,
    /// JPEG decoder of the loader: turbo (libjpeg-turbo: decodes only the crop, PIL's exact pixels) or
    /// zune (zune-jpeg, pure Rust) [default: turbo when built in, else zune].
    #[arg(long, value_name = "DECODER")]
    jpeg: Option<JpegBackend>,
    /// Labels of a flat val split: LOC_val_solution.csv, ILSVRC2012_validation_ground_truth.txt (with
    /// --synsets) or `file synset` lines [default: looked for in DATA].
    #[arg(long = "val-labels", visible_alias = "val_labels", value_name = "FILE")]
    val_labels: Option<PathBuf>,
    /// Synset list for --val-labels: map_clsloc.txt (`n02119789 1 kit_fox`, devkit ids) or
    /// LOC_synset_mapping.txt.
    #[arg(long, value_name = "FILE")]
    synsets: Option<PathBuf>,
    /// Distributed: the number of nodes with --multiprocessing-distributed, else of processes.
    #[arg(long = "world-size", visible_alias = "world_size", value_name = "N")]
    world_size: Option<usize>,
    /// Distributed: this node's rank with --multiprocessing-distributed, else this process's (from 0).
    #[arg(long, value_name = "N")]
    rank: Option<usize>,
    /// Distributed: where the ranks meet, tcp://HOST:PORT (HOST: the node of rank 0) or env://
    /// (MASTER_ADDR and MASTER_PORT; WORLD_SIZE, RANK and LOCAL_RANK as torchrun sets them, or Slurm's
    /// SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID) [default with --multiprocessing-distributed on one
    /// node: a free port on 127.0.0.1].
    #[arg(long = "dist-url", visible_alias = "dist_url", value_name = "URL")]
    dist_url: Option<String>,
    /// Distributed: the collective backend [default: nccl where CUDA is available, else gloo].
    #[arg(long = "dist-backend", visible_alias = "dist_backend", value_enum)]
    dist_backend: Option<BackendArg>,
    /// Start one process per GPU of this node (with --nproc-per-node, that many; on the CPU, Gloo
    /// processes), each a rank of a data-parallel run; --batch-size and --workers are the node's, shared
    /// among them.
    #[arg(
        long = "multiprocessing-distributed",
        visible_alias = "multiprocessing_distributed"
    )]
    multiprocessing_distributed: bool,
    /// Processes per node with --multiprocessing-distributed [default: the visible GPUs].
    #[arg(
        long = "nproc-per-node",
        visible_alias = "nproc_per_node",
        value_name = "N"
    )]
    nproc_per_node: Option<usize>,
    /// Distributed: also check every N steps that all ranks hold identical parameters (always checked at
    /// the end of each epoch).
    #[arg(long = "check-replicas", value_name = "N")]
    check_replicas: Option<u64>,
    /// Also write checkpoint.safetensors every N optimizer steps, with the place in the epoch, so that
    /// --resume continues mid-epoch (SIGTERM/SIGINT always write one before stopping).
    #[arg(
        long = "checkpoint-every",
        visible_alias = "checkpoint_every",
        value_name = "N"
    )]
    checkpoint_every: Option<u64>,
    /// Resume a mid-epoch checkpoint with another global batch (per-process batch x processes).
    #[arg(long = "allow-reshard", visible_alias = "allow_reshard")]
    allow_reshard: bool,
    /// Log the sample indices of every step, per rank, to samples.rank<R>.csv in --output_dir.
    #[arg(long = "log-samples", visible_alias = "log_samples")]
    log_samples: bool,
    /// Distributed: seconds the rendezvous and each collective wait for the other ranks [default: 1800].
    #[arg(
        long = "dist-timeout",
        visible_alias = "dist_timeout",
        value_name = "SECONDS"
    )]
    dist_timeout: Option<f64>,
    /// Log the run to Weights & Biases too, through a Python sidecar that needs the wandb package in
    /// $IMGTRAIN_PYTHON (default: python3). W&B's own variables apply (WANDB_MODE=offline, WANDB_DIR, ...).
    #[arg(long = "enable_wandb", visible_alias = "enable-wandb")]
    enable_wandb: bool,
    /// W&B project [default: imgtrain].
    #[arg(
        long = "wandb-project",
        visible_alias = "wandb_project",
        value_name = "NAME",
        requires = "enable_wandb"
    )]
    wandb_project: Option<String>,
    /// W&B run name [default: the output folder's name].
    #[arg(
        long = "wandb-name",
        visible_alias = "wandb_name",
        value_name = "NAME",
        requires = "enable_wandb"
    )]
    wandb_name: Option<String>,
    /// With -e: write one CSV row per validation image (name, label, top-5 classes with probabilities)
    /// to FILE, each image once, also in a distributed run. Bad images left out of the evaluation have
    /// no row.
    #[arg(
        long = "dump-predictions",
        visible_alias = "dump_predictions",
        value_name = "FILE.csv"
    )]
    dump_predictions: Option<PathBuf>,
    /// Print only errors, the epoch summaries and the final summary: no step lines, no progress bars.
    #[arg(short = 'q', long, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print debug details: the resolved plan, the loaders' settings, and the loader's own events
    /// (RUST_LOG filters those further).
    #[arg(short = 'v', long)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Nccl,
    Gloo,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AmpArg {
    Bf16,
    Fp16,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Step,
    Cosine,
}

impl Args {
    fn into_config(self, argv: Vec<String>) -> TrainConfig {
        TrainConfig {
            data: self.data.or(self.data_positional),
            arch: self.arch,
            workers: self.workers,
            start_epoch: self.start_epoch,
            batch_size: self.batch_size,
            recipe: RecipeFlags {
                epochs: self.epochs,
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                lr_schedule: self.lr_schedule.map(|s| match s {
                    ScheduleArg::Step => LrSchedule::default(),
                    ScheduleArg::Cosine => LrSchedule::Cosine,
                }),
                warmup_epochs: self.warmup_epochs,
                label_smoothing: self.label_smoothing,
                dropout: self.dropout,
            },
            print_freq: self.print_freq,
            resume: self.resume,
            evaluate: self.evaluate,
            // `--pretrained` alone (main.py downloads torchvision's weights) gets an empty path, which
            // the config check turns into an explanation.
            pretrained: self.pretrained.map(Option::unwrap_or_default),
            seed: self.seed,
            gpu: self.gpu,
            dummy: self.dummy,
            output_dir: self.output_dir,
            amp: self.amp.map(|a| match a {
                AmpArg::Bf16 => Amp::Bf16,
                AmpArg::Fp16 => Amp::Fp16,
                AmpArg::Off => Amp::Off,
            }),
            channels_last: self.channels_last,
            crop_size: self.crop_size,
            val_resize: self.val_resize,
            limit_train: self.limit_train,
            limit_val: self.limit_val,
            jpeg: self.jpeg,
            val_labels: self.val_labels,
            synsets: self.synsets,
            dist: DistFlags {
                url: self.dist_url,
                backend: self.dist_backend.map(|b| match b {
                    BackendArg::Nccl => Backend::Nccl,
                    BackendArg::Gloo => Backend::Gloo,
                }),
                world_size: self.world_size,
                rank: self.rank,
                multiprocessing: self.multiprocessing_distributed,
                nproc_per_node: self.nproc_per_node,
                timeout: self.dist_timeout.map(|s| {
                    if s.is_finite() && s > 0.0 {
                        Duration::from_secs_f64(s.min(1e9))
                    } else {
                        Duration::ZERO
                    }
                }),
            },
            check_replicas: self.check_replicas,
            checkpoint_every: self.checkpoint_every,
            allow_reshard: self.allow_reshard,
            log_samples: self.log_samples,
            wandb: self.enable_wandb.then(|| WandbConfig {
                project: self
                    .wandb_project
                    .unwrap_or_else(|| imgtrain::wandb::DEFAULT_PROJECT.to_owned()),
                name: self.wandb_name,
            }),
            dump_predictions: self.dump_predictions,
            verbosity: if self.quiet {
                Verbosity::Quiet
            } else if self.verbose {
                Verbosity::Verbose
            } else {
                Verbosity::Normal
            },
            args: argv,
        }
    }
}

/// No data and no --dummy: report the device and check it, as before training existed.
fn device_check(gpu: Option<usize>) -> anyhow::Result<()> {
    let info = imgtrain::device::select(gpu)?;
    println!(
        "imgtrain {}: libtorch {}, device {info}",
        env!("CARGO_PKG_VERSION"),
        imgtrain::LIBTORCH_VERSION
    );
    info.smoke_test().context("device check failed")?;
    println!(
        "device check passed: conv2d forward and backward on {:?}",
        info.device
    );
    println!("no DATA given: pass a dataset folder (or --dummy) to train; see imgtrain --help");
    Ok(())
}

fn print_summary(s: &RunSummary, evaluate: bool) {
    let chance = 100.0 / s.classes.max(1) as f64;
    println!("== summary");
    let over = if s.val_images == s.val_expected {
        format!("{} images", s.val_images)
    } else {
        format!(
            "{} of {} images; {} bad ones left out",
            s.val_images,
            s.val_expected,
            s.val_expected - s.val_images
        )
    };
    if evaluate {
        println!(
            "{} on {:?}: val Acc@1 {:.3} Acc@5 {:.3} over {over} ({} classes; chance is {chance:.1})",
            s.arch, s.device, s.acc1, s.acc5, s.classes
        );
        return;
    }
    let ips = s.train_images as f64 / s.train_seconds.max(1e-9);
    println!(
        "{} on {:?}: {} epoch(s) trained (next epoch {}), {} training images in {:.1} s ({ips:.1} images/s)",
        s.arch, s.device, s.epochs_run, s.next_epoch, s.train_images, s.train_seconds
    );
    println!(
        "val Acc@1 {:.3} Acc@5 {:.3} over {over}, best Acc@1 {:.3} ({} classes; chance is {chance:.1})",
        s.acc1, s.acc5, s.best_acc1, s.classes
    );
    if let Some(p) = &s.checkpoint {
        println!("checkpoint: {}", p.display());
    }
    if let Some(p) = &s.best_checkpoint {
        println!("best:       {}", p.display());
    }
    println!("seed: {}", s.seed);
    if let Some((epoch, step)) = s.stopped {
        println!(
            "stopped by a signal at epoch {epoch}, step {step}: the same command with --resume auto \
             continues there"
        );
    }
}

fn run(cfg: &TrainConfig) -> anyhow::Result<()> {
    if cfg.dist.multiprocessing && std::env::var_os(imgtrain::dist::LOCAL_RANK_ENV).is_none() {
        // The launcher: starts the node's ranks and watches them.
        return Ok(imgtrain::launch::run(cfg)?);
    }
    let summary = imgtrain::run(cfg)?;
    print_summary(&summary, cfg.evaluate);
    Ok(())
}

/// The loader's events (`tracing`) on stderr: as RUST_LOG asks (default: warnings only), and with
/// `--verbose` imgloader's debug events too.
fn init_tracing(verbose: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    if verbose {
        filter = filter.add_directive("imgloader=debug".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.verbose);
    if args.data.is_none() && args.data_positional.is_none() && !args.dummy {
        return match device_check(args.gpu) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("imgtrain: error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = args.into_config(std::env::args().collect());
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Each rank of a distributed run says which one it is.
            match imgtrain::dist::rank_of_process(&cfg.dist) {
                Some(rank) => eprintln!("imgtrain (rank {rank}): error: {err:#}"),
                None => eprintln!("imgtrain: error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
