//! Read ImageNet-style datasets in place, decode, augment and batch them in parallel, without libtorch.

pub mod decode;
pub mod error;

pub use error::{Error, Result};
