//! Read ImageNet-style datasets in place, decode, augment and batch them in parallel, without libtorch.

pub mod decode;
pub mod error;
pub mod source;

pub use error::{Error, Result};
pub use source::{
    IndexPolicy, Layout, OpenOptions, OpenReport, Skipped, Source, open, open_with_report,
};
