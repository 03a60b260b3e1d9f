//! The state of one training process and its two loops, `main.py`'s `train` and `validate`: a
//! [`Trainer`] that a run (or, later, each rank of a distributed run) drives epoch by epoch.
//!
//! Per step on a GPU: the loader's batch (u8 NHWC in pinned memory) is copied to the device without
//! waiting, normalised and permuted to NCHW there (channels_last unless turned off), the forward pass runs
//! under autocast, the backward pass follows (fp16: on a scaled loss), then the step's loss and hit counts
//! are read back — the one wait per step, which also guarantees the batch's copy is done so its buffer can
//! go back to the loader — and the SGD step is queued. The next batch is usually ready by then, so the
//! device waits only for the launch of the next kernels.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::amp::{self, Amp, LossScaler};
use crate::checkpoint::Checkpoint;
use crate::config::{Plan, Recipe};
use crate::error::{Result, TorchContext, TrainError};
use crate::feed::{DeviceBatch, Feed};
use crate::meter::{AverageMeter, Fmt, progress_line};
use crate::models::Model;
use crate::optim::Sgd;
use crate::schedule::Schedule;

/// Per-step numbers read back from the device.
struct StepStats {
    loss: f64,
    correct1: f64,
    correct5: f64,
}

/// What a training epoch did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    pub images: u64,
    pub seconds: f64,
}

/// What a validation pass found.
#[derive(Debug, Clone, PartialEq)]
pub struct ValStats {
    /// Top-1 and top-5 in percent, over `images`.
    pub acc1: f64,
    pub acc5: f64,
    /// Images evaluated: the split, less the bad ones left out.
    pub images: u64,
    /// The split's size.
    pub expected: u64,
    /// Bad images left out (name and error).
    pub left_out: Vec<String>,
}

/// One process's model, optimizer and progress.
#[derive(Debug)]
pub struct Trainer {
    device: Device,
    amp: Amp,
    print_freq: usize,
    recipe: Recipe,
    schedule: Schedule,
    vs: VarStore,
    model: Model,
    sgd: Sgd,
    scaler: Option<LossScaler>,
    /// Optimizer steps taken so far.
    pub global_step: u64,
    /// Best validation top-1 so far.
    pub best_acc1: f64,
    /// The learning rate of the last step taken.
    pub lr: f64,
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

impl Trainer {
    /// A trainer for `model` (whose variables are in `vs`), following `plan`; restores the optimizer's
    /// state and the run's progress from `checkpoint` when resuming.
    pub fn new(
        plan: &Plan,
        vs: VarStore,
        model: Model,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Trainer> {
        let recipe = plan.recipe;
        let mut sgd = Sgd::new(&vs, recipe.momentum, recipe.weight_decay);
        let mut scaler = (plan.amp == Amp::Fp16).then(LossScaler::default);
        let (mut global_step, mut best_acc1, mut lr) = (0, 0.0, recipe.lr);
        if let Some(ck) = checkpoint {
            ck.restore(&vs, Some(&mut sgd))?;
            global_step = ck.meta.global_step;
            best_acc1 = ck.meta.best_acc1;
            lr = ck.meta.lr;
            if plan.amp == Amp::Fp16 {
                scaler = Some(ck.meta.scaler.unwrap_or_default());
            }
        }
        Ok(Trainer {
            device: plan.device.device,
            amp: plan.amp,
            print_freq: plan.print_freq,
            recipe,
            schedule: recipe.schedule(),
            vs,
            model,
            sgd,
            scaler,
            global_step,
            best_acc1,
            lr,
        })
    }

    /// The model's variables.
    pub fn vars(&self) -> &VarStore {
        &self.vs
    }

    /// The optimizer (its momentum buffers go into checkpoints).
    pub fn sgd(&self) -> &Sgd {
        &self.sgd
    }

    /// The fp16 loss scaler, when the run uses one.
    pub fn scaler(&self) -> Option<LossScaler> {
        self.scaler
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
                    self.recipe.label_smoothing,
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
        batch.release_after_sync();
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

    /// One epoch of training. `last_good` is named in the error if the loss stops being finite.
    pub fn train_epoch(
        &mut self,
        feed: &Feed,
        epoch: u64,
        last_good: Option<&Path>,
    ) -> Result<EpochStats> {
        let steps = feed.batches_per_epoch();
        let mut batch_time = AverageMeter::new("Time", Fmt::F6_3);
        let mut data_time = AverageMeter::new("Data", Fmt::F6_3);
        let mut losses = AverageMeter::new("Loss", Fmt::E4);
        let mut top1 = AverageMeter::new("Acc@1", Fmt::F6_2);
        let mut top5 = AverageMeter::new("Acc@5", Fmt::F6_2);
        let mut batches = feed.epoch(epoch);
        let start = Instant::now();
        let mut waited = Duration::ZERO;
        let mut images = 0u64;
        let mut end = Instant::now();
        let mut reported = 0;
        let prefix = format!("Epoch: [{epoch}]");
        for k in 0..steps {
            let Some(batch) = batches.next_batch()? else {
                break;
            };
            for bad in batches
                .bad
                .iter()
                .skip(reported)
                .take(3_usize.saturating_sub(reported))
            {
                println!("=> bad sample replaced: {bad}");
            }
            reported = batches.bad.len();
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
            if k % self.print_freq == 0 {
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
        if !batches.bad.is_empty() {
            line += &format!(", {} bad sample(s) replaced by others", batches.bad.len());
        }
        let warned = feed.warned_samples();
        if warned > 0 {
            line += &format!(", {warned} image(s) decoded with libjpeg warnings so far");
        }
        if let Some(s) = &self.scaler {
            line += &format!(
                ", loss scale {} ({} steps skipped so far)",
                s.scale, s.skipped_total
            );
        }
        println!("{line}");
        Ok(EpochStats { images, seconds })
    }

    /// Evaluates on the val feed, every image at most once: a bad image is left out (never replaced by
    /// another), named, and the accuracy is over the images evaluated. Prints `main.py`'s lines.
    pub fn validate(&self, feed: &Feed, epoch: u64) -> Result<ValStats> {
        let steps = feed.batches_per_epoch();
        let mut batch_time = AverageMeter::new("Time", Fmt::F6_3);
        let mut losses = AverageMeter::new("Loss", Fmt::E4);
        let mut top1 = AverageMeter::new("Acc@1", Fmt::F6_2);
        let mut top5 = AverageMeter::new("Acc@5", Fmt::F6_2);
        let mut batches = feed.epoch(epoch);
        let mut end = Instant::now();
        let mut images = 0u64;
        let _no_grad = tch::no_grad_guard();
        for k in 0..steps {
            let Some(batch) = batches.next_batch()? else {
                break;
            };
            let n = batch.len as f64;
            let (logits, loss) = catch_torch(
                || format!("evaluating batch {k}"),
                || self.forward_loss(&batch, false),
            )?;
            let host = self.read_stats(&logits, &batch.labels, &loss, None)?;
            batch.release_after_sync();
            images += n as u64;
            losses.update(host[0], n);
            top1.update(100.0 * host[1] / n, n);
            top5.update(100.0 * host[2] / n, n);
            batch_time.update(end.elapsed().as_secs_f64(), 1.0);
            end = Instant::now();
            if k % self.print_freq == 0 {
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
        let expected = feed.samples_per_epoch() as u64;
        let left_out = batches.bad;
        for bad in &left_out {
            println!("=> val image left out: {bad}");
        }
        if left_out.is_empty() {
            println!(" * Acc@1 {:.3} Acc@5 {:.3}", top1.avg(), top5.avg());
        } else {
            println!(
                " * Acc@1 {:.3} Acc@5 {:.3} over {images} of {expected} images ({} bad image(s) left out)",
                top1.avg(),
                top5.avg(),
                left_out.len()
            );
        }
        Ok(ValStats {
            acc1: top1.avg(),
            acc5: top5.avg(),
            images,
            expected,
            left_out,
        })
    }
}
