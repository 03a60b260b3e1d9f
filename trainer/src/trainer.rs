//! The state of one training process and its two loops, `main.py`'s `train` and `validate`: a
//! [`Trainer`] that a run (or, later, each rank of a distributed run) drives epoch by epoch.
//!
//! Per step on a GPU: the loader's batch (u8 NHWC and int64 labels in pinned memory) is copied to the
//! device on a copy stream, normalised and permuted to NCHW on the compute stream (channels_last unless
//! turned off), the forward pass runs under autocast, the backward pass and the SGD step (one fused kernel)
//! follow. The step's loss and hit counts are copied into pinned host memory behind an event, and read
//! one step late: the host waits only for the previous step's numbers while the device already has this
//! step queued, so it never idles between steps. fp16 is the exception: its loss scaler must know
//! whether the gradients overflowed before the step, so it reads them at once (one wait per step).
//! On the CPU everything is synchronous and the order of operations is the same, so runs stay
//! bit-reproducible.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::amp::{self, Amp, LossScaler};
use crate::bridge::{self, CudaEvent, CudaStream, SyncCounter};
use crate::checkpoint::{Checkpoint, Position};
use crate::config::{Plan, Recipe};
use crate::console::{Console, StepStatus};
use crate::dist::{BUCKET_CAP_BYTES, ProcessGroup, ReduceOp, Reducer};
use crate::error::{Result, TorchContext, TrainError};
use crate::feed::{DeviceBatch, Feed, Hold};
use crate::meter::{AverageMeter, Fmt, progress_line};
use crate::metrics::{EpochRecord, MetricsLog, Progress, Record};
use crate::models::Model;
use crate::optim::Sgd;
use crate::predictions::{self, Prediction};
use crate::schedule::Schedule;

/// A step's numbers on their way to the host: loss, top-1 and top-5 hits (and, for fp16, the gradient
/// sum), copied into host memory behind an event on CUDA, and the batch whose memory the copies read.
struct Readback {
    host: Tensor,
    copied: Option<CudaEvent>,
    hold: Option<Hold>,
    samples: usize,
    epoch: u64,
    step: usize,
}

impl Readback {
    /// Waits for the numbers (on CUDA: for the event only, not for work queued after it) and releases the
    /// batch, whose copies the device is then past.
    fn wait(&mut self) -> Result<()> {
        if let Some(e) = self.copied.take() {
            e.synchronize()?;
        }
        if let Some(hold) = self.hold.take() {
            hold.release_after_sync();
        }
        Ok(())
    }

    /// The numbers, once there.
    fn read(mut self) -> Result<(Vec<f64>, usize, usize)> {
        self.wait()?;
        let values =
            Vec::<f64>::try_from(&self.host).during(|| "reading a step's results".into())?;
        Ok((values, self.samples, self.step))
    }
}

/// Steps whose numbers are on their way to the host: on CUDA a step's are read after the next step is
/// queued (the host never waits for the step it just queued), on the CPU at once.
struct Lagged<T> {
    late: bool,
    pending: Option<T>,
}

impl<T> Lagged<T> {
    fn new(late: bool) -> Self {
        Lagged {
            late,
            pending: None,
        }
    }

    /// Takes a just-queued step; returns the one to read now, if any.
    fn push(&mut self, queued: T) -> Option<T> {
        let previous = self.pending.replace(queued);
        if self.late {
            previous
        } else {
            self.pending.take()
        }
    }

    /// The step still waiting, at the end of the loop.
    fn take(&mut self) -> Option<T> {
        self.pending.take()
    }
}

/// The meters of a loop, printed as `main.py`'s `ProgressMeter` does.
struct Meters {
    time: AverageMeter,
    data: Option<AverageMeter>,
    loss: AverageMeter,
    top1: AverageMeter,
    top5: AverageMeter,
    /// When the last step was accounted for.
    end: Instant,
}

impl Meters {
    fn new(with_data: bool) -> Meters {
        Meters {
            time: AverageMeter::new("Time", Fmt::F6_3),
            data: with_data.then(|| AverageMeter::new("Data", Fmt::F6_3)),
            loss: AverageMeter::new("Loss", Fmt::E4),
            top1: AverageMeter::new("Acc@1", Fmt::F6_2),
            top5: AverageMeter::new("Acc@5", Fmt::F6_2),
            end: Instant::now(),
        }
    }

    /// Accounts for one step of `n` samples.
    fn record(&mut self, n: usize, stats: &StepStats) {
        let n = n as f64;
        self.loss.update(stats.loss, n);
        self.top1.update(100.0 * stats.correct1 / n, n);
        self.top5.update(100.0 * stats.correct5 / n, n);
        self.time.update(self.end.elapsed().as_secs_f64(), 1.0);
        self.end = Instant::now();
    }

    /// Sums the meters' totals over the ranks (`main.py`'s `AverageMeter.all_reduce`): the averages
    /// become the run's, over every rank's samples.
    fn all_reduce(&mut self, group: &ProcessGroup) -> Result<()> {
        let meters = [&mut self.loss, &mut self.top1, &mut self.top5];
        let local: Vec<f64> = meters.iter().flat_map(|m| [m.sum, m.count]).collect();
        let total = group
            .all_reduce(&local, ReduceOp::Sum)
            .map_err(|e| collective(group, "summing the meters", e))?;
        for (m, t) in meters.into_iter().zip(total.chunks(2)) {
            m.sum = t[0];
            m.count = t[1];
        }
        Ok(())
    }

    fn line(&self, prefix: &str, k: usize, total: usize) -> String {
        let mut all = vec![&self.time];
        all.extend(&self.data);
        all.extend([&self.loss, &self.top1, &self.top5]);
        progress_line(prefix, k, total, &all)
    }
}

/// A failed collective, as the error that names the rank and what it was doing.
fn collective(group: &ProcessGroup, what: &str, e: TrainError) -> TrainError {
    TrainError::Collective {
        rank: group.rank(),
        what: what.to_owned(),
        message: match e {
            TrainError::Bridge { message, .. } => message,
            other => other.to_string(),
        },
    }
}

/// A rank's part in data-parallel training: its process group, c10d's reducer over the trainable
/// parameters, and the buffers (BatchNorm statistics) that rank 0 broadcasts before every forward pass,
/// as `DistributedDataParallel(broadcast_buffers=True)` does.
#[derive(Debug)]
struct DataParallel {
    group: Rc<ProcessGroup>,
    reducer: Reducer,
    buffers: Vec<Tensor>,
    /// The parameters by name, for [`DataParallel::check_replicas`].
    params: Vec<(String, Tensor)>,
    /// Also check the replicas every this many steps (`--check-replicas`); always at an epoch's end.
    check_every: Option<u64>,
}

impl DataParallel {
    /// Rank 0's parameters and buffers copied to every rank (DDP's start), then the reducer.
    fn new(
        group: Rc<ProcessGroup>,
        vs: &VarStore,
        check_every: Option<u64>,
    ) -> Result<DataParallel> {
        // By name: the same order on every rank (the store's map has no order of its own).
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let all: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
        group
            .broadcast(&all, 0)
            .map_err(|e| collective(&group, "copying rank 0's model to every rank", e))?;
        let trainable = vs.trainable_variables();
        let (params, buffers): (Vec<_>, Vec<_>) =
            named.into_iter().partition(|(_, t)| t.requires_grad());
        let buffers = buffers.into_iter().map(|(_, t)| t).collect();
        let reducer = group.reducer(&trainable, BUCKET_CAP_BYTES)?;
        Ok(DataParallel {
            group,
            reducer,
            buffers,
            params,
            check_every,
        })
    }

    /// Fails unless every rank holds the same parameters: each one's sum (in f64) is compared over the
    /// ranks (their minimum and maximum must be equal, bit for bit), and the first that differs is named.
    /// Data parallelism keeps them equal by construction; this catches what would break it silently (a
    /// rank that skipped a step, a different optimizer state). Buffers are left out: each rank's
    /// BatchNorm statistics follow its own batches until rank 0's are broadcast before the next forward
    /// pass, as in DDP.
    fn check_replicas(&self, when: &str) -> Result<()> {
        let what = || format!("checking the replicas {when}");
        let sums = self
            .params
            .iter()
            .map(|(_, t)| t.f_sum(Kind::Double))
            .collect::<std::result::Result<Vec<_>, _>>()
            .during(what)?;
        let local = Vec::<f64>::try_from(
            &Tensor::f_stack(&sums, 0)
                .and_then(|t| t.f_to_device(Device::Cpu))
                .during(what)?,
        )
        .during(what)?;
        let g = &self.group;
        let min = g
            .all_reduce(&local, ReduceOp::Min)
            .map_err(|e| collective(g, &what(), e))?;
        let max = g
            .all_reduce(&local, ReduceOp::Max)
            .map_err(|e| collective(g, &what(), e))?;
        let differs = self
            .params
            .iter()
            .zip(min.iter().zip(&max))
            .find(|(_, (lo, hi))| lo.to_bits() != hi.to_bits());
        if let Some(((name, _), (lo, hi))) = differs {
            return Err(TrainError::ReplicasDiffer {
                when: when.to_owned(),
                name: name.clone(),
                min: *lo,
                max: *hi,
            });
        }
        Ok(())
    }

    /// Rank 0's buffers to every rank.
    fn sync_buffers(&self) -> Result<()> {
        self.group
            .broadcast(&self.buffers, 0)
            .map_err(|e| collective(&self.group, "copying rank 0's BatchNorm statistics", e))
    }
}

/// `e` naming the last good checkpoint, when it is a non-finite loss.
fn with_last_good(e: TrainError, last_good: Option<&Path>) -> TrainError {
    match e {
        TrainError::NonFiniteLoss {
            loss,
            epoch,
            step,
            global_step,
            ..
        } => TrainError::NonFiniteLoss {
            loss,
            epoch,
            step,
            global_step,
            last_good: last_good.map(Path::to_owned),
        },
        other => other,
    }
}

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
    /// Averages over the epoch's samples: loss, top-1 and top-5 (percent), as the last progress line.
    pub loss: f64,
    pub acc1: f64,
    pub acc5: f64,
    /// Share of the epoch's time spent waiting for batches (0-1).
    pub data_wait: f64,
    /// Bad samples replaced by others.
    pub bad_samples: usize,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
}

/// How a training epoch ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpochEnd {
    /// Every step taken.
    Done(EpochStats),
    /// Stopped by a signal after a checkpoint at this position.
    Stopped(Position),
}

/// Set (by a SIGTERM or SIGINT handler) to ask a run to stop after its current step.
pub type StopFlag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// How often the ranks of a distributed run agree whether to stop (one small all-reduce on the host).
pub const STOP_POLL_STEPS: u64 = 4;

/// What a training epoch is asked besides training: where to start, mid-epoch checkpoints, stopping on
/// a signal, and a log of the samples each step read.
pub struct EpochControl<'a> {
    /// Continue the epoch from here (a resumed mid-epoch checkpoint); taken by the first epoch.
    pub from: Option<Position>,
    /// Save a checkpoint after every this many optimizer steps (`--checkpoint-every`).
    pub checkpoint_every: Option<u64>,
    pub stop: &'a StopFlag,
    /// Called (on every rank; rank 0 writes) at a mid-epoch checkpoint.
    pub save: &'a mut dyn FnMut(&Trainer, Position) -> Result<()>,
    pub samples: Option<&'a mut crate::samples::SampleLog>,
}

impl std::fmt::Debug for EpochControl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochControl")
            .field("from", &self.from)
            .field("checkpoint_every", &self.checkpoint_every)
            .finish_non_exhaustive()
    }
}

/// Seeds libtorch for the step after `global_step` steps (splitmix64's finaliser over seed and step).
fn manual_seed_for_step(seed: u64, global_step: u64) {
    let mut z = seed
        ^ global_step
            .wrapping_add(0x5bd1_e995)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    // libtorch takes the seed as uint64 through an int64 argument: the bits are what matter.
    tch::manual_seed((z ^ (z >> 31)) as i64);
}

/// What a validation pass found.
#[derive(Debug, Clone, PartialEq)]
pub struct ValStats {
    /// The mean loss over `images`.
    pub loss: f64,
    /// Top-1 and top-5 in percent, over `images`.
    pub acc1: f64,
    pub acc5: f64,
    /// Images evaluated: the split, less the bad ones left out.
    pub images: u64,
    /// The split's size.
    pub expected: u64,
    /// Bad images left out (name and error).
    pub left_out: Vec<String>,
    /// This rank's images with their top classes, when the trainer keeps them
    /// ([`Trainer::keep_predictions`]); the left-out ones have none.
    pub predictions: Vec<Prediction>,
}

/// One process's model, optimizer and progress.
#[derive(Debug)]
pub struct Trainer {
    device: Device,
    /// CUDA: the compute stream's device (results are read back one step late there).
    cuda: Option<CudaStream>,
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
    /// Where progress records go (`metrics.jsonl`), when the run keeps them.
    metrics: Option<MetricsLog>,
    /// The rank's process group and reducer, in a distributed run.
    dp: Option<DataParallel>,
    /// The run's seed (each step's random draws follow from it and the step).
    seed: u64,
    /// Validation also returns each image's top classes (`--dump-predictions`).
    keep_predictions: bool,
    /// Where the progress lines and bars go.
    console: Rc<Console>,
}

/// Where an epoch is, for the progress records: when it started, time spent waiting for data, images
/// done and bad samples met so far.
struct EpochClock {
    start: Instant,
    waited: Duration,
    images: u64,
    bad: usize,
}

impl EpochClock {
    /// Where the epoch is after `step` steps, for its progress bar.
    fn status(&self, m: &Meters, step: usize, train: bool) -> StepStatus {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        StepStatus {
            step,
            loss: m.loss.avg(),
            top1: m.top1.avg(),
            images_per_sec: self.images as f64 / secs,
            data_wait: train.then(|| self.waited.as_secs_f64() / secs),
        }
    }

    fn progress(
        &self,
        m: &Meters,
        (epoch, step, steps): (u64, usize, usize),
        global_step: u64,
        lr: f64,
        train: bool,
    ) -> Progress {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        Progress {
            epoch,
            step,
            steps,
            global_step,
            lr,
            loss: m.loss.avg(),
            top1: m.top1.avg(),
            top5: m.top5.avg(),
            images_per_sec: self.images as f64 / secs,
            data_wait: train.then(|| self.waited.as_secs_f64() / secs),
            bad_samples: self.bad,
        }
    }
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

/// A step's numbers, or the error a non-finite loss is.
fn check_loss(host: &[f64], epoch: u64, step: usize, global_step: u64) -> Result<StepStats> {
    let stats = StepStats {
        loss: host[0],
        correct1: host[1],
        correct5: host[2],
    };
    if !stats.loss.is_finite() {
        return Err(TrainError::NonFiniteLoss {
            loss: stats.loss,
            epoch,
            step,
            global_step,
            last_good: None,
        });
    }
    Ok(stats)
}

impl Trainer {
    /// A trainer for `model` (whose variables are in `vs`), following `plan`; restores the optimizer's
    /// state and the run's progress from `checkpoint` when resuming.
    /// In a distributed run (`group`), every rank starts from rank 0's weights and buffers, and c10d's
    /// reducer averages the gradients.
    pub fn new(
        plan: &Plan,
        vs: VarStore,
        model: Model,
        checkpoint: Option<&Checkpoint>,
        group: Option<Rc<ProcessGroup>>,
    ) -> Result<Trainer> {
        let cuda = match plan.device.device {
            Device::Cuda(i) => Some(CudaStream::current(Some(i))?),
            _ => None,
        };
        if cuda.is_some() && plan.channels_last {
            // Weights in the layout of the input, as `model.to(memory_format=torch.channels_last)`: else
            // every convolution converts them again. Before the optimizer and the restore, so that
            // momentum buffers take the same layout (the fused kernel wants equal strides).
            let vars: Vec<Tensor> = vs.trainable_variables();
            bridge::channels_last_(&vars)?;
        }
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
        let dp = group
            .map(|g| DataParallel::new(g, &vs, plan.check_replicas))
            .transpose()?;
        Ok(Trainer {
            device: plan.device.device,
            cuda,
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
            metrics: None,
            dp,
            seed: plan.seed,
            keep_predictions: false,
            console: Rc::new(Console::plain()),
        })
    }

    /// Sends progress records to `log` (and epoch records, through [`Trainer::metrics`]) from now on.
    pub fn set_metrics(&mut self, log: MetricsLog) {
        self.metrics = Some(log);
    }

    /// Prints through `console` from now on (`--quiet`, `--verbose`, progress bars).
    pub fn set_console(&mut self, console: Rc<Console>) {
        self.console = console;
    }

    /// Makes validation return each image's top classes with their probabilities
    /// ([`ValStats::predictions`]).
    pub fn keep_predictions(&mut self) {
        self.keep_predictions = true;
    }

    /// Records a finished epoch in the metrics files, if the run keeps them: before its checkpoint, so
    /// that no epoch goes missing (a resume drops rows past its checkpoint).
    pub fn record_epoch(&mut self, epoch: u64, t: &EpochStats, v: &ValStats) -> Result<()> {
        let global_step = self.global_step;
        match &mut self.metrics {
            Some(log) => log.epoch(EpochRecord::new(epoch, global_step, t, v)),
            None => Ok(()),
        }
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

    /// Queues the copy of the loss, and of how many samples have the label first and among the top 5 (and
    /// `extra`), to the host; [`Readback::read`] waits for them.
    fn queue_stats(
        &self,
        logits: &Tensor,
        batch: DeviceBatch,
        loss: &Tensor,
        extra: Option<Tensor>,
        (epoch, step): (u64, usize),
    ) -> Result<Readback> {
        let what = || "computing accuracy".to_owned();
        let k = logits.size()[1].min(5);
        let (_, pred) = logits.f_topk(k, 1, true, true).during(what)?;
        let correct = pred
            .f_eq_tensor(&batch.labels.f_unsqueeze(1).during(what)?)
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
        // From CUDA, a non-blocking copy to the CPU lands in pinned memory and does not wait.
        let host = Tensor::f_stack(&parts, 0)
            .and_then(|t| t.f_to_device_(Device::Cpu, Kind::Double, self.cuda.is_some(), false))
            .during(what)?;
        let copied = match &self.cuda {
            Some(stream) => {
                let mut e = CudaEvent::new()?;
                e.record(&CudaStream::current(Some(stream.device_index()))?)?;
                Some(e)
            }
            None => None,
        };
        let samples = batch.len;
        Ok(Readback {
            host,
            copied,
            hold: batch.into_hold(),
            samples,
            epoch,
            step,
        })
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

    /// Queues one training step (none when fp16 loss scaling skips it) and the copy of its loss and hit
    /// counts to the host. fp16 waits for them before the SGD step: its scaler must know about overflows
    /// first.
    fn step(&mut self, batch: DeviceBatch, lr: f64, epoch: u64, k: usize) -> Result<Readback> {
        self.sgd.zero_grad();
        if let Some(dp) = &self.dp {
            dp.sync_buffers()?;
            dp.reducer
                .before_forward()
                .map_err(|e| collective(&dp.group, "rebuilding the gradient buckets", e))?;
        }
        let (logits, loss) = catch_torch(
            || format!("in the forward/backward pass of epoch {epoch}, step {k}"),
            || {
                let (logits, loss) = self.forward_loss(&batch, true)?;
                if let Some(dp) = &self.dp {
                    dp.reducer.before_backward()?;
                }
                let scaled = match &self.scaler {
                    Some(s) => loss
                        .f_mul_scalar(s.scale)
                        .during(|| "scaling the loss".into())?,
                    None => loss.shallow_clone(),
                };
                let backward = scaled.f_backward();
                match &self.dp {
                    // c10d's reducer all-reduces inside the backward pass: a peer that died shows here.
                    Some(dp) => backward.map_err(|e| TrainError::Collective {
                        rank: dp.group.rank(),
                        what: "averaging the gradients in the backward pass".into(),
                        message: e.to_string(),
                    })?,
                    None => backward.during(|| "in the backward pass".into())?,
                }
                Ok((logits.detach(), loss.detach()))
            },
        )?;
        let Some(scale) = self.scaler.map(|s| s.scale) else {
            self.sgd.step(lr)?;
            self.lr = lr;
            self.global_step += 1;
            return self.queue_stats(&logits, batch, &loss, None, (epoch, k));
        };
        let grad_sum = amp::unscale(self.sgd.grads(), scale, self.device)?;
        let mut rb = self.queue_stats(&logits, batch, &loss, Some(grad_sum), (epoch, k))?;
        rb.wait()?;
        let host = Vec::<f64>::try_from(&rb.host).during(|| "reading a step's results".into())?;
        check_loss(&host, epoch, k, self.global_step)?;
        let scaler = self.scaler.as_mut().expect("fp16 has a scaler");
        if !scaler.update(host[3].is_finite()) {
            if scaler.exhausted() {
                return Err(TrainError::TooManySkippedSteps {
                    skips: scaler.consecutive_skips,
                    scale: scaler.scale,
                    epoch,
                    step: k,
                });
            }
            return Ok(rb);
        }
        self.sgd.step(lr)?;
        self.lr = lr;
        self.global_step += 1;
        Ok(rb)
    }

    /// Reads a step's numbers into the meters, printing the progress line when due.
    fn finish_step(
        &self,
        rb: Readback,
        m: &mut Meters,
        prefix: &str,
        steps: usize,
        global_step: u64,
        clock: &mut EpochClock,
    ) -> Result<()> {
        let epoch = rb.epoch;
        let (host, n, k) = rb.read()?;
        let stats = check_loss(&host, epoch, k, global_step)?;
        m.record(n, &stats);
        clock.images += n as u64;
        self.console.step(&clock.status(m, k + 1, true));
        if k % self.print_freq == 0 {
            self.console.step_line(m.line(prefix, k + 1, steps));
            if let Some(log) = &self.metrics {
                let lr = self.schedule.lr(epoch, k, steps);
                let p = clock.progress(m, (epoch, k + 1, steps), global_step + 1, lr, true);
                log.record(&Record::Train(p))?;
            }
        }
        Ok(())
    }

    /// One epoch of training. `last_good` is named in the error if the loss stops being finite.
    pub fn train_epoch(
        &mut self,
        feed: &Feed,
        epoch: u64,
        last_good: Option<&Path>,
        ctl: &mut EpochControl<'_>,
    ) -> Result<EpochEnd> {
        self.train_epoch_inner(feed, epoch, ctl)
            .map_err(|e| with_last_good(e, last_good))
    }

    /// Whether to stop now: a signal arrived (single process), or one arrived on some rank (distributed:
    /// asked every [`STOP_POLL_STEPS`] steps of the epoch, all ranks together, so that all stop at the same
    /// step).
    fn should_stop(&self, stop: &StopFlag, steps_done: u64) -> Result<bool> {
        let mine = stop.load(std::sync::atomic::Ordering::Relaxed);
        let Some(dp) = &self.dp else {
            return Ok(mine);
        };
        if !steps_done.is_multiple_of(STOP_POLL_STEPS) {
            return Ok(false);
        }
        let any = dp
            .group
            .all_reduce_host(&[f64::from(u8::from(mine))], ReduceOp::Max)
            .map_err(|e| collective(&dp.group, "agreeing whether to stop", e))?;
        Ok(any[0] > 0.0)
    }

    /// Whether a signal arrived here (single process) or on any rank (distributed; a collective).
    pub fn stop_agreed(&self, stop: &StopFlag) -> Result<bool> {
        self.should_stop(stop, 0)
    }

    /// Where the epoch is after `steps` steps, with its meters summed over the ranks (a collective).
    fn position(
        &self,
        steps: usize,
        batch_size: usize,
        m: &Meters,
        clock: &EpochClock,
    ) -> Result<Position> {
        let world = self.dp.as_ref().map_or(1, |dp| dp.group.world());
        let mut totals = vec![
            m.loss.sum,
            m.top1.sum,
            m.top5.sum,
            m.loss.count,
            clock.images as f64,
        ];
        if let Some(dp) = &self.dp {
            totals = dp
                .group
                .all_reduce(&totals, ReduceOp::Sum)
                .map_err(|e| collective(&dp.group, "summing the meters for a checkpoint", e))?;
        }
        let global_batch = (batch_size * world) as u64;
        Ok(Position {
            consumed: steps as u64 * global_batch,
            steps: steps as u64,
            global_batch,
            loss_sum: totals[0],
            top1_sum: totals[1],
            top5_sum: totals[2],
            count: totals[3],
            images: totals[4] as u64,
            seconds: clock.start.elapsed().as_secs_f64(),
            waited: clock.waited.as_secs_f64(),
            bad: clock.bad as u64,
        })
    }

    fn train_epoch_inner(
        &mut self,
        feed: &Feed,
        epoch: u64,
        ctl: &mut EpochControl<'_>,
    ) -> Result<EpochEnd> {
        let steps = feed.batches_per_epoch();
        let world = self.dp.as_ref().map_or(1, |dp| dp.group.world());
        let lead = self.dp.as_ref().is_none_or(|dp| dp.group.rank() == 0);
        let mut m = Meters::new(true);
        let mut clock = EpochClock {
            start: Instant::now(),
            waited: Duration::ZERO,
            images: 0,
            bad: 0,
        };
        let from = ctl.from.take();
        let first = from.map_or(0, |p| p.steps as usize);
        let mut batches = match &from {
            Some(p) => feed.epoch_from(epoch, p.consumed as usize, world)?,
            None => feed.epoch(epoch),
        };
        // The totals of the steps before the interruption are the whole run's: rank 0 carries them.
        let mut bad_before = 0;
        if let Some(p) = from.filter(|_| lead) {
            for meter in [&mut m.loss, &mut m.top1, &mut m.top5] {
                meter.count = p.count;
            }
            (m.loss.sum, m.top1.sum, m.top5.sum) = (p.loss_sum, p.top1_sum, p.top5_sum);
            clock.images = p.images;
            clock.start = Instant::now()
                .checked_sub(Duration::from_secs_f64(p.seconds))
                .unwrap_or_else(Instant::now);
            clock.waited = Duration::from_secs_f64(p.waited);
            bad_before = p.bad as usize;
        }
        let mut reported = 0;
        let prefix = format!("Epoch: [{epoch}]");
        self.console.begin_epoch(format!("train {epoch}"), steps);
        // libtorch's own count of synchronising calls on this thread (CUDA builds with the headers only).
        let syncs = self.cuda.as_ref().and_then(|_| SyncCounter::start().ok());
        let syncs_before = syncs.as_ref().and_then(|c| c.count().ok());
        let mut steps_done = 0u64;
        // With the global step each one started from.
        let mut pending: Lagged<(Readback, u64)> = Lagged::new(self.cuda.is_some());
        for k in first..steps {
            let Some(batch) = batches.next_batch()? else {
                break;
            };
            for bad in batches
                .bad
                .iter()
                .skip(reported)
                .take(3_usize.saturating_sub(reported))
            {
                self.console
                    .info(format_args!("=> bad sample replaced: {bad}"));
            }
            reported = batches.bad.len();
            clock.bad = bad_before + reported;
            let wait = m.end.elapsed();
            clock.waited += wait;
            if let Some(d) = &mut m.data {
                d.update(wait.as_secs_f64(), 1.0);
            }
            if let Some(hold) = pending.pending.as_mut().and_then(|(p, _)| p.hold.as_mut()) {
                // The previous batch's memory goes back to the loader as soon as its copies are done.
                hold.try_release()?;
            }
            if let Some(log) = ctl.samples.as_deref_mut() {
                log.step(epoch, self.global_step + 1, &batch.indices)?;
            }
            // Every random draw of a step (dropout) follows from (seed, step): a run resumed mid-epoch
            // draws what the uninterrupted run drew.
            manual_seed_for_step(self.seed, self.global_step);
            let lr = self.schedule.lr(epoch, k, steps);
            let step_before = self.global_step;
            let rb = self.step(batch, lr, epoch, k)?;
            if let Some(dp) = &self.dp
                && dp
                    .check_every
                    .is_some_and(|n| self.global_step.is_multiple_of(n))
            {
                dp.check_replicas(&format!(
                    "after step {} (--check-replicas)",
                    self.global_step
                ))?;
            }
            if let Some((p, g)) = pending.push((rb, step_before)) {
                self.finish_step(p, &mut m, &prefix, steps, g, &mut clock)?;
                steps_done += 1;
            }
            let taken = k + 1;
            if taken == steps {
                break;
            }
            let due = ctl
                .checkpoint_every
                .is_some_and(|n| self.global_step.is_multiple_of(n));
            let stop = self.should_stop(ctl.stop, taken as u64)?;
            if due || stop {
                // The meters must hold every step taken: read the one still on its way.
                if let Some((p, g)) = pending.take() {
                    self.finish_step(p, &mut m, &prefix, steps, g, &mut clock)?;
                    steps_done += 1;
                }
                let position = self.position(taken, feed.batch_size(), &m, &clock)?;
                (ctl.save)(self, position)?;
                if stop {
                    return Ok(EpochEnd::Stopped(position));
                }
            }
        }
        if let Some((p, g)) = pending.take() {
            self.finish_step(p, &mut m, &prefix, steps, g, &mut clock)?;
            steps_done += 1;
        }
        let mut images = clock.images;
        if let Some(dp) = &self.dp {
            dp.check_replicas(&format!("at the end of epoch {epoch}"))?;
            // The epoch's numbers over every rank's samples.
            m.all_reduce(&dp.group)?;
            let total = dp
                .group
                .all_reduce(&[images as f64], ReduceOp::Sum)
                .map_err(|e| collective(&dp.group, "counting the epoch's images", e))?;
            images = total[0] as u64;
        }
        let seconds = clock.start.elapsed().as_secs_f64();
        let waited = clock.waited;
        let mut line = format!(
            "Epoch: [{epoch}] done: {images} images in {seconds:.1} s, {:.1} images/s, {:.1}% of the \
             time waiting for data, lr {:.4e}",
            images as f64 / seconds.max(1e-9),
            100.0 * waited.as_secs_f64() / seconds.max(1e-9),
            self.lr
        );
        if let (Some(c), Some(before)) = (&syncs, syncs_before)
            && let Ok(after) = c.count()
        {
            line += &format!(
                ", {:.2} host-device syncs per step",
                after.saturating_sub(before) as f64 / steps_done.max(1) as f64
            );
        }
        if bad_before + batches.bad.len() > 0 {
            line += &format!(
                ", {} bad sample(s) replaced by others",
                bad_before + batches.bad.len()
            );
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
        self.console.summary(line);
        Ok(EpochEnd::Done(EpochStats {
            images,
            seconds,
            loss: m.loss.avg(),
            acc1: m.top1.avg(),
            acc5: m.top5.avg(),
            data_wait: waited.as_secs_f64() / seconds.max(1e-9),
            bad_samples: bad_before + batches.bad.len(),
            lr: self.lr,
        }))
    }

    /// Evaluates on the val feed, every image at most once: a bad image is left out (never replaced by
    /// another), named, and the accuracy is over the images evaluated. Prints `main.py`'s lines.
    pub fn validate(&self, feed: &Feed, epoch: u64) -> Result<ValStats> {
        let steps = feed.batches_per_epoch();
        let mut m = Meters::new(false);
        if let Some(dp) = &self.dp {
            // Every rank evaluates rank 0's model, BatchNorm statistics included.
            dp.sync_buffers()?;
        }
        let mut batches = feed.epoch(epoch);
        self.console.begin_epoch(format!("val {epoch}"), steps);
        let _no_grad = tch::no_grad_guard();
        let mut pending = Lagged::new(self.cuda.is_some());
        let mut clock = EpochClock {
            start: Instant::now(),
            waited: Duration::ZERO,
            images: 0,
            bad: 0,
        };
        let mut predictions = Vec::new();
        let finish = |rb: Readback, m: &mut Meters, clock: &mut EpochClock| -> Result<()> {
            let (host, n, k) = rb.read()?;
            let stats = StepStats {
                loss: host[0],
                correct1: host[1],
                correct5: host[2],
            };
            m.record(n, &stats);
            clock.images += n as u64;
            self.console.step(&clock.status(m, k + 1, false));
            if k % self.print_freq == 0 {
                self.console.step_line(m.line("Test: ", k + 1, steps));
                if let Some(log) = &self.metrics {
                    let p =
                        clock.progress(m, (epoch, k + 1, steps), self.global_step, self.lr, false);
                    log.record(&Record::Val(p))?;
                }
            }
            Ok(())
        };
        for k in 0..steps {
            let Some(batch) = batches.next_batch()? else {
                break;
            };
            let (logits, loss) = catch_torch(
                || format!("evaluating batch {k}"),
                || self.forward_loss(&batch, false),
            )?;
            if self.keep_predictions {
                predictions.extend(predictions::top_classes(&logits, &batch.indices)?);
            }
            let rb = self.queue_stats(&logits, batch, &loss, None, (epoch, k))?;
            clock.bad = batches.bad.len();
            if let Some(p) = pending.push(rb) {
                finish(p, &mut m, &mut clock)?;
            }
        }
        if let Some(p) = pending.take() {
            finish(p, &mut m, &mut clock)?;
        }
        let mut images = clock.images;
        let mut expected = feed.samples_per_epoch() as u64;
        let left_out = batches.bad;
        for bad in &left_out {
            match &self.dp {
                // Only rank 0's standard output is kept.
                Some(dp) if dp.group.rank() != 0 => {
                    eprintln!(
                        "imgtrain (rank {}): val image left out: {bad}",
                        dp.group.rank()
                    );
                }
                _ => self
                    .console
                    .info(format_args!("=> val image left out: {bad}")),
            }
        }
        let mut left_out_count = left_out.len();
        if let Some(dp) = &self.dp {
            // Each rank evaluated its own share of the split (every image on exactly one rank): sums.
            m.all_reduce(&dp.group)?;
            let local = [images as f64, expected as f64, left_out_count as f64];
            let total = dp
                .group
                .all_reduce(&local, ReduceOp::Sum)
                .map_err(|e| collective(&dp.group, "counting the val images", e))?;
            (images, expected, left_out_count) =
                (total[0] as u64, total[1] as u64, total[2] as usize);
            if left_out_count > left_out.len() {
                self.console.info(format_args!(
                    "=> {} more val image(s) left out on other ranks (each rank names its own on \
                     standard error)",
                    left_out_count - left_out.len()
                ));
            }
        }
        let (top1, top5) = (&m.top1, &m.top5);
        if left_out_count == 0 {
            self.console.summary(format_args!(
                " * Acc@1 {:.3} Acc@5 {:.3}",
                top1.avg(),
                top5.avg()
            ));
        } else {
            self.console.summary(format_args!(
                " * Acc@1 {:.3} Acc@5 {:.3} over {images} of {expected} images ({left_out_count} bad image(s) \
                 left out)",
                top1.avg(),
                top5.avg(),
            ));
        }
        Ok(ValStats {
            loss: m.loss.avg(),
            acc1: top1.avg(),
            acc5: top5.avg(),
            images,
            expected,
            left_out,
            predictions,
        })
    }
}
