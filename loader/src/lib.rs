//! Read ImageNet-style datasets in place, decode, augment and batch them in parallel, without libtorch.

pub mod decode;
mod error;

pub use error::{Error, Result};
