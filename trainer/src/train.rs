//! `imgtrain`'s run, `main.py`'s `main_worker` for one process: check every input, resolve the plan,
//! build the model and the feeds, then drive the [`Trainer`] epoch by epoch and write checkpoints.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use imgloader::{BadSamples, DecodeOptions, Source, TrainAugment, Transform, ValAugment};
use tch::nn::VarStore;
use tch::{Cuda, Device};

use crate::amp;
use crate::checkpoint::{self, Checkpoint, Meta, Position};
use crate::config::{Plan, TrainConfig};
use crate::console::Console;
use crate::data::{self, Subset};
use crate::device;
use crate::dist::{self, ProcessGroup};
use crate::error::{Result, TrainError};
use crate::feed::{Feed, FeedOptions, Normalizer};
use crate::models;
use crate::predictions;
use crate::samples::SampleLog;
use crate::trainer::{EpochControl, EpochEnd, StopFlag, Trainer};

/// File name of the checkpoint written after every epoch.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the copy of the checkpoint with the best validation top-1.
pub const BEST_FILE: &str = "model_best.safetensors";
/// `--dummy` sizes: ImageNet's, like `main.py`'s `FakeData`.
const DUMMY_TRAIN: usize = 1_281_167;
const DUMMY_VAL: usize = 50_000;
const DUMMY_CLASSES: usize = 1000;

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
    /// Validation top-1 and top-5 of the last evaluation (percent), over `val_images` images of
    /// `val_expected` (bad ones are left out).
    pub acc1: f64,
    pub acc5: f64,
    pub val_images: u64,
    pub val_expected: u64,
    pub best_acc1: f64,
    /// Training images processed by this process, and the time spent on training epochs.
    pub train_images: u64,
    pub train_seconds: f64,
    pub checkpoint: Option<PathBuf>,
    pub best_checkpoint: Option<PathBuf>,
    pub seed: u64,
    /// Where a signal stopped the run: the epoch and its steps taken (0: at the epoch's start).
    pub stopped: Option<(u64, u64)>,
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

/// Fails unless `dir` can hold checkpoints: created if missing, and a probe file written and removed.
/// Then removes the temporary files a killed run left while writing a checkpoint (those of a process
/// still alive, which may be writing now, are left alone), saying so.
fn prepare_output_dir(dir: &Path) -> Result<()> {
    let fail = |source| TrainError::OutputDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".imgtrain-write-test");
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let name = entry.map_err(fail)?.file_name();
        let name = name.to_string_lossy();
        let owner = [CHECKPOINT_FILE, BEST_FILE]
            .iter()
            .find_map(|dest| imgloader::atomic::temporary_owner(&name, dest));
        let Some(pid) = owner else { continue };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let path = dir.join(&*name);
            std::fs::remove_file(&path).map_err(fail)?;
            println!(
                "=> removed {}, left by an interrupted checkpoint write",
                path.display()
            );
        }
    }
    Ok(())
}

/// The opened splits of a run (none for `--dummy`).
struct Splits {
    train: Option<(PathBuf, Arc<dyn Source>)>,
    val: Option<(PathBuf, Arc<dyn Source>)>,
    classes: Vec<String>,
}

/// Opens every split the run needs, and checks that train and val have the same classes.
fn open_splits(cfg: &TrainConfig, console: &Console) -> Result<Splits> {
    if cfg.dummy {
        return Ok(Splits {
            train: None,
            val: None,
            classes: (0..DUMMY_CLASSES).map(|c| c.to_string()).collect(),
        });
    }
    let data = cfg.data.as_deref().expect("validated");
    let labels = data::LabelFiles {
        val_labels: cfg.val_labels.clone(),
        synsets: cfg.synsets.clone(),
    };
    // Finds the splits (and the labels of a flat val split), opens them and checks that train and val
    // have the same classes.
    let found = data::open_dataset(data, &labels, !cfg.evaluate)?;
    for line in found.log_lines() {
        console.info(format_args!("=> {line}"));
    }
    let limit = |s: data::OpenedSplit, n: Option<usize>| match n {
        Some(n) => (s.path, Subset::spread(s.source, n)),
        None => (s.path, s.source),
    };
    let classes = found.val.source.classes().to_vec();
    Ok(Splits {
        train: found.train.map(|t| limit(t, cfg.limit_train)),
        val: Some(limit(found.val, cfg.limit_val)),
        classes,
    })
}

/// Reads the checkpoint to resume from, and checks that it fits the architecture and the classes.
/// The checkpoint `--resume` names: the path given, or with `--resume auto` the output folder's
/// `checkpoint.safetensors` when there is one (none: the run starts from scratch, and says so).
fn resume_path(cfg: &TrainConfig) -> Option<PathBuf> {
    let given = cfg.resume.as_ref()?;
    if given.as_os_str() != "auto" {
        return Some(given.clone());
    }
    let dir = cfg.output_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join(CHECKPOINT_FILE);
    if path.is_file() {
        println!("=> --resume auto: resuming from {}", path.display());
        Some(path)
    } else {
        println!(
            "=> --resume auto: no {CHECKPOINT_FILE} in {} yet; starting from scratch",
            dir.display()
        );
        None
    }
}

fn read_checkpoint(
    cfg: &TrainConfig,
    resume: Option<&Path>,
    classes: &[String],
) -> Result<Option<Checkpoint>> {
    let Some(path) = resume else {
        return Ok(None);
    };
    let ck = Checkpoint::read(path)?;
    ck.check_arch(cfg.arch())?;
    if !cfg.dummy && ck.meta.classes != classes {
        let first3 = |c: &[String]| c.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        return Err(TrainError::Checkpoint {
            path: path.to_owned(),
            reason: format!(
                "was trained on {} classes ({}…), the dataset has {} ({}…)",
                ck.meta.classes.len(),
                first3(&ck.meta.classes),
                classes.len(),
                first3(classes)
            ),
        });
    }
    Ok(Some(ck))
}

/// The train and val feeds (no train feed when only evaluating).
fn build_feeds(
    cfg: &TrainConfig,
    plan: &Plan,
    splits: Splits,
    classes: usize,
) -> Result<(Option<Feed>, Feed)> {
    let device = plan.device.device;
    let (rank, world) = plan.dist.as_ref().map_or((0, 1), |r| (r.rank, r.world));
    let normalizer = || Normalizer::new(device, plan.channels_last);
    let crop = plan.crop_size;
    if cfg.dummy {
        let batch = plan.batch_size;
        // Each rank makes its share.
        let train = Feed::dummy(
            "train",
            cfg.limit_train.unwrap_or(DUMMY_TRAIN).div_ceil(world),
            batch,
            crop,
            classes,
            normalizer()?,
        );
        let val = Feed::dummy(
            "val",
            cfg.limit_val.unwrap_or(DUMMY_VAL).div_ceil(world),
            batch,
            crop,
            classes,
            normalizer()?,
        );
        return Ok((Some(train), val));
    }
    let opts = |transform, bad_samples| FeedOptions {
        batch_size: plan.batch_size,
        workers: plan.workers,
        transform,
        decode: DecodeOptions {
            jpeg: plan.jpeg,
            ..DecodeOptions::default()
        },
        seed: plan.seed,
        bad_samples,
        rank,
        world,
    };
    let train = match splits.train {
        Some((path, src)) if !cfg.evaluate => {
            let t = Transform::Train(TrainAugment {
                size: (crop, crop),
                ..TrainAugment::default()
            });
            // Training may put another sample in a bad one's slot: batches stay full and the same on
            // every run.
            Some(Feed::loader(
                "train",
                &path,
                src,
                opts(t, BadSamples::default()),
                normalizer()?,
            )?)
        }
        _ => None,
    };
    let (path, src) = splits.val.expect("opened unless --dummy");
    let t = Transform::Val(ValAugment {
        resize: plan.val_resize,
        crop,
    });
    // Validation never substitutes: a bad image is left out and named, so no image counts twice.
    let val = Feed::loader(
        "val",
        &path,
        src,
        opts(t, BadSamples::Omit { max_total: 1000 }),
        normalizer()?,
    )?;
    Ok((train, val))
}

/// The metadata of a checkpoint of `trainer` from which a run resumes at `epoch` (at `position` in it,
/// for one written mid-epoch); `val` is the last validation's top-1 and top-5.
fn checkpoint_meta(
    cfg: &TrainConfig,
    plan: &Plan,
    classes: &[String],
    trainer: &Trainer,
    epoch: u64,
    val: (f64, f64),
    position: Option<Position>,
) -> Meta {
    Meta {
        arch: plan.arch.clone(),
        classes: classes.to_vec(),
        epoch,
        global_step: trainer.global_step,
        best_acc1: trainer.best_acc1,
        acc1: val.0,
        acc5: val.1,
        recipe: plan.recipe,
        lr: trainer.lr,
        seed: plan.seed,
        scaler: trainer.scaler(),
        args: cfg.args.clone(),
        position,
    }
}

/// Trains (or, with `evaluate`, only evaluates) as `cfg` says. Every input is checked before the first
/// step: the data, the output folder, the checkpoint and the model.
pub fn run(cfg: &TrainConfig) -> Result<RunSummary> {
    cfg.validate()?;
    let rank = cfg.dist.resolve(&dist::process_env, Cuda::is_available())?;
    let lead = rank.as_ref().is_none_or(|r| r.rank == 0);
    let console = Rc::new(Console::new(cfg.verbosity, lead));
    if !lead {
        // Only rank 0 prints progress; every rank's errors still go to standard error.
        dist::silence_stdout().map_err(|e| TrainError::Config {
            what: "--rank",
            reason: format!("cannot quiet the standard output of a rank other than 0: {e}"),
        })?;
    }
    // Each rank of a node on its own GPU (its local rank), as main.py's processes; a process that sees
    // one GPU only (srun --gpus-per-task 1) uses that one.
    let gpu = match &rank {
        Some(r) if Cuda::is_available() && (r.spawned || cfg.gpu.is_none()) => {
            Some(if Cuda::device_count() == 1 {
                0
            } else {
                r.local_rank
            })
        }
        _ => cfg.gpu,
    };
    let info = device::select(gpu)?;
    // Meet the other ranks first: a rendezvous that fails says so before any data is read.
    let group = match &rank {
        Some(r) => {
            console.info(format_args!(
                "=> rank {} of {}: joining the {} process group at {}:{} (timeout {} s)",
                r.rank,
                r.world,
                r.backend.name(),
                r.host,
                r.port,
                r.timeout.as_secs_f64()
            ));
            Some(Rc::new(ProcessGroup::join(r, info.device)?))
        }
        None => None,
    };
    if let Some(path) = &cfg.dump_predictions {
        // Before any data is read: a file that cannot be written costs no evaluation.
        predictions::prepare(path, group.as_deref())?;
    }
    let splits = open_splits(cfg, &console)?;
    let classes = splits.classes.clone();
    let resume = resume_path(cfg);
    let checkpoint = read_checkpoint(cfg, resume.as_deref(), &classes)?;
    let mut plan = Plan::resolve(cfg, info, rank, checkpoint.as_ref())?;
    if let Some(g) = &group {
        // Every rank follows rank 0's seed (data order, augmentation, initial weights).
        plan.seed = g.agree(plan.seed)?;
    }
    if !cfg.evaluate && lead {
        prepare_output_dir(&plan.output_dir)?;
    }
    let records = if lead {
        crate::run_info::start_records(cfg, &plan)?
    } else {
        None
    };

    console.info(format_args!(
        "imgtrain {}: libtorch {}, device {info}, amp {}, channels_last {}",
        env!("CARGO_PKG_VERSION"),
        crate::LIBTORCH_VERSION,
        plan.amp.name(),
        if plan.channels_last { "on" } else { "off" }
    ));
    info.smoke_test()?;
    if plan.cuda() {
        Cuda::cudnn_set_benchmark(true);
        amp::set_cuda_autocast_dtype(plan.amp)?;
        if cfg.seed.is_some() {
            console.info(format_args!(
                "=> note: --seed fixes the data order and initial weights; CUDA runs are still not \
                 bit-reproducible (cuDNN benchmark picks kernels by timing)"
            ));
        }
    }

    let seed = plan.seed;
    manual_seed(seed);
    console.info(format_args!("=> creating model '{}'", plan.arch));
    let mut vs = VarStore::new(info.device);
    let model = models::build_with(
        &plan.arch,
        &vs.root(),
        classes.len() as i64,
        plan.recipe.dropout,
    )
    .map_err(|e| match e {
        models::ModelError::Dropout { .. } => TrainError::Config {
            what: "--dropout",
            reason: e.to_string(),
        },
        other => other.into(),
    })?;
    if let Some(path) = &cfg.pretrained {
        let report = models::load_pretrained(&mut vs, path)?;
        console.info(format_args!(
            "=> using pre-trained weights {} ({} tensors)",
            path.display(),
            report.loaded
        ));
    }
    if let Some(ck) = &checkpoint {
        console.info(format_args!(
            "=> loading checkpoint '{}'",
            ck.path.display()
        ));
    }
    let mut trainer = Trainer::new(&plan, vs, model, checkpoint.as_ref(), group.clone())?;
    trainer.set_console(console.clone());
    if cfg.dump_predictions.is_some() {
        trainer.keep_predictions();
    }
    if let Some(log) = records {
        trainer.set_metrics(log);
    }
    if let Some(ck) = &checkpoint {
        let r = &plan.recipe;
        console.info(format_args!(
            "=> loaded checkpoint '{}' (epoch {}, best Acc@1 {:.3}); recipe: lr {}, momentum {}, wd {}, \
             {:?} schedule, {} warm-up epoch(s), label smoothing {}, {} epochs",
            ck.path.display(),
            ck.meta.epoch,
            ck.meta.best_acc1,
            r.lr,
            r.momentum,
            r.weight_decay,
            r.lr_schedule,
            r.warmup_epochs,
            r.label_smoothing,
            r.epochs
        ));
        for o in &plan.overrides {
            console.info(format_args!("=> {o}"));
        }
    }
    if !plan.seed_chosen {
        console.info(format_args!(
            "=> seed {seed} (pass --seed {seed} to repeat this run's data order and weights)"
        ));
    }

    let (train_feed, val_feed) = build_feeds(cfg, &plan, splits, classes.len())?;
    console.debug(format_args!(
        "plan: {} on {}, batch size {} per process, {} loader thread(s), print every {} step(s), \
         crop {} px, val resize {} px, JPEG decoder {:?}, output {}, {:?}",
        plan.arch,
        plan.device,
        plan.batch_size,
        plan.workers,
        plan.print_freq,
        plan.crop_size,
        plan.val_resize,
        plan.jpeg,
        plan.output_dir.display(),
        plan.recipe
    ));
    for feed in train_feed.iter().chain([&val_feed]) {
        console.debug(feed.describe());
    }
    let start_epoch = plan.start_epoch;
    let mut summary = RunSummary {
        arch: plan.arch.clone(),
        device: info.device,
        classes: classes.len(),
        epochs_run: 0,
        next_epoch: start_epoch,
        acc1: 0.0,
        acc5: 0.0,
        val_images: 0,
        val_expected: 0,
        best_acc1: trainer.best_acc1,
        train_images: 0,
        train_seconds: 0.0,
        checkpoint: None,
        best_checkpoint: None,
        seed,
        stopped: None,
    };

    if cfg.evaluate {
        manual_seed(epoch_seed(seed, start_epoch));
        let v = trainer.validate(&val_feed, start_epoch)?;
        if let Some(path) = &cfg.dump_predictions {
            let source = val_feed.source().expect("a dataset: --dummy is refused");
            let written =
                predictions::dump(path, &**source, &v.predictions, v.images, group.as_deref())?;
            if let Some(rows) = written {
                console.info(format_args!(
                    "=> wrote {rows} predictions to {}",
                    path.display()
                ));
            }
        }
        summary.acc1 = v.acc1;
        summary.acc5 = v.acc5;
        summary.val_images = v.images;
        summary.val_expected = v.expected;
        return Ok(summary);
    }
    let train_feed = train_feed.expect("built unless evaluating");
    let checkpoint_path = plan.output_dir.join(CHECKPOINT_FILE);
    let best_path = plan.output_dir.join(BEST_FILE);
    let mut last_good: Option<PathBuf> = resume.clone();
    let epochs = plan.recipe.epochs;
    if start_epoch >= epochs {
        console.info(format_args!(
            "=> nothing to train: the run starts at epoch {start_epoch} and --epochs is {epochs}"
        ));
    }
    // SIGTERM or SIGINT (a cluster's preemption, Ctrl-C): finish the step, checkpoint, exit 0. A second
    // one ends the process at once.
    let stop: StopFlag = Default::default();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let registered =
            signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)));
        registered.map_err(|e| TrainError::Config {
            what: "SIGTERM",
            reason: format!("cannot watch for signals: {e}"),
        })?;
    }
    let mut samples = if cfg.log_samples {
        Some(SampleLog::open(
            &plan.output_dir,
            plan.dist.as_ref().map_or(0, |r| r.rank),
        )?)
    } else {
        None
    };
    let mut last_val = checkpoint
        .as_ref()
        .map_or((0.0, 0.0), |c| (c.meta.acc1, c.meta.acc5));
    let mut from = plan.position;
    for epoch in start_epoch..epochs {
        // Every random draw of the epoch (the loader's are keyed by seed and epoch already) follows
        // from (seed, epoch): a run resumed here repeats what the uninterrupted run drew.
        manual_seed(epoch_seed(seed, epoch));
        // A checkpoint inside this epoch: written by rank 0 (every rank takes part in the call).
        let mut save_mid = |trainer: &Trainer, position: Position| -> Result<()> {
            if !lead {
                return Ok(());
            }
            let meta = checkpoint_meta(
                cfg,
                &plan,
                &classes,
                trainer,
                epoch,
                last_val,
                Some(position),
            );
            let bytes = checkpoint::encode(trainer.vars(), trainer.sgd(), &meta)?;
            checkpoint::write_atomic(&checkpoint_path, &bytes)?;
            console.info(format_args!(
                "=> saved {} (epoch {epoch}, step {} of the epoch, global step {})",
                checkpoint_path.display(),
                position.steps,
                trainer.global_step
            ));
            Ok(())
        };
        let mut ctl = EpochControl {
            from: from.take(),
            checkpoint_every: cfg.checkpoint_every,
            stop: &stop,
            save: &mut save_mid,
            samples: samples.as_mut(),
        };
        let t = match trainer.train_epoch(&train_feed, epoch, last_good.as_deref(), &mut ctl)? {
            EpochEnd::Done(t) => t,
            EpochEnd::Stopped(position) => {
                summary.stopped = Some((epoch, position.steps));
                if lead {
                    summary.checkpoint = Some(checkpoint_path.clone());
                    console.info(format_args!(
                        "=> stopped by a signal after step {} of epoch {epoch}; continue with --resume {} \
                         (or --resume auto)",
                        position.steps,
                        checkpoint_path.display()
                    ));
                }
                break;
            }
        };
        summary.train_images += t.images;
        summary.train_seconds += t.seconds;
        let v = trainer.validate(&val_feed, epoch)?;
        last_val = (v.acc1, v.acc5);
        let is_best = v.acc1 > trainer.best_acc1;
        trainer.best_acc1 = trainer.best_acc1.max(v.acc1);
        trainer.record_epoch(epoch, &t, &v)?;
        let meta = checkpoint_meta(cfg, &plan, &classes, &trainer, epoch + 1, last_val, None);
        summary.epochs_run += 1;
        summary.next_epoch = epoch + 1;
        summary.acc1 = v.acc1;
        summary.acc5 = v.acc5;
        summary.val_images = v.images;
        summary.val_expected = v.expected;
        summary.best_acc1 = trainer.best_acc1;
        if lead {
            // Rank 0 writes the checkpoints (every rank holds the same weights).
            let bytes = checkpoint::encode(trainer.vars(), trainer.sgd(), &meta)?;
            checkpoint::write_atomic(&checkpoint_path, &bytes)?;
            last_good = Some(checkpoint_path.clone());
            summary.checkpoint = Some(checkpoint_path.clone());
            if is_best {
                checkpoint::write_atomic(&best_path, &bytes)?;
                summary.best_checkpoint = Some(best_path.clone());
                console.info(format_args!(
                    "=> saved {} (epoch {}); new best Acc@1 {:.3}: {}",
                    checkpoint_path.display(),
                    epoch + 1,
                    v.acc1,
                    best_path.display()
                ));
            } else {
                console.info(format_args!(
                    "=> saved {} (epoch {}); best Acc@1 stays {:.3}",
                    checkpoint_path.display(),
                    epoch + 1,
                    trainer.best_acc1
                ));
            }
        }
        // A signal during validation or the checkpoint: the epoch's checkpoint is the place to stop.
        if epoch + 1 < epochs && trainer.stop_agreed(&stop)? {
            summary.stopped = Some((epoch + 1, 0));
            console.info(format_args!(
                "=> stopped by a signal after epoch {epoch}; continue with --resume {} (or --resume auto)",
                checkpoint_path.display()
            ));
            break;
        }
    }
    if summary.best_checkpoint.is_none() && best_path.is_file() {
        summary.best_checkpoint = Some(best_path);
    }
    Ok(summary)
}
