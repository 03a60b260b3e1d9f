//! Read ImageNet-style datasets in place, decode, augment and batch them in parallel, without libtorch.
//!
//! ```
//! use imgloader::{Loader, OpenOptions, Transform, TrainAugment};
//!
//! # let dir = tempfile::tempdir()?;
//! # let cfg = imgfixtures::SynthConfig { classes: 2, train_per_class: 3, val_per_class: 1, min_side: 64, max_side: 96, ..Default::default() };
//! # imgfixtures::write_dataset(&cfg, dir.path())?;
//! # let train_tar = dir.path().join("train.tar");
//! // A tar of class folders, read in place through its index (built on first use); folders work the same.
//! let source = imgloader::open(&train_tar, &OpenOptions::default())?;
//! let loader = Loader::builder(source)
//!     .batch_size(4)
//!     .threads(2)
//!     .transform(Transform::Train(TrainAugment::default())) // RandomResizedCrop(224) + flip
//!     .seed(0)
//!     .build()?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     assert_eq!(batch.pixels().len(), batch.len * 224 * 224 * 3); // u8 NHWC
//!     assert_eq!(batch.labels.len(), batch.len);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same (seed, epoch, rank, world) gives the same batches whatever the number of threads: each sample's
//! randomness is a pure function of (seed, epoch, index) ([`sample_rng`]).
//!
//! What the loader does is told through [`tracing`] events, for whichever subscriber the program installs
//! (the crate installs none): `loader built` (info: the source, sample count, threads, batch size, sampler,
//! rank and world), `epoch started` and `dataset opened` (debug), `bad sample replaced` / `bad sample left
//! out` (info, with the sample's name and error) and `index rebuilt` (info, with the reason). None is
//! emitted per sample that loads fine. With `tracing-subscriber`:
//! `tracing_subscriber::fmt().with_env_filter("imgloader=debug").init()`.

pub mod atomic;
pub mod augment;
pub mod decode;
mod decode_pool;
pub mod error;
mod pipeline;
mod rng;
pub mod sampler;
pub mod shard;
pub mod source;
pub mod workers;

pub use augment::{
    Augmenter, IMAGENET_MEAN, IMAGENET_STD, ImageView, TrainAugment, ValAugment, sample_rng,
};
pub use decode::{DecodeOptions, Decoder};
pub use decode_pool::{DecodePool, DecodeSummary, Decoded};
pub use error::{Error, Result};
pub use pipeline::{
    Allocator, BadSample, BadSamples, Batch, Epoch, HeapAllocator, HeapBuffer, Loader,
    LoaderBuilder, Output, Transform,
};
pub use sampler::{DistributedSampler, PartitionSampler};
pub use shard::{ShardWriter, ShardWriterBuilder};
pub use source::{
    IndexPolicy, Layout, OpenOptions, OpenReport, Skipped, Source, open, open_with_report,
};
