//! A libtorch (tch) trainer for torchvision architectures, fed by [`imgloader`].
//!
//! The loader hands out u8 NHWC batches; this crate is the only one that makes tensors. [`train::run`]
//! is `imgtrain`: pytorch/examples' ImageNet `main.py` for one process, with checkpoints that resume
//! bit for bit on the CPU.
//!
//! The pieces, in the order a run meets them: [`config`] (the command line, resolved once into a
//! [`config::Plan`]), [`data`] (where the splits are), [`feed`] (batches into tensors on the device),
//! [`trainer`] (model, optimizer and the train/validate loops), [`checkpoint`], and the run's
//! records in its output folder: [`metrics`] (`metrics.jsonl`, `summary.csv`, and the same numbers as
//! [`tensorboard`] event files and, with `--enable_wandb`, in Weights & Biases through [`wandb`]) and
//! [`run_info`] (`run.json`); and, for an evaluation, [`predictions`] (`--dump-predictions`).

pub mod amp;
pub mod bridge;
pub mod checkpoint;
pub mod config;
pub mod console;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod feed;
pub mod launch;
pub mod meter;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod predictions;
pub mod run_info;
pub mod samples;
pub mod schedule;
pub mod tensorboard;
pub mod train;
pub mod trainer;
pub mod wandb;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use train::{RunSummary, run};

/// The libtorch this crate was built against, as its Python package or zip reports it.
pub const LIBTORCH_VERSION: &str = env!("IMGTRAIN_LIBTORCH_VERSION");
/// The libtorch library folder baked into the binary's rpath.
pub const LIBTORCH_LIB: &str = env!("IMGTRAIN_LIBTORCH_LIB");
