//! The trainer's error type. Every variant names its culprit: a path, a flag, a step.

use std::path::PathBuf;

/// Errors setting up or running training and evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A command-line value is out of range or inconsistent with another; `what` names the flag.
    #[error("{what}: {reason}")]
    Config { what: &'static str, reason: String },
    /// The dataset folder is missing, or holds no split the run needs.
    #[error("{}: {reason}", path.display())]
    Data { path: PathBuf, reason: String },
    /// A split could not be opened or loaded.
    #[error("{split} data {}", path.display())]
    Loader {
        split: &'static str,
        path: PathBuf,
        #[source]
        source: Box<imgloader::Error>,
    },
    /// A batch could not be made (the loader's error names the sample).
    #[error("loading a {split} batch of epoch {epoch}")]
    Batch {
        split: &'static str,
        epoch: u64,
        #[source]
        source: Box<imgloader::Error>,
    },
    /// The train and val splits do not have the same classes.
    #[error(
        "the train split has {train} classes and the val split {val}; they must be the same ({detail})"
    )]
    ClassMismatch {
        train: usize,
        val: usize,
        detail: String,
    },
    /// Building the model or loading weights into it failed.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// The device could not be used.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// The output folder cannot be created or written.
    #[error("output dir {}: not writable", path.display())]
    OutputDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A run record in the output folder (`metrics.jsonl`, `summary.csv`, `run.json`, TensorBoard
    /// events) cannot be read or written.
    #[error("run record {}", path.display())]
    RunRecord {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--enable_wandb` cannot work: `python` (the interpreter for the W&B sidecar) is missing, lacks the
    /// `wandb` package, or the sidecar does not start.
    #[error("--enable_wandb: {}: {reason}", python.display())]
    Wandb { python: PathBuf, reason: String },
    /// `--dump-predictions FILE` cannot be written, or the ranks' predictions do not add up.
    #[error("--dump-predictions {}: {reason}", path.display())]
    Predictions {
        path: PathBuf,
        reason: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// A checkpoint cannot be read, is not ours, or does not fit the model.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// A checkpoint holds another architecture than `--arch`.
    #[error(
        "checkpoint {}: holds a {found} model but --arch is {expected}; pass --arch {found} to use it",
        path.display()
    )]
    CheckpointArch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// Writing a checkpoint failed.
    #[error("writing checkpoint {}", path.display())]
    CheckpointWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The loss became NaN or infinite. The last good checkpoint, if any, is left as it was.
    #[error(
        "loss is {loss} at epoch {epoch}, step {step} (global step {global_step}); stopped. {}",
        match last_good { Some(p) => format!("The last good checkpoint is {}", p.display()), None => "No checkpoint was written yet".to_owned() }
    )]
    NonFiniteLoss {
        loss: f64,
        epoch: u64,
        step: usize,
        global_step: u64,
        last_good: Option<PathBuf>,
    },
    /// fp16 loss scaling skipped too many steps in a row (gradients kept overflowing).
    #[error(
        "fp16 loss scaling skipped {skips} steps in a row (scale now {scale}) at epoch {epoch}, step {step}: \
         the gradients overflow whatever the scale; try --amp bf16 or a lower --lr"
    )]
    TooManySkippedSteps {
        skips: u32,
        scale: f64,
        epoch: u64,
        step: usize,
    },
    /// A libtorch call failed; `what` says which part of the run.
    #[error("libtorch failed {what}")]
    Torch {
        what: String,
        #[source]
        source: tch::TchError,
    },
    /// A call into the trainer's C++ bridge to libtorch raised a C++ exception; `op` names the bridge
    /// operation (`sgd_step`, `cuda_event_record`, ...), `message` is libtorch's, without its backtrace.
    #[error("libtorch failed in {op}: {message}")]
    Bridge { op: &'static str, message: String },
    /// Joining a distributed run failed: the rendezvous at host:port (c10d's TCPStore, rank 0 serving
    /// it) or the process group behind it.
    #[error("rank {rank} of {world}: could not join the process group at {host}:{port}: {message}")]
    Rendezvous {
        host: String,
        port: u16,
        rank: usize,
        world: usize,
        message: String,
    },
    /// A collective operation of a distributed run failed (a rank died, the network failed, or it timed
    /// out after --dist-timeout); `what` says which part of the run.
    #[error(
        "rank {rank}: {what} failed (another rank stopped, or --dist-timeout passed): {message}"
    )]
    Collective {
        rank: usize,
        what: String,
        message: String,
    },
    /// The ranks of a distributed run no longer hold the same weights.
    #[error(
        "the ranks' models differ {when}: {name} sums to {min} on one rank and {max} on another \
         (data-parallel replicas must stay identical)"
    )]
    ReplicasDiffer {
        when: String,
        name: String,
        min: f64,
        max: f64,
    },
    /// A rank started by `--multiprocessing-distributed` failed; the launcher stopped the others.
    #[error("rank {rank} (pid {pid}) {how}; stopped the other {stopped} rank(s) of this node")]
    RankFailed {
        rank: usize,
        pid: u32,
        how: String,
        stopped: usize,
    },
    /// The launcher was interrupted twice (Ctrl-C or SIGTERM) and killed its ranks.
    #[error("interrupted twice: killed the {ranks} rank(s) of this node")]
    Interrupted { ranks: usize },
    /// libtorch raised an error inside a model's forward or backward pass (tch reports those by panicking).
    #[error("libtorch failed {what}: {message}")]
    TorchPanic { what: String, message: String },
}

/// Shorthand for results of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Adds "what was being done" to a libtorch error.
pub(crate) trait TorchContext<T> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> TorchContext<T> for std::result::Result<T, tch::TchError> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| TrainError::Torch {
            what: what(),
            source,
        })
    }
}
