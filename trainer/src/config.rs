//! What a run is told and what it makes of it: [`TrainConfig`] is the command line as given, [`Recipe`] the
//! optimisation recipe a checkpoint carries, and [`Plan`] every default resolved once — against the device
//! (AMP, channels_last), the checkpoint (recipe, epoch, seed) and the clock (seed) — before anything runs.

use std::path::{Path, PathBuf};

use imgloader::decode::JpegBackend;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::amp::Amp;
use crate::checkpoint::{Checkpoint, Position};
use crate::device::DeviceInfo;
use crate::dist::{DistFlags, Rank};
use crate::error::{Result, TrainError};
use crate::models;
use crate::schedule::{LrSchedule, Schedule};

/// Everything a run is told, as on the command line (see `imgtrain --help`). `None` means "not given":
/// the checkpoint's value when resuming, else the default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainConfig {
    /// The dataset folder (`train/` + `val/`, `train.tar` + `val.tar`, or shard folders).
    pub data: Option<PathBuf>,
    /// Architecture; `None`: resnet18.
    pub arch: Option<String>,
    /// Loader threads; `None`: 4.
    pub workers: Option<usize>,
    /// The first epoch (default 0, or the checkpoint's when resuming).
    pub start_epoch: Option<u64>,
    /// Mini-batch size; `None`: 256.
    pub batch_size: Option<usize>,
    /// The optimisation recipe's flags.
    pub recipe: RecipeFlags,
    /// Progress line every N batches; `None`: 10.
    pub print_freq: Option<usize>,
    pub resume: Option<PathBuf>,
    pub evaluate: bool,
    /// Weights to start from; an empty path (`--pretrained` without a file) is rejected with a hint.
    pub pretrained: Option<PathBuf>,
    /// `None`: the checkpoint's when resuming, else drawn from the clock (and printed).
    pub seed: Option<u64>,
    pub gpu: Option<usize>,
    pub dummy: bool,
    /// `None`: the current folder.
    pub output_dir: Option<PathBuf>,
    /// `None`: bf16 on CUDA, off on the CPU.
    pub amp: Option<Amp>,
    /// `None`: on for CUDA, off on the CPU.
    pub channels_last: Option<bool>,
    /// `None`: 224.
    pub crop_size: Option<u32>,
    /// `None`: 256.
    pub val_resize: Option<u32>,
    pub limit_train: Option<usize>,
    pub limit_val: Option<usize>,
    /// The loader's JPEG decoder; `None`: libjpeg-turbo when built in, else zune-jpeg.
    pub jpeg: Option<JpegBackend>,
    /// Labels of a flat val split (`--val-labels`); `None`: looked for beside it.
    pub val_labels: Option<PathBuf>,
    /// Synset list for the val labels (`--synsets`).
    pub synsets: Option<PathBuf>,
    /// Distributed training (`--dist-url`, `--world-size`, `--rank`, ...).
    pub dist: DistFlags,
    /// Distributed: also check that the ranks' parameters are identical every N steps (always done at
    /// the end of each epoch).
    pub check_replicas: Option<u64>,
    /// Write a mid-epoch checkpoint every N optimizer steps (`--checkpoint-every`).
    pub checkpoint_every: Option<u64>,
    /// Resume a mid-epoch checkpoint with another global batch (`--allow-reshard`).
    pub allow_reshard: bool,
    /// Log each step's sample indices per rank (`--log-samples`).
    pub log_samples: bool,
    /// Log the run's records to Weights & Biases too (`--enable_wandb`); `None`: no W&B.
    pub wandb: Option<crate::wandb::WandbConfig>,
    /// With `--evaluate`: write each validation image's label and top-5 classes to this CSV file
    /// (`--dump-predictions`, see [`crate::predictions`]).
    pub dump_predictions: Option<PathBuf>,
    /// How much the run prints (`--quiet`, `--verbose`).
    pub verbosity: crate::console::Verbosity,
    /// The command line, recorded in checkpoints.
    pub args: Vec<String>,
}

/// The recipe's command-line flags, each `None` unless given.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecipeFlags {
    pub epochs: Option<u64>,
    pub lr: Option<f64>,
    pub momentum: Option<f64>,
    pub weight_decay: Option<f64>,
    pub lr_schedule: Option<LrSchedule>,
    pub warmup_epochs: Option<f64>,
    pub label_smoothing: Option<f64>,
    pub dropout: Option<f64>,
}

/// How a run optimises: saved in every checkpoint and restored by `--resume` (as `main.py` restores the
/// optimizer's hyper-parameters), except where a flag given on the command line overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Total epochs (the end of the schedule).
    pub epochs: u64,
    /// Base learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub lr_schedule: LrSchedule,
    /// Epochs of linear warm-up (fractions allowed).
    pub warmup_epochs: f64,
    /// Label smoothing of the cross-entropy loss.
    pub label_smoothing: f64,
    /// The classifier's dropout of AlexNet and VGG (`None`: torchvision's 0.5). Absent from checkpoints
    /// written before it existed, which used the default.
    #[serde(default)]
    pub dropout: Option<f64>,
}

impl Default for Recipe {
    /// `main.py`'s defaults.
    fn default() -> Self {
        Recipe {
            epochs: 90,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            lr_schedule: LrSchedule::default(),
            warmup_epochs: 0.0,
            label_smoothing: 0.0,
            dropout: None,
        }
    }
}

/// Defaults of the flags outside the recipe.
pub const DEFAULT_ARCH: &str = "resnet18";
pub const DEFAULT_WORKERS: usize = 4;
pub const DEFAULT_BATCH_SIZE: usize = 256;
pub const DEFAULT_PRINT_FREQ: usize = 10;
pub const DEFAULT_CROP_SIZE: u32 = 224;
pub const DEFAULT_VAL_RESIZE: u32 = 256;

fn bad<T>(what: &'static str, reason: String) -> Result<T> {
    Err(TrainError::Config { what, reason })
}

impl RecipeFlags {
    /// Checks each given value alone.
    fn validate(&self) -> Result<()> {
        if let Some(lr) = self.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return bad("--lr", format!("{lr} must be a positive number"));
        }
        if let Some(m) = self.momentum
            && !(0.0..1.0).contains(&m)
        {
            return bad("--momentum", format!("{m} must be in [0, 1)"));
        }
        if let Some(wd) = self.weight_decay
            && !(wd.is_finite() && wd >= 0.0)
        {
            return bad("--wd", format!("{wd} must be >= 0"));
        }
        if let Some(s) = self.label_smoothing
            && !(0.0..1.0).contains(&s)
        {
            return bad("--label-smoothing", format!("{s} must be in [0, 1)"));
        }
        if let Some(p) = self.dropout
            && !(0.0..1.0).contains(&p)
        {
            return bad("--dropout", format!("{p} must be in [0, 1)"));
        }
        if let Some(w) = self.warmup_epochs
            && !(w.is_finite() && w >= 0.0)
        {
            return bad("--warmup-epochs", format!("{w} must be >= 0"));
        }
        Ok(())
    }

    /// The recipe this run follows: each flag given wins, the rest comes from `saved` (a resumed
    /// checkpoint's) or the defaults. Also returns one line per flag that changed a saved value.
    pub fn resolve(&self, saved: Option<&Recipe>) -> (Recipe, Vec<String>) {
        let base = saved.copied().unwrap_or_default();
        let mut overrides = Vec::new();
        fn pick<T: PartialEq + Copy + std::fmt::Debug>(
            flag: &str,
            given: Option<T>,
            base: T,
            saved: bool,
            overrides: &mut Vec<String>,
        ) -> T {
            match given {
                Some(v) => {
                    if saved && v != base {
                        overrides.push(format!("{flag} {v:?} overrides the checkpoint's {base:?}"));
                    }
                    v
                }
                None => base,
            }
        }
        let s = saved.is_some();
        let o = &mut overrides;
        let recipe = Recipe {
            epochs: pick("--epochs", self.epochs, base.epochs, s, o),
            lr: pick("--lr", self.lr, base.lr, s, o),
            momentum: pick("--momentum", self.momentum, base.momentum, s, o),
            weight_decay: pick("--wd", self.weight_decay, base.weight_decay, s, o),
            lr_schedule: pick("--lr-schedule", self.lr_schedule, base.lr_schedule, s, o),
            warmup_epochs: pick(
                "--warmup-epochs",
                self.warmup_epochs,
                base.warmup_epochs,
                s,
                o,
            ),
            label_smoothing: pick(
                "--label-smoothing",
                self.label_smoothing,
                base.label_smoothing,
                s,
                o,
            ),
            dropout: pick("--dropout", self.dropout.map(Some), base.dropout, s, o),
        };
        (recipe, overrides)
    }
}

impl Recipe {
    /// Checks the values together; `saved` says whether some came from a checkpoint (named in the message).
    pub fn validate(&self, flags: &RecipeFlags, saved: bool) -> Result<()> {
        let from = |given: bool| {
            if !given && saved {
                " (from the checkpoint)"
            } else {
                ""
            }
        };
        if self.warmup_epochs > 0.0 && self.warmup_epochs >= self.epochs as f64 {
            return bad(
                "--warmup-epochs",
                format!(
                    "{}{} is not less than --epochs {}{}: the learning rate would never reach its base \
                     value {}",
                    self.warmup_epochs,
                    from(flags.warmup_epochs.is_some()),
                    self.epochs,
                    from(flags.epochs.is_some()),
                    self.lr
                ),
            );
        }
        Ok(())
    }

    /// The learning-rate curve of this recipe.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            base_lr: self.lr,
            kind: self.lr_schedule,
            warmup_epochs: self.warmup_epochs,
            epochs: self.epochs,
        }
    }
}

impl TrainConfig {
    /// The architecture (`--arch`, or the default).
    pub fn arch(&self) -> &str {
        self.arch.as_deref().unwrap_or(DEFAULT_ARCH)
    }

    /// Checks every value that can be checked without touching the disk or the device.
    pub fn validate(&self) -> Result<()> {
        if !models::ARCHS.contains(&self.arch()) {
            return bad(
                "--arch",
                format!(
                    "unknown architecture {:?}; choose one of: {}",
                    self.arch(),
                    models::ARCHS.join(", ")
                ),
            );
        }
        if self.workers == Some(0) {
            return bad("--workers", "must be at least 1".into());
        }
        if self.batch_size == Some(0) {
            return bad("--batch-size", "must be at least 1".into());
        }
        if self.print_freq == Some(0) {
            return bad("--print-freq", "must be at least 1".into());
        }
        self.recipe.validate()?;
        // Without a checkpoint the recipe is complete now; with one, it is checked again once resolved.
        if self.resume.is_none() && !self.evaluate {
            self.recipe.resolve(None).0.validate(&self.recipe, false)?;
        }
        let crop = self.crop_size.unwrap_or(DEFAULT_CROP_SIZE);
        if crop == 0 {
            return bad("--crop-size", "must be at least 1".into());
        }
        let resize = self.val_resize.unwrap_or(DEFAULT_VAL_RESIZE);
        if resize < crop {
            return bad(
                "--val-resize",
                format!(
                    "{resize} is smaller than --crop-size {crop}: the centre crop would not fit"
                ),
            );
        }
        if self.limit_train == Some(0) {
            return bad("--limit-train", "must be at least 1".into());
        }
        if self.limit_val == Some(0) {
            return bad("--limit-val", "must be at least 1".into());
        }
        if let Some(jpeg) = self.jpeg
            && !jpeg.is_available()
        {
            return bad(
                "--jpeg",
                format!(
                    "{jpeg}: this imgtrain was built without it (build with the default features)"
                ),
            );
        }
        if self.data.is_none() && !self.dummy {
            return bad(
                "DATA",
                "no dataset given: pass a folder (or --data DIR), or --dummy for synthetic data"
                    .into(),
            );
        }
        self.dist.validate()?;
        if self.check_replicas == Some(0) {
            return bad("--check-replicas", "must be at least 1 (steps)".into());
        }
        if self.checkpoint_every == Some(0) {
            return bad("--checkpoint-every", "must be at least 1 (steps)".into());
        }
        if self.dump_predictions.is_some() {
            if !self.evaluate {
                return bad(
                    crate::predictions::FLAG,
                    "only with -e/--evaluate: predictions are of one evaluation of a model, not of \
                     every epoch of a training run"
                        .into(),
                );
            }
            if self.dummy {
                return bad(
                    crate::predictions::FLAG,
                    "needs a dataset: --dummy images have no names and random labels".into(),
                );
            }
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

/// A run with every default resolved: what [`crate::train::run`] and the [`crate::trainer::Trainer`]
/// follow. Serialised into `run.json` ([`crate::run_info`]).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub device: DeviceInfo,
    pub arch: String,
    pub amp: Amp,
    pub channels_last: bool,
    pub recipe: Recipe,
    /// One line per flag that overrode the checkpoint's recipe.
    pub overrides: Vec<String>,
    pub seed: u64,
    /// Whether the seed was given (`--seed`) or restored, rather than drawn.
    pub seed_chosen: bool,
    pub start_epoch: u64,
    /// This process's rank in a distributed run.
    pub dist: Option<Rank>,
    /// `--check-replicas`.
    pub check_replicas: Option<u64>,
    /// Where in `start_epoch` a mid-epoch checkpoint stopped, in this run's steps.
    pub position: Option<Position>,
    /// Optimizer steps the resumed checkpoint had taken (0 for a fresh run).
    pub resume_global_step: u64,
    /// Loader threads and mini-batch size of this process: with `--multiprocessing-distributed`, the
    /// node's (as given) divided among its processes, as `main.py` does; otherwise as given.
    pub workers: usize,
    pub batch_size: usize,
    pub print_freq: usize,
    pub crop_size: u32,
    pub val_resize: u32,
    #[serde(serialize_with = "display")]
    pub jpeg: JpegBackend,
    pub output_dir: PathBuf,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Plan {
    /// Resolves `cfg` (already validated) against the device and the checkpoint being resumed.
    pub fn resolve(
        cfg: &TrainConfig,
        device: DeviceInfo,
        dist: Option<Rank>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Plan> {
        let cuda = matches!(device.device, Device::Cuda(_));
        let amp = cfg.amp.unwrap_or(if cuda { Amp::Bf16 } else { Amp::Off });
        if amp != Amp::Off && !cuda {
            return bad(
                "--amp",
                format!(
                    "{} autocast needs a CUDA device; this run is on the CPU: use --amp off",
                    amp.name()
                ),
            );
        }
        let saved = checkpoint.map(|c| &c.meta.recipe);
        let (recipe, overrides) = cfg.recipe.resolve(saved);
        if !cfg.evaluate {
            recipe.validate(&cfg.recipe, saved.is_some())?;
        }
        let restored_seed = checkpoint.map(|c| c.meta.seed);
        let seed = cfg.seed.or(restored_seed).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let (batch_size, workers) = per_process(
            cfg.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            cfg.workers.unwrap_or(DEFAULT_WORKERS),
            dist.as_ref()
                .filter(|r| r.spawned)
                .map_or(1, |r| r.local_world),
        )?;
        let world = dist.as_ref().map_or(1, |r| r.world);
        let position = match checkpoint.and_then(|c| c.meta.position) {
            Some(p) if cfg.start_epoch.is_some() => {
                println!(
                    "=> --start-epoch given: the checkpoint's place in its epoch (step {}) is not used",
                    p.steps
                );
                None
            }
            Some(p) => Some(reshard(p, batch_size, world, cfg.allow_reshard)?),
            None => None,
        };
        Ok(Plan {
            device,
            arch: cfg.arch().to_owned(),
            amp,
            channels_last: cfg.channels_last.unwrap_or(cuda),
            recipe,
            overrides,
            seed,
            seed_chosen: cfg.seed.is_some() || restored_seed.is_some(),
            start_epoch: cfg
                .start_epoch
                .or(checkpoint.map(|c| c.meta.epoch))
                .unwrap_or(0),
            dist,
            check_replicas: cfg.check_replicas,
            position,
            resume_global_step: checkpoint.map_or(0, |c| c.meta.global_step),
            workers,
            batch_size,
            print_freq: cfg.print_freq.unwrap_or(DEFAULT_PRINT_FREQ),
            crop_size: cfg.crop_size.unwrap_or(DEFAULT_CROP_SIZE),
            val_resize: cfg.val_resize.unwrap_or(DEFAULT_VAL_RESIZE),
            jpeg: cfg.jpeg.unwrap_or_default(),
            output_dir: cfg.output_dir.clone().unwrap_or_else(|| PathBuf::from(".")),
        })
    }

    /// Whether the run computes on a CUDA device.
    pub fn cuda(&self) -> bool {
        matches!(self.device.device, Device::Cuda(_))
    }
}

/// A mid-epoch checkpoint's place, for a run whose global batch is `batch` per rank times `world`. The
/// same global batch continues step for step, whatever the number of ranks; another global batch is
/// refused unless `allow` (`--allow-reshard`): the remaining samples are still the same ones, but the
/// steps group them otherwise and the schedule counts other steps per epoch.
pub fn reshard(p: Position, batch: usize, world: usize, allow: bool) -> Result<Position> {
    let global = (batch * world) as u64;
    if global == p.global_batch {
        return Ok(p);
    }
    if !allow {
        return bad(
            "--batch-size",
            format!(
                "the checkpoint stopped mid-epoch with a global batch of {} (per-rank batch x ranks); this \
                 run's is {global} ({batch} x {world}): the rest of the epoch would take other steps and the \
                 LR schedule other step counts. Resume with a global batch of {}, or pass --allow-reshard",
                p.global_batch, p.global_batch
            ),
        );
    }
    if !p.consumed.is_multiple_of(world as u64) {
        return bad(
            "--allow-reshard",
            format!(
                "{} samples of the epoch were read, which {world} ranks cannot continue from evenly",
                p.consumed
            ),
        );
    }
    println!(
        "=> --allow-reshard: the global batch changes from {} to {global}; the epoch continues after its \
         first {} samples",
        p.global_batch, p.consumed
    );
    Ok(Position {
        steps: p.consumed / global,
        global_batch: global,
        ..p
    })
}

/// A node's `--batch-size` and `--workers` shared by its `nproc` processes, as `main.py` shares them:
/// the batch divided (it must divide evenly here, so that the global batch is the one given), the
/// threads rounded up.
pub fn per_process(batch: usize, workers: usize, nproc: usize) -> Result<(usize, usize)> {
    if !batch.is_multiple_of(nproc) {
        return bad(
            "--batch-size",
            format!(
                "{batch} does not divide among {nproc} processes per node (--multiprocessing-distributed \
                 gives each an equal share of the node's batch); use a multiple of {nproc}"
            ),
        );
    }
    Ok((batch / nproc, workers.div_ceil(nproc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_checkpoint_and_say_so() {
        let saved = Recipe {
            epochs: 1,
            lr: 0.05,
            momentum: 0.5,
            weight_decay: 0.01,
            lr_schedule: LrSchedule::Cosine,
            warmup_epochs: 0.5,
            label_smoothing: 0.1,
            dropout: None,
        };
        let none = RecipeFlags::default();
        assert_eq!(none.resolve(Some(&saved)), (saved, vec![]));
        assert_eq!(none.resolve(None).0, Recipe::default());
        let flags = RecipeFlags {
            epochs: Some(2),
            momentum: Some(0.5),
            ..RecipeFlags::default()
        };
        let (r, overrides) = flags.resolve(Some(&saved));
        assert_eq!(r, Recipe { epochs: 2, ..saved });
        // --momentum equals the saved value: not an override.
        assert_eq!(overrides, vec!["--epochs 2 overrides the checkpoint's 1"]);
    }

    #[test]
    fn a_mid_epoch_position_continues_with_the_same_global_batch_or_with_leave_to_change_it() {
        let p = Position {
            consumed: 24,
            steps: 3,
            global_batch: 8,
            loss_sum: 0.0,
            top1_sum: 0.0,
            top5_sum: 0.0,
            count: 24.0,
            images: 24,
            seconds: 1.0,
            waited: 0.0,
            bad: 0,
        };
        // 8 = 8 x 1 = 4 x 2 = 2 x 4: the same steps.
        for (batch, world) in [(8, 1), (4, 2), (2, 4)] {
            assert_eq!(reshard(p, batch, world, false).unwrap(), p);
        }
        let e = reshard(p, 4, 1, false).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "--batch-size: the checkpoint stopped mid-epoch with a global batch of 8"
            ) && e.contains("this run's is 4 (4 x 1)")
                && e.contains("--allow-reshard"),
            "{e}"
        );
        let q = reshard(p, 4, 1, true).unwrap();
        assert_eq!((q.consumed, q.steps, q.global_batch), (24, 6, 4));
        // 24 samples cannot be continued evenly by 5 ranks.
        let e = reshard(p, 1, 5, true).unwrap_err().to_string();
        assert!(e.starts_with("--allow-reshard: 24 samples"), "{e}");
    }

    #[test]
    fn warmup_must_end_before_the_run_does() {
        let flags = RecipeFlags {
            epochs: Some(3),
            warmup_epochs: Some(5.0),
            ..RecipeFlags::default()
        };
        let err = flags.resolve(None).0.validate(&flags, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("--warmup-epochs: 5 is not less than --epochs 3"),
            "{msg}"
        );
        // From a checkpoint: the message says where the value came from.
        let saved = Recipe {
            warmup_epochs: 2.0,
            ..Recipe::default()
        };
        let flags = RecipeFlags {
            epochs: Some(2),
            ..RecipeFlags::default()
        };
        let msg = flags
            .resolve(Some(&saved))
            .0
            .validate(&flags, true)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("2 (from the checkpoint) is not less than --epochs 2"),
            "{msg}"
        );
        let ok = RecipeFlags {
            epochs: Some(3),
            warmup_epochs: Some(2.5),
            ..RecipeFlags::default()
        };
        ok.resolve(None).0.validate(&ok, false).unwrap();
    }
}
