//! Read ImageNet-style datasets in place, decode, augment and batch them in parallel, without libtorch.

pub mod augment;
mod error;
pub mod sampler;

pub use augment::{Augmenter, ImageView, TrainAugment, ValAugment, sample_rng};
pub use error::{Error, Result};
pub use sampler::{DistributedSampler, PartitionSampler};
