//! The training and evaluation loops of `imgtrain`, `main.py`'s `main_worker`/`train`/`validate` for one
//! process.
//!
//! Per step on a GPU: the loader's batch (u8 NHWC in pinned memory) is copied to the device without
//! waiting, normalised and permuted to NCHW there (channels_last unless turned off), the forward pass runs
//! under autocast, the backward pass follows (fp16: on a scaled loss), then the step's loss and hit counts
//! are read back — the one wait per step, which also guarantees the batch's copy is done so its buffer can
//! go back to the loader — and the SGD step is queued. The next batch is usually ready by then, so the
//! device waits only for the launch of the next kernels.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgloader::decode::JpegBackend;
use imgloader::{Batch, DecodeOptions, Loader, Source, TrainAugment, Transform, ValAugment};
use tch::nn::VarStore;
use tch::{Cuda, Device, Kind, Reduction, Tensor};

use crate::amp::{self, Amp, LossScaler};
use crate::checkpoint::{self, Checkpoint, Meta};
use crate::data::{self, Normalizer, Subset, TensorAllocator, TensorBuffer};
use crate::device;
use crate::error::{Result, TorchContext, TrainError};
use crate::meter::{AverageMeter, Fmt, progress_line};
use crate::models::{self, Model};
use crate::optim::Sgd;
use crate::schedule::{LrSchedule, Schedule};

/// `main.py`'s default learning rate, used unless `--lr` or a resumed checkpoint says otherwise.
pub const DEFAULT_LR: f64 = 0.1;
/// File name of the checkpoint written after every epoch.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the copy of the checkpoint with the best validation top-1.
pub const BEST_FILE: &str = "model_best.safetensors";
/// `--dummy` sizes: ImageNet's, like `main.py`'s `FakeData`.
const DUMMY_TRAIN: usize = 1_281_167;
const DUMMY_VAL: usize = 50_000;
const DUMMY_CLASSES: usize = 1000;

/// Everything a run is told, as on the command line (see `imgtrain --help`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// The dataset folder (`train/` + `val/`, `train.tar` + `val.tar`, or shard folders).
    pub data: Option<PathBuf>,
    pub arch: String,
    /// Loader threads.
    pub workers: usize,
    pub epochs: u64,
    /// The first epoch (default 0, or the checkpoint's when resuming).
    pub start_epoch: Option<u64>,
    pub batch_size: usize,
    /// Base learning rate; `None`: the checkpoint's when resuming, else [`DEFAULT_LR`].
    pub lr: Option<f64>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub print_freq: usize,
    pub resume: Option<PathBuf>,
    pub evaluate: bool,
    /// Weights to start from; an empty path (`--pretrained` without a file) is rejected with a hint.
    pub pretrained: Option<PathBuf>,
    /// `None`: the checkpoint's when resuming, else drawn from the clock (and printed).
    pub seed: Option<u64>,
    pub gpu: Option<usize>,
    pub dummy: bool,
    pub output_dir: PathBuf,
    /// `None`: bf16 on CUDA, off on the CPU.
    pub amp: Option<Amp>,
    /// `None`: on for CUDA, off on the CPU.
    pub channels_last: Option<bool>,
    pub lr_schedule: LrSchedule,
    pub warmup_epochs: f64,
    pub label_smoothing: f64,
    pub crop_size: u32,
    pub val_resize: u32,
    pub limit_train: Option<usize>,
    pub limit_val: Option<usize>,
    /// The loader's JPEG decoder (default: libjpeg-turbo when built in, else zune-jpeg).
    pub jpeg: JpegBackend,
    /// Labels of a flat val split (`--val-labels`); `None`: looked for beside it.
    pub val_labels: Option<PathBuf>,
    /// Synset list for the val labels (`--synsets`).
    pub synsets: Option<PathBuf>,
    /// The command line, recorded in checkpoints.
    pub args: Vec<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: None,
            arch: "resnet18".into(),
            workers: 4,
            epochs: 90,
            start_epoch: None,
            batch_size: 256,
            lr: None,
            momentum: 0.9,
            weight_decay: 1e-4,
            print_freq: 10,
            resume: None,
            evaluate: false,
            pretrained: None,
            seed: None,
            gpu: None,
            dummy: false,
            output_dir: PathBuf::from("."),
            amp: None,
            channels_last: None,
            lr_schedule: LrSchedule::default(),
            warmup_epochs: 0.0,
            label_smoothing: 0.0,
            crop_size: 224,
            val_resize: 256,
            limit_train: None,
            limit_val: None,
            jpeg: JpegBackend::default(),
            val_labels: None,
            synsets: None,
            args: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// Checks every value that can be checked without touching the disk or the device.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, reason: String| Err(TrainError::Config { what, reason });
        if !models::ARCHS.contains(&self.arch.as_str()) {
            return bad(
                "--arch",
                format!(
                    "unknown architecture {:?}; choose one of: {}",
                    self.arch,
                    models::ARCHS.join(", ")
                ),
            );
        }
        if self.workers == 0 {
            return bad("--workers", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("--batch-size", "must be at least 1".into());
        }
        if self.print_freq == 0 {
            return bad("--print-freq", "must be at least 1".into());
        }
        if let Some(lr) = self.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return bad("--lr", format!("{lr} must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("--momentum", format!("{} must be in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--wd", format!("{} must be >= 0", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(
                "--label-smoothing",
                format!("{} must be in [0, 1)", self.label_smoothing),
            );
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad(
                "--warmup-epochs",
                format!("{} must be >= 0", self.warmup_epochs),
            );
        }
        if self.crop_size == 0 {
            return bad("--crop-size", "must be at least 1".into());
        }
        if self.val_resize < self.crop_size {
            return bad(
                "--val-resize",
                format!(
                    "{} is smaller than --crop-size {}: the centre crop would not fit",
                    self.val_resize, self.crop_size
                ),
            );
        }
        if self.limit_train == Some(0) {
            return bad("--limit-train", "must be at least 1".into());
        }
        if !self.jpeg.is_available() {
            return bad(
                "--jpeg",
                format!(
                    "{}: this imgtrain was built without it (build with the default features)",
                    self.jpeg
                ),
            );
        }
        if self.limit_val == Some(0) {
            return bad("--limit-val", "must be at least 1".into());
        }
        if self.data.is_none() && !self.dummy {
            return bad(
                "DATA",
                "no dataset given: pass a folder (or --data DIR), or --dummy for synthetic data"
                    .into(),
            );
        }
        if self.pretrained.as_deref() == Some(Path::new("")) {
            return bad(
                "--pretrained",
                "needs a weights file: imgtrain downloads nothing; export torchvision's weights to \
                 safetensors (trainer/scripts/export_torchvision.py) and pass --pretrained FILE"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What a run did, for its last lines of output.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub arch: String,
    pub device: Device,
    pub classes: usize,
    /// Epochs trained by this process (0 for `--evaluate`).
    pub epochs_run: u64,
    /// The epoch after the last one trained (what a resume would start from).
    pub next_epoch: u64,
    /// Validation top-1 and top-5 of the last evaluation (percent).
    pub acc1: f64,
    pub acc5: f64,
    pub best_acc1: f64,
    /// Training images processed by this process, and the time spent on training epochs.
    pub train_images: u64,
    pub train_seconds: f64,
    pub checkpoint: Option<PathBuf>,
    pub best_checkpoint: Option<PathBuf>,
    pub seed: u64,
}

/// Where batches come from.
enum Feed {
    Loader(Loader<TensorAllocator>),
    /// `--dummy`: random pixels and labels made on the device.
    Dummy {
        samples: usize,
        batch: usize,
        size: u32,
    },
}

impl Feed {
    fn batches_per_epoch(&self) -> usize {
        match self {
            Feed::Loader(l) => l.batches_per_epoch(),
            Feed::Dummy { samples, batch, .. } => samples.div_ceil(*batch),
        }
    }
}

/// A loader batch whose pixels may still be on their way to the device: dropping it before the copy
/// is done would let the loader refill the memory under the copy, so an early drop (an error path)
/// waits for the device first.
struct Hold {
    batch: Option<Batch<TensorBuffer>>,
    cuda: Option<i64>,
}

impl Hold {
    /// Releases the batch, knowing that every copy queued before was waited for.
    fn release_after_sync(mut self) {
        self.cuda = None;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let (Some(_), Some(index)) = (&self.batch, self.cuda) {
            Cuda::synchronize(index);
        }
    }
}

/// A batch on the device.
struct DeviceBatch {
    images: Tensor,
    labels: Tensor,
    len: usize,
    hold: Hold,
}

/// The state of one training process.
struct Run<'a> {
    cfg: &'a TrainConfig,
    device: Device,
    amp: Amp,
    vs: VarStore,
    model: Model,
    sgd: Sgd,
    schedule: Schedule,
    scaler: Option<LossScaler>,
    normalizer: Normalizer,
    classes: Vec<String>,
    global_step: u64,
    best_acc1: f64,
    lr: f64,
}

/// Per-step numbers read back from the device.
struct StepStats {
    loss: f64,
    correct1: f64,
    correct5: f64,
}

/// Mixes the seed and the epoch into libtorch's seed for that epoch (splitmix64's finaliser), so that
/// each epoch's draws depend only on (seed, epoch) and a resumed run repeats them exactly.
pub fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn manual_seed(seed: u64) {
    // libtorch takes the seed as uint64 through an int64 argument: the bits are what matter.
    tch::manual_seed(seed as i64);
}

fn build_loader(
    cfg: &TrainConfig,
    split: &'static str,
    path: &Path,
    source: Arc<dyn Source>,
    transform: Transform,
    seed: u64,
    device: Device,
) -> Result<Loader<TensorAllocator>> {
    let mut builder = Loader::builder(source);
    builder
        .batch_size(cfg.batch_size)
        .threads(cfg.workers)
        .transform(transform)
        .decode_options(DecodeOptions {
            jpeg: cfg.jpeg,
            ..DecodeOptions::default()
        })
        .seed(seed);
    builder
        .allocator(TensorAllocator::for_device(device))
        .build()
        .map_err(|source| TrainError::Loader {
            split,
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// Fails unless `dir` can hold checkpoints: created if missing, and a probe file written and removed.
fn check_output_dir(dir: &Path) -> Result<()> {
    let fail = |source| TrainError::OutputDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".imgtrain-write-test");
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Runs `f`, turning a libtorch error that tch reports by panicking into an error naming `what`.
fn catch_torch<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            // libtorch's messages carry a C++ backtrace after the first line; the first line says it.
            let first = message.lines().next().unwrap_or_default().to_owned();
            Err(TrainError::TorchPanic {
                what: what(),
                message: first,
            })
        }
    }
}

/// Trains (or, with `evaluate`, only evaluates) as `cfg` says. Every input is checked before the first
/// step: the data, the output folder, the checkpoint and the model.
pub fn run(cfg: &TrainConfig) -> Result<RunSummary> {
    cfg.validate()?;
    let info = device::select(cfg.gpu)?;
    let device = info.device;
    let cuda = matches!(device, Device::Cuda(_));
    let amp = cfg.amp.unwrap_or(if cuda { Amp::Bf16 } else { Amp::Off });
    if amp != Amp::Off && !cuda {
        return Err(TrainError::Config {
            what: "--amp",
            reason: format!(
                "{} autocast needs a CUDA device; this run is on the CPU: use --amp off",
                amp.name()
            ),
        });
    }
    let channels_last = cfg.channels_last.unwrap_or(cuda);

    // Data: every split the run needs must open before anything else happens.
    let (train_src, val_src, classes) = if cfg.dummy {
        let classes: Vec<String> = (0..DUMMY_CLASSES).map(|c| c.to_string()).collect();
        (None, None, classes)
    } else {
        let data = cfg.data.as_deref().expect("validated");
        let labels = data::LabelFiles {
            val_labels: cfg.val_labels.clone(),
            synsets: cfg.synsets.clone(),
        };
        let found = data::open_dataset(data, &labels, !cfg.evaluate)?;
        for line in found.log_lines() {
            println!("=> {line}");
        }
        let limit = |s: data::OpenedSplit, n: Option<usize>| match n {
            Some(n) => (s.path, Subset::spread(s.source, n)),
            None => (s.path, s.source),
        };
        let classes = found.val.source.classes().to_vec();
        let train = found.train.map(|t| limit(t, cfg.limit_train));
        (train, Some(limit(found.val, cfg.limit_val)), classes)
    };
    if !cfg.evaluate {
        check_output_dir(&cfg.output_dir)?;
    }
    let checkpoint = match &cfg.resume {
        Some(path) => {
            let ck = Checkpoint::read(path)?;
            ck.check_arch(&cfg.arch)?;
            if !cfg.dummy && ck.meta.classes != classes {
                return Err(TrainError::Checkpoint {
                    path: path.clone(),
                    reason: format!(
                        "was trained on {} classes ({}…), the dataset has {} ({}…)",
                        ck.meta.classes.len(),
                        ck.meta
                            .classes
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                        classes.len(),
                        classes
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            Some(ck)
        }
        None => None,
    };
    let seed = cfg
        .seed
        .or(checkpoint.as_ref().map(|c| c.meta.seed))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });

    println!(
        "imgtrain {}: libtorch {}, device {info}, amp {}, channels_last {}",
        env!("CARGO_PKG_VERSION"),
        crate::LIBTORCH_VERSION,
        amp.name(),
        if channels_last { "on" } else { "off" }
    );
    info.smoke_test()?;
    if cuda {
        Cuda::cudnn_set_benchmark(true);
        amp::set_cuda_autocast_dtype(amp)?;
        if cfg.seed.is_some() {
            println!(
                "=> note: --seed fixes the data order and initial weights; CUDA runs are still not \
                 bit-reproducible (cuDNN benchmark picks kernels by timing)"
            );
        }
    }

    manual_seed(seed);
    println!("=> creating model '{}'", cfg.arch);
    let mut vs = VarStore::new(device);
    let model = models::build(&cfg.arch, &vs.root(), classes.len() as i64)?;
    if let Some(path) = &cfg.pretrained {
        let report = models::load_pretrained(&mut vs, path)?;
        println!(
            "=> using pre-trained weights {} ({} tensors)",
            path.display(),
            report.loaded
        );
    }
    let mut sgd = Sgd::new(&vs, cfg.momentum, cfg.weight_decay);
    let mut start_epoch = cfg.start_epoch.unwrap_or(0);
    let mut best_acc1 = 0.0;
    let mut global_step = 0;
    let mut base_lr = cfg.lr.unwrap_or(DEFAULT_LR);
    let mut scaler = (amp == Amp::Fp16).then(LossScaler::default);
    if let Some(ck) = &checkpoint {
        println!("=> loading checkpoint '{}'", ck.path.display());
        ck.restore(&vs, Some(&mut sgd))?;
        start_epoch = cfg.start_epoch.unwrap_or(ck.meta.epoch);
        best_acc1 = ck.meta.best_acc1;
        global_step = ck.meta.global_step;
        base_lr = cfg.lr.unwrap_or(ck.meta.base_lr);
        if amp == Amp::Fp16 {
            scaler = Some(ck.meta.scaler.unwrap_or_default());
        }
        println!(
            "=> loaded checkpoint '{}' (epoch {}, best Acc@1 {:.3}, base lr {base_lr}{})",
            ck.path.display(),
            ck.meta.epoch,
            ck.meta.best_acc1,
            if cfg.lr.is_some() { ", from --lr" } else { "" }
        );
    }
    if cfg.seed.is_none() {
        println!("=> seed {seed} (pass --seed {seed} to repeat this run's data order and weights)");
    }

    let crop = cfg.crop_size;
    let (train_feed, val_feed) = if cfg.dummy {
        let train = Feed::Dummy {
            samples: cfg.limit_train.unwrap_or(DUMMY_TRAIN),
            batch: cfg.batch_size,
            size: crop,
        };
        let val = Feed::Dummy {
            samples: cfg.limit_val.unwrap_or(DUMMY_VAL),
            batch: cfg.batch_size,
            size: crop,
        };
        (Some(train), val)
    } else {
        let train = match train_src {
            Some((path, src)) if !cfg.evaluate => {
                let t = Transform::Train(TrainAugment {
                    size: (crop, crop),
                    ..TrainAugment::default()
                });
                Some(Feed::Loader(build_loader(
                    cfg, "train", &path, src, t, seed, device,
                )?))
            }
            _ => None,
        };
        let (path, src) = val_src.expect("opened above");
        let t = Transform::Val(ValAugment {
            resize: cfg.val_resize,
            crop,
        });
        let val = Feed::Loader(build_loader(cfg, "val", &path, src, t, seed, device)?);
        (train, val)
    };

    let schedule = Schedule {
        base_lr,
        kind: cfg.lr_schedule,
        warmup_epochs: cfg.warmup_epochs,
        epochs: cfg.epochs,
    };
    let mut run = Run {
        cfg,
        device,
        amp,
        vs,
        model,
        sgd,
        schedule,
        scaler,
        normalizer: Normalizer::new(device, channels_last)?,
        classes,
        global_step,
        best_acc1,
        lr: base_lr,
    };
    let mut summary = RunSummary {
        arch: cfg.arch.clone(),
        device,
        classes: run.classes.len(),
        epochs_run: 0,
        next_epoch: start_epoch,
        acc1: 0.0,
        acc5: 0.0,
        best_acc1,
        train_images: 0,
        train_seconds: 0.0,
        checkpoint: None,
        best_checkpoint: None,
        seed,
    };

    if cfg.evaluate {
        manual_seed(epoch_seed(seed, start_epoch));
        let (acc1, acc5) = run.validate(&val_feed, start_epoch)?;
        summary.acc1 = acc1;
        summary.acc5 = acc5;
        return Ok(summary);
    }
    let train_feed = train_feed.expect("built unless evaluating");
    let checkpoint_path = cfg.output_dir.join(CHECKPOINT_FILE);
    let best_path = cfg.output_dir.join(BEST_FILE);
    let mut last_good: Option<PathBuf> = cfg.resume.clone();
    if start_epoch >= cfg.epochs {
        println!(
            "=> nothing to train: the run starts at epoch {start_epoch} and --epochs is {}",
            cfg.epochs
        );
    }
    for epoch in start_epoch..cfg.epochs {
        // Every random draw of the epoch (the loader's are keyed by seed and epoch already) follows
        // from (seed, epoch): a run resumed here repeats what the uninterrupted run drew.
        manual_seed(epoch_seed(seed, epoch));
        let (images, seconds) = run.train_epoch(&train_feed, epoch, last_good.as_deref())?;
        summary.train_images += images;
        summary.train_seconds += seconds;
        let (acc1, acc5) = run.validate(&val_feed, epoch)?;
        let is_best = acc1 > run.best_acc1;
        run.best_acc1 = run.best_acc1.max(acc1);
        let meta = Meta {
            arch: cfg.arch.clone(),
            classes: run.classes.clone(),
            epoch: epoch + 1,
            global_step: run.global_step,
            best_acc1: run.best_acc1,
            acc1,
            acc5,
            base_lr: run.schedule.base_lr,
            lr: run.lr,
            seed,
            scaler: run.scaler,
            args: cfg.args.clone(),
        };
        let bytes = checkpoint::encode(&run.vs, &run.sgd, &meta)?;
        checkpoint::write_atomic(&checkpoint_path, &bytes)?;
        last_good = Some(checkpoint_path.clone());
        summary.checkpoint = Some(checkpoint_path.clone());
        if is_best {
            checkpoint::write_atomic(&best_path, &bytes)?;
            summary.best_checkpoint = Some(best_path.clone());
            println!(
                "=> saved {} (epoch {}); new best Acc@1 {acc1:.3}: {}",
                checkpoint_path.display(),
                epoch + 1,
                best_path.display()
            );
        } else {
            println!(
                "=> saved {} (epoch {}); best Acc@1 stays {:.3}",
                checkpoint_path.display(),
                epoch + 1,
                run.best_acc1
            );
        }
        summary.epochs_run += 1;
        summary.next_epoch = epoch + 1;
        summary.acc1 = acc1;
        summary.acc5 = acc5;
        summary.best_acc1 = run.best_acc1;
    }
    if summary.best_checkpoint.is_none() && best_path.is_file() {
        summary.best_checkpoint = Some(best_path);
    }
    Ok(summary)
}

impl Run<'_> {
    fn cuda_index(&self) -> Option<i64> {
        match self.device {
            Device::Cuda(i) => Some(i as i64),
            _ => None,
        }
    }

    /// Labels as an int64 tensor on the device. On CUDA they go through pinned memory, so the copy does
    /// not wait for the work already queued (a copy from pageable memory would); libtorch's pinned-memory
    /// allocator keeps the block until the copy is done.
    fn labels_to_device(&self, labels: &[i64]) -> Result<Tensor> {
        let what = || "copying labels to the device".to_owned();
        let host = Tensor::f_from_slice(labels).during(what)?;
        match self.device {
            Device::Cuda(_) => host
                .f_pin_memory(self.device)
                .and_then(|t| t.f_to_device_(self.device, Kind::Int64, true, false))
                .during(what),
            _ => Ok(host),
        }
    }

    /// The next batch (number `k`) of `split` in `epoch`, on the device. `None` at the end of the epoch.
    fn next_batch(
        &self,
        feed: &Feed,
        iter: &mut Option<imgloader::Epoch<'_, TensorAllocator>>,
        split: &'static str,
        epoch: u64,
        k: usize,
    ) -> Result<Option<DeviceBatch>> {
        match feed {
            Feed::Loader(_) => {
                let Some(next) = iter.as_mut().and_then(Iterator::next) else {
                    return Ok(None);
                };
                let batch = next.map_err(|source| TrainError::Batch {
                    split,
                    epoch,
                    source: Box::new(source),
                })?;
                for bad in batch.bad.iter().take(3) {
                    println!("=> bad sample {} replaced: {}", bad.index, bad.error);
                }
                let (h, w) = batch.size;
                let len = batch.len;
                let labels: Vec<i64> = batch.labels.iter().map(|&l| i64::from(l)).collect();
                // From here on an early return waits for the device before the batch goes back.
                let hold = Hold {
                    cuda: self.cuda_index(),
                    batch: Some(batch),
                };
                let buffer = hold.batch.as_ref().expect("just set").buffer();
                let nhwc = buffer.view_nhwc(len, h, w)?;
                let images = self.normalizer.to_device(&nhwc)?;
                drop(nhwc);
                let labels = self.labels_to_device(&labels)?;
                Ok(Some(DeviceBatch {
                    images,
                    labels,
                    len,
                    hold,
                }))
            }
            Feed::Dummy {
                samples,
                batch,
                size,
            } => {
                let start = k * batch;
                if start >= *samples {
                    return Ok(None);
                }
                let n = (*batch).min(samples - start) as i64;
                let s = i64::from(*size);
                let what = || "making a --dummy batch".to_owned();
                let pixels = Tensor::f_randint(256, [n, s, s, 3], (Kind::Uint8, self.device))
                    .during(what)?;
                let labels =
                    Tensor::f_randint(self.classes.len() as i64, [n], (Kind::Int64, self.device))
                        .during(what)?;
                Ok(Some(DeviceBatch {
                    images: self.normalizer.normalize(&pixels)?,
                    labels,
                    len: n as usize,
                    hold: Hold {
                        batch: None,
                        cuda: None,
                    },
                }))
            }
        }
    }

    /// Loss, and how many samples have the label first and among the top 5, as host numbers. The read
    /// waits for all device work queued so far.
    fn read_stats(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        loss: &Tensor,
        extra: Option<Tensor>,
    ) -> Result<Vec<f64>> {
        let what = || "computing accuracy".to_owned();
        let k = logits.size()[1].min(5);
        let (_, pred) = logits.f_topk(k, 1, true, true).during(what)?;
        let correct = pred
            .f_eq_tensor(&labels.f_unsqueeze(1).during(what)?)
            .during(what)?;
        let c1 = correct
            .f_narrow(1, 0, 1)
            .and_then(|c| c.f_sum(Kind::Double))
            .during(what)?;
        let c5 = correct.f_sum(Kind::Double).during(what)?;
        let mut parts = vec![loss.f_to_kind(Kind::Double).during(what)?, c1, c5];
        if let Some(e) = extra {
            parts.push(e.f_to_kind(Kind::Double).during(what)?);
        }
        let host = Tensor::f_stack(&parts, 0)
            .and_then(|t| t.f_to_device(Device::Cpu))
            .during(what)?;
        Vec::<f64>::try_from(&host).during(what)
    }

    /// The model's logits on `batch` (under autocast when AMP is on) and the mean cross-entropy loss in
    /// f32, with the run's label smoothing: the same for training and evaluation.
    fn forward_loss(&self, batch: &DeviceBatch, train: bool) -> Result<(Tensor, Tensor)> {
        let autocast = self.amp != Amp::Off;
        let logits = amp::cuda_autocast(autocast, || self.model.forward_t(&batch.images, train));
        let loss = logits
            .f_to_kind(Kind::Float)
            .and_then(|l| {
                l.f_cross_entropy_loss(
                    &batch.labels,
                    None::<Tensor>,
                    Reduction::Mean,
                    -100,
                    self.cfg.label_smoothing,
                )
            })
            .during(|| {
                format!(
                    "computing the {} loss",
                    if train { "training" } else { "val" }
                )
            })?;
        Ok((logits, loss))
    }

    /// One training step (none when fp16 loss scaling skips it); returns its loss and hit counts.
    fn step(&mut self, batch: DeviceBatch, lr: f64, epoch: u64, k: usize) -> Result<StepStats> {
        self.sgd.zero_grad();
        let (logits, loss) = catch_torch(
            || format!("in the forward/backward pass of epoch {epoch}, step {k}"),
            || {
                let (logits, loss) = self.forward_loss(&batch, true)?;
                let scaled = match &self.scaler {
                    Some(s) => loss
                        .f_mul_scalar(s.scale)
                        .during(|| "scaling the loss".into())?,
                    None => loss.shallow_clone(),
                };
                scaled
                    .f_backward()
                    .during(|| "in the backward pass".into())?;
                Ok((logits.detach(), loss.detach()))
            },
        )?;
        let grad_sum = match &self.scaler {
            Some(s) => Some(amp::unscale(self.sgd.grads(), s.scale, self.device)?),
            None => None,
        };
        let host = self.read_stats(&logits, &batch.labels, &loss, grad_sum)?;
        // The read waited for everything queued, the batch's copy to the device included.
        batch.hold.release_after_sync();
        let stats = StepStats {
            loss: host[0],
            correct1: host[1],
            correct5: host[2],
        };
        if !stats.loss.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                loss: stats.loss,
                epoch,
                step: k,
                global_step: self.global_step,
                last_good: None,
            });
        }
        if let Some(scaler) = &mut self.scaler
            && !scaler.update(host[3].is_finite())
        {
            if scaler.exhausted() {
                return Err(TrainError::TooManySkippedSteps {
                    skips: scaler.consecutive_skips,
                    scale: scaler.scale,
                    epoch,
                    step: k,
                });
            }
            return Ok(stats);
        }
        self.sgd.step(lr)?;
        self.lr = lr;
        self.global_step += 1;
        Ok(stats)
    }

    /// One epoch of training; returns the images seen and the seconds it took.
    fn train_epoch(
        &mut self,
        feed: &Feed,
        epoch: u64,
        last_good: Option<&Path>,
    ) -> Result<(u64, f64)> {
        let steps = feed.batches_per_epoch();
        let mut batch_time = AverageMeter::new("Time", Fmt::F6_3);
        let mut data_time = AverageMeter::new("Data", Fmt::F6_3);
        let mut losses = AverageMeter::new("Loss", Fmt::E4);
        let mut top1 = AverageMeter::new("Acc@1", Fmt::F6_2);
        let mut top5 = AverageMeter::new("Acc@5", Fmt::F6_2);
        let mut iter = match feed {
            Feed::Loader(l) => Some(l.epoch(epoch)),
            Feed::Dummy { .. } => None,
        };
        let start = Instant::now();
        let mut waited = Duration::ZERO;
        let mut images = 0u64;
        let mut end = Instant::now();
        let prefix = format!("Epoch: [{epoch}]");
        for k in 0..steps {
            let Some(batch) = self.next_batch(feed, &mut iter, "train", epoch, k)? else {
                break;
            };
            let wait = end.elapsed();
            waited += wait;
            data_time.update(wait.as_secs_f64(), 1.0);
            let n = batch.len as f64;
            let lr = self.schedule.lr(epoch, k, steps);
            let stats = match self.step(batch, lr, epoch, k) {
                Err(TrainError::NonFiniteLoss {
                    loss,
                    epoch,
                    step,
                    global_step,
                    ..
                }) => {
                    return Err(TrainError::NonFiniteLoss {
                        loss,
                        epoch,
                        step,
                        global_step,
                        last_good: last_good.map(Path::to_owned),
                    });
                }
                other => other?,
            };
            images += n as u64;
            losses.update(stats.loss, n);
            top1.update(100.0 * stats.correct1 / n, n);
            top5.update(100.0 * stats.correct5 / n, n);
            batch_time.update(end.elapsed().as_secs_f64(), 1.0);
            end = Instant::now();
            if k % self.cfg.print_freq == 0 {
                println!(
                    "{}",
                    progress_line(
                        &prefix,
                        k + 1,
                        steps,
                        &[&batch_time, &data_time, &losses, &top1, &top5]
                    )
                );
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let mut line = format!(
            "Epoch: [{epoch}] done: {images} images in {seconds:.1} s, {:.1} images/s, {:.1}% of the \
             time waiting for data, lr {:.4e}",
            images as f64 / seconds.max(1e-9),
            100.0 * waited.as_secs_f64() / seconds.max(1e-9),
            self.lr
        );
        if let Some(s) = &self.scaler {
            line += &format!(
                ", loss scale {} ({} steps skipped so far)",
                s.scale, s.skipped_total
            );
        }
        println!("{line}");
        Ok((images, seconds))
    }

    /// Evaluates on the val feed; prints `main.py`'s lines and returns (top-1, top-5) in percent.
    fn validate(&self, feed: &Feed, epoch: u64) -> Result<(f64, f64)> {
        let steps = feed.batches_per_epoch();
        let mut batch_time = AverageMeter::new("Time", Fmt::F6_3);
        let mut losses = AverageMeter::new("Loss", Fmt::E4);
        let mut top1 = AverageMeter::new("Acc@1", Fmt::F6_2);
        let mut top5 = AverageMeter::new("Acc@5", Fmt::F6_2);
        let mut iter = match feed {
            Feed::Loader(l) => Some(l.epoch(epoch)),
            Feed::Dummy { .. } => None,
        };
        let mut end = Instant::now();
        let _no_grad = tch::no_grad_guard();
        for k in 0..steps {
            let Some(batch) = self.next_batch(feed, &mut iter, "val", epoch, k)? else {
                break;
            };
            let n = batch.len as f64;
            let (logits, loss) = catch_torch(
                || format!("evaluating batch {k}"),
                || self.forward_loss(&batch, false),
            )?;
            let host = self.read_stats(&logits, &batch.labels, &loss, None)?;
            batch.hold.release_after_sync();
            losses.update(host[0], n);
            top1.update(100.0 * host[1] / n, n);
            top5.update(100.0 * host[2] / n, n);
            batch_time.update(end.elapsed().as_secs_f64(), 1.0);
            end = Instant::now();
            if k % self.cfg.print_freq == 0 {
                println!(
                    "{}",
                    progress_line(
                        "Test: ",
                        k + 1,
                        steps,
                        &[&batch_time, &losses, &top1, &top5]
                    )
                );
            }
        }
        println!(" * Acc@1 {:.3} Acc@5 {:.3}", top1.avg(), top5.avg());
        Ok((top1.avg(), top5.avg()))
    }
}
