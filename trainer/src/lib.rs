//! A libtorch (tch) trainer for torchvision architectures, fed by [`imgloader`].
//!
//! The loader hands out u8 NHWC batches; this crate is the only one that makes tensors. [`train::run`]
//! is `imgtrain`: pytorch/examples' ImageNet `main.py` for one process, with checkpoints that resume
//! bit for bit on the CPU.

pub mod amp;
pub mod bridge;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod meter;
pub mod models;
pub mod optim;
pub mod schedule;
pub mod train;

pub use error::{Result, TrainError};
pub use train::{RunSummary, TrainConfig, run};

/// The libtorch this crate was built against, as its Python package or zip reports it.
pub const LIBTORCH_VERSION: &str = env!("IMGTRAIN_LIBTORCH_VERSION");
/// The libtorch library folder baked into the binary's rpath.
pub const LIBTORCH_LIB: &str = env!("IMGTRAIN_LIBTORCH_LIB");
