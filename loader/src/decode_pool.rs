//! Decoding without augmentation, in parallel on a pool of our own.
//!
//! The loader's ceiling: what the same decoders on the same number of threads do when nothing is cropped,
//! resized or batched (`imgtool bench --pipeline decode`). Also the building block of "does every sample of
//! this dataset decode?" checks, since each outcome is handed to the caller with the sample's index.

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use crate::augment::ImageView;
use crate::decode::{DecodeOptions, Decoder};
use crate::source::Source;
use crate::workers::Workers;
use crate::{Error, Result};

/// Decodes samples of a [`Source`] in parallel, one [`Decoder`] per thread, with no augmentation.
///
/// ```
/// use imgloader::{DecodePool, DecodeOptions, OpenOptions};
///
/// # let dir = tempfile::tempdir()?;
/// # let cfg = imgfixtures::SynthConfig { classes: 2, train_per_class: 3, val_per_class: 1, min_side: 64, max_side: 96, ..Default::default() };
/// # imgfixtures::write_dataset(&cfg, dir.path())?;
/// let source = imgloader::open(&dir.path().join("train.tar"), &OpenOptions::default())?;
/// let pool = DecodePool::new(source.clone(), 2, DecodeOptions::default())?;
/// let all: Vec<usize> = (0..source.len()).collect();
/// let summary = pool.decode(&all, |_index, outcome| {
///     if let Ok(image) = outcome {
///         assert_eq!(image.pixels.len(), image.width as usize * image.height as usize * 3);
///     }
/// })?;
/// assert_eq!((summary.images, summary.bad), (6, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DecodePool {
    source: Arc<dyn Source>,
    options: DecodeOptions,
    workers: Workers<Worker>,
}

/// Per-thread scratch, reused for every sample the thread decodes.
struct Worker {
    decoder: Decoder,
    bytes: Vec<u8>,
}

/// What one [`DecodePool::decode`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Samples decoded.
    pub images: usize,
    /// Samples that could not be read or decoded (each was handed to the visitor as an error).
    pub bad: usize,
    /// Decoded pixels (width × height), over the good samples.
    pub pixels: u64,
    /// Encoded bytes read, over every sample that could be read.
    pub encoded_bytes: u64,
}

impl DecodeSummary {
    fn merge(self, other: DecodeSummary) -> DecodeSummary {
        DecodeSummary {
            images: self.images + other.images,
            bad: self.bad + other.bad,
            pixels: self.pixels + other.pixels,
            encoded_bytes: self.encoded_bytes + other.encoded_bytes,
        }
    }
}

impl fmt::Debug for DecodePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodePool")
            .field("source", &self.source)
            .field("threads", &self.workers.threads())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl DecodePool {
    /// Starts `threads` named worker threads (`imgdecode-N`) for `source`.
    pub fn new(source: Arc<dyn Source>, threads: usize, options: DecodeOptions) -> Result<Self> {
        if threads == 0 {
            return Err(Error::Config {
                what: "threads",
                reason: "must be at least 1".to_owned(),
            });
        }
        options.check()?;
        let opts = options.clone();
        let workers = Workers::new(threads, "imgdecode", move || Ok(Worker::with(&opts)))?;
        Ok(DecodePool {
            source,
            options,
            workers,
        })
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.workers.threads()
    }

    /// The source being read.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// Decodes the samples `indices` in parallel and hands each outcome to `visit(index, outcome)`, on the
    /// worker thread that decoded it, in no particular order. The image borrows the thread's decoder and
    /// is only valid during the call. A sample that cannot be read or decoded is an `Err` naming it, and
    /// counts in [`DecodeSummary::bad`]; it does not stop the others.
    ///
    /// Fails, before decoding anything, only when an index is out of range.
    pub fn decode<F>(&self, indices: &[usize], visit: F) -> Result<DecodeSummary>
    where
        F: Fn(usize, std::result::Result<ImageView<'_>, &Error>) + Sync,
    {
        self.visit(indices, |index, outcome| {
            visit(index, outcome.map(|d| d.image))
        })
    }

    /// As [`decode`](Self::decode), with more of each sample: its encoded bytes and the decoder's
    /// warnings (data libjpeg worked around), for checks such as `imgtool verify`.
    pub fn visit<F>(&self, indices: &[usize], visit: F) -> Result<DecodeSummary>
    where
        F: Fn(usize, std::result::Result<Decoded<'_>, &Error>) + Sync,
    {
        let len = self.source.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= len) {
            return Err(Error::Config {
                what: "sample index",
                reason: format!("{bad} is out of range: the source has {len} samples"),
            });
        }
        self.workers.install(|| {
            indices
                .par_iter()
                .map(|&index| self.workers.with(|worker| self.one(worker, index, &visit)))
                .try_reduce(DecodeSummary::default, |a, b| Ok(a.merge(b)))
        })
    }

    fn one<F>(&self, worker: &mut Worker, index: usize, visit: &F) -> DecodeSummary
    where
        F: Fn(usize, std::result::Result<Decoded<'_>, &Error>) + Sync,
    {
        let Worker { decoder, bytes } = worker;
        let encoded = match self.source.bytes(index, bytes) {
            Ok(encoded) => encoded,
            Err(e) => {
                visit(index, Err(&e));
                return DecodeSummary {
                    bad: 1,
                    ..Default::default()
                };
            }
        };
        let encoded_bytes = encoded.len() as u64;
        match decoder.decode_region(encoded, crate::decode::whole) {
            Ok(region) => {
                let image = region.image;
                visit(
                    index,
                    Ok(Decoded {
                        image: ImageView {
                            width: image.width,
                            height: image.height,
                            pixels: image.pixels,
                        },
                        encoded,
                        warnings: region.warnings,
                    }),
                );
                DecodeSummary {
                    images: 1,
                    bad: 0,
                    pixels: u64::from(image.width) * u64::from(image.height),
                    encoded_bytes,
                }
            }
            Err(source) => {
                let e = Error::Decode {
                    sample: self.source.name(index),
                    source,
                };
                visit(index, Err(&e));
                DecodeSummary {
                    bad: 1,
                    encoded_bytes,
                    ..Default::default()
                }
            }
        }
    }
}

/// A sample decoded by [`DecodePool::visit`].
#[derive(Debug, Clone, Copy)]
pub struct Decoded<'a> {
    /// The whole image.
    pub image: ImageView<'a>,
    /// The sample's encoded bytes, as read from the source.
    pub encoded: &'a [u8],
    /// Warnings the decoder raised (libjpeg-turbo: damaged data it worked around); 0 for a clean file.
    pub warnings: u32,
}

impl Worker {
    fn with(options: &DecodeOptions) -> Worker {
        Worker {
            decoder: Decoder::new(options.clone()),
            bytes: Vec::new(),
        }
    }
}
