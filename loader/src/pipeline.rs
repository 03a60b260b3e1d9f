//! Parallel batching: sampler order in, decoded and augmented batches out.
//!
//! One rayon pool of our own runs one job per batch; inside it the batch's slots are filled in parallel,
//! each sample decoded and augmented straight into its slot of a preallocated buffer. Each pool thread owns
//! one [`Worker`] (decoder + augmenter scratch), so the hot path allocates nothing once warm. Batches are
//! handed out in sampler order through a bounded window of `prefetch` jobs; buffers come back to a free
//! list when a [`Batch`] is dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;

use crate::augment::{Augmenter, TrainAugment, ValAugment, normalize_to_nchw_f32, sample_rng};
use crate::decode::{DecodeOptions, Decoder};
use crate::sampler::{DistributedSampler, PartitionSampler};
use crate::source::Source;
use crate::workers::Workers;
use crate::{Error, Result};

/// Which transform a loader applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// `RandomResizedCrop` + horizontal flip, random per (seed, epoch, sample).
    Train(TrainAugment),
    /// Resize the shorter side, then centre crop; no randomness.
    Val(ValAugment),
}

impl Transform {
    fn output_size(&self) -> (u32, u32) {
        match self {
            Transform::Train(t) => t.size,
            Transform::Val(v) => (v.crop, v.crop),
        }
    }
}

/// The pixel layout of batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// u8 RGB, `[batch, height, width, 3]`: the compact form; normalise on the GPU.
    U8Nhwc,
    /// f32, `[batch, 3, height, width]`, `(x / 255 - mean) / std`: for users with no device-side step.
    F32Nchw { mean: [f32; 3], std: [f32; 3] },
}

/// What happens when a sample cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSamples {
    /// Stop at the first bad sample with an error naming it.
    Fail,
    /// Put a deterministically chosen other sample in its slot (the same one on every run, rank and thread
    /// count, so every rank still yields the same number of batches), report it in [`Batch::bad`], and
    /// fail once more than `max_total` bad samples were met in this loader's life, or when `max_consecutive`
    /// substitutes in a row for one slot are bad too.
    Skip {
        max_total: usize,
        max_consecutive: usize,
    },
    /// Leave the sample out: its batch is shorter by one ([`Batch::len`] counts the samples present, packed
    /// at the front of the buffer), it is reported in [`Batch::bad`], and the loader fails once more than
    /// `max_total` were left out in its life. Evaluation wants this: every image counted at most once, and
    /// no other image counted twice in a bad one's place.
    Omit { max_total: usize },
}

impl Default for BadSamples {
    fn default() -> Self {
        BadSamples::Skip {
            max_total: 1000,
            max_consecutive: 16,
        }
    }
}

/// Where batch buffers come from. The trainer hands in pinned (page-locked) host memory so that the copy
/// to the GPU can be asynchronous; the default is ordinary heap memory.
pub trait Allocator: Send + Sync + fmt::Debug + 'static {
    /// A buffer of bytes. It must be at least 4-byte aligned (f32 output is written through it).
    type Buffer: AsRef<[u8]> + AsMut<[u8]> + Send + 'static;
    /// Allocates a buffer of exactly `len` bytes.
    fn allocate(&self, len: usize) -> Result<Self::Buffer>;
}

/// Heap buffers, 8-byte aligned.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapAllocator;

/// A heap buffer from [`HeapAllocator`].
#[derive(Debug)]
pub struct HeapBuffer {
    words: Box<[u64]>,
    len: usize,
}

impl AsRef<[u8]> for HeapBuffer {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

impl AsMut<[u8]> for HeapBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

impl Allocator for HeapAllocator {
    type Buffer = HeapBuffer;
    fn allocate(&self, len: usize) -> Result<HeapBuffer> {
        Ok(HeapBuffer {
            words: vec![0u64; len.div_ceil(8)].into_boxed_slice(),
            len,
        })
    }
}

/// A sample that could not be used, and what took its place.
#[derive(Debug, Clone)]
pub struct BadSample {
    /// The sample's index in the source.
    pub index: usize,
    /// Its full name (path or `archive › member`) and what went wrong.
    pub error: String,
}

/// Settings of a [`Loader`]; built by [`LoaderBuilder`].
#[derive(Debug, Clone)]
struct Config {
    batch_size: usize,
    threads: usize,
    prefetch: usize,
    seed: u64,
    rank: usize,
    world: usize,
    shuffle: bool,
    drop_last: bool,
    transform: Transform,
    output: Output,
    bad: BadSamples,
    decode: DecodeOptions,
}

/// Builds a [`Loader`]: `Loader::builder(source).batch_size(256).threads(8).build()`.
#[derive(Debug)]
pub struct LoaderBuilder<A: Allocator = HeapAllocator> {
    source: Arc<dyn Source>,
    allocator: A,
    config: Config,
    shuffle: Option<bool>,
}

impl LoaderBuilder<HeapAllocator> {
    fn new(source: Arc<dyn Source>) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoaderBuilder {
            source,
            allocator: HeapAllocator,
            shuffle: None,
            config: Config {
                batch_size: 256,
                threads,
                prefetch: 0,
                seed: 0,
                rank: 0,
                world: 1,
                shuffle: true,
                drop_last: false,
                transform: Transform::Train(TrainAugment::default()),
                output: Output::U8Nhwc,
                bad: BadSamples::default(),
                decode: DecodeOptions::default(),
            },
        }
    }
}

impl<A: Allocator> LoaderBuilder<A> {
    /// Samples per batch (per rank). Default 256.
    pub fn batch_size(&mut self, n: usize) -> &mut Self {
        self.config.batch_size = n;
        self
    }
    /// Worker threads decoding in parallel. Default: the number of cores.
    pub fn threads(&mut self, n: usize) -> &mut Self {
        self.config.threads = n;
        self
    }
    /// Batches prepared ahead of the consumer. Default (0): twice the thread count, at least 2.
    pub fn prefetch(&mut self, n: usize) -> &mut Self {
        self.config.prefetch = n;
        self
    }
    /// The seed of shuffling and augmentation. Default 0.
    pub fn seed(&mut self, seed: u64) -> &mut Self {
        self.config.seed = seed;
        self
    }
    /// This process's share of a distributed run: rank `rank` of `world`. Default 0 of 1.
    pub fn distributed(&mut self, rank: usize, world: usize) -> &mut Self {
        self.config.rank = rank;
        self.config.world = world;
        self
    }
    /// Shuffle each epoch (default: yes for train, no for val).
    pub fn shuffle(&mut self, yes: bool) -> &mut Self {
        self.shuffle = Some(yes);
        self
    }
    /// Drop the last incomplete batch (and, across ranks, the tail that does not divide evenly).
    pub fn drop_last(&mut self, yes: bool) -> &mut Self {
        self.config.drop_last = yes;
        self
    }
    /// Train or val transform. Default: `Transform::Train(TrainAugment::default())`.
    pub fn transform(&mut self, t: Transform) -> &mut Self {
        self.config.transform = t;
        self
    }
    /// Pixel layout of batches. Default: u8 NHWC.
    pub fn output(&mut self, o: Output) -> &mut Self {
        self.config.output = o;
        self
    }
    /// What to do with a sample that cannot be decoded. Default: skip, with caps.
    pub fn bad_samples(&mut self, policy: BadSamples) -> &mut Self {
        self.config.bad = policy;
        self
    }
    /// Decoder settings (e.g. the pixel-count cap).
    pub fn decode_options(&mut self, opts: DecodeOptions) -> &mut Self {
        self.config.decode = opts;
        self
    }
    /// Use another allocator for batch buffers, e.g. pinned host memory.
    pub fn allocator<B: Allocator>(self, allocator: B) -> LoaderBuilder<B> {
        LoaderBuilder {
            source: self.source,
            allocator,
            config: self.config,
            shuffle: self.shuffle,
        }
    }

    /// Checks the settings and starts the worker threads.
    pub fn build(&self) -> Result<Loader<A>>
    where
        A: Clone,
    {
        let mut config = self.config.clone();
        let bad = |what, reason: &str| {
            Err(Error::Config {
                what,
                reason: reason.to_owned(),
            })
        };
        if config.batch_size == 0 {
            return bad("batch size", "must be at least 1");
        }
        if config.threads == 0 {
            return bad("threads", "must be at least 1");
        }
        if let BadSamples::Skip {
            max_consecutive: 0, ..
        } = config.bad
        {
            return bad(
                "bad-sample policy",
                "max_consecutive must be at least 1 (or use BadSamples::Fail)",
            );
        }
        match &config.transform {
            Transform::Train(t) => t.validate()?,
            Transform::Val(v) => v.validate()?,
        }
        config.decode.check()?;
        if self.source.is_empty() {
            return bad("dataset", "the source has no samples");
        }
        config.shuffle = self
            .shuffle
            .unwrap_or(matches!(config.transform, Transform::Train(_)));
        if config.prefetch == 0 {
            config.prefetch = (2 * config.threads).max(2);
        }
        // Built (and rank/world validated) once, so that epochs cannot fail on them later.
        let order = Order::new(self.source.len(), &config)?;
        let (decode, transform) = (config.decode.clone(), config.transform.clone());
        let workers = Workers::new(config.threads, "imgloader", move || {
            Worker::new(decode.clone(), &transform)
        })?;
        let (recycle_tx, recycle_rx) = crossbeam_channel::unbounded();
        tracing::info!(
            source = ?self.source,
            samples = self.source.len(),
            classes = self.source.classes().len(),
            threads = config.threads,
            batch_size = config.batch_size,
            sampler = order.name(),
            rank = config.rank,
            world = config.world,
            per_epoch = order.len(),
            shuffle = config.shuffle,
            drop_last = config.drop_last,
            bad_samples = ?config.bad,
            transform = ?config.transform,
            "loader built"
        );
        Ok(Loader {
            shared: Arc::new(Shared {
                source: self.source.clone(),
                config,
                workers,
                bad_total: AtomicUsize::new(0),
                warned_total: AtomicUsize::new(0),
            }),
            order,
            allocator: self.allocator.clone(),
            recycle_tx,
            recycle_rx,
            buffers: AtomicUsize::new(0),
        })
    }
}

/// How a rank walks the source in an epoch.
#[derive(Debug)]
enum Order {
    /// PyTorch `DistributedSampler`: shuffled, padded so every rank has as many samples.
    Distributed(DistributedSampler),
    /// Every sample exactly once across ranks, unpadded (validation).
    Partition(PartitionSampler),
}

impl Order {
    /// Training (or any shuffled or drop-last walk) pads like PyTorch; an unshuffled val walk partitions.
    fn new(len: usize, config: &Config) -> Result<Order> {
        if config.shuffle || config.drop_last || matches!(config.transform, Transform::Train(_)) {
            DistributedSampler::new(
                len,
                config.rank,
                config.world,
                config.shuffle,
                config.seed,
                config.drop_last,
            )
            .map(Order::Distributed)
        } else {
            PartitionSampler::new(len, config.rank, config.world).map(Order::Partition)
        }
    }

    /// For the "loader built" event.
    fn name(&self) -> &'static str {
        match self {
            Order::Distributed(_) => "distributed",
            Order::Partition(_) => "partition",
        }
    }

    fn len(&self) -> usize {
        match self {
            Order::Distributed(s) => s.num_samples(),
            Order::Partition(s) => s.len(),
        }
    }

    fn indices(&self, epoch: u64) -> Vec<usize> {
        match self {
            Order::Distributed(s) => s.indices(epoch),
            Order::Partition(s) => s.range().collect(),
        }
    }

    fn indices_from(&self, epoch: u64, consumed: usize) -> Result<Vec<usize>> {
        match self {
            Order::Distributed(s) => s.indices_from(epoch, consumed),
            Order::Partition(_) if consumed == 0 => Ok(self.indices(epoch)),
            Order::Partition(_) => Err(Error::Config {
                what: "position in the epoch",
                reason: "an unshuffled evaluation walk (an exact partition) always starts at its beginning"
                    .into(),
            }),
        }
    }
}

/// Per-thread scratch: one decoder and one augmenter, reused for every sample the thread handles.
struct Worker {
    decoder: Decoder,
    augmenter: Augmenter,
    bytes: Vec<u8>,
    hwc: Vec<u8>,
}

impl Worker {
    fn new(opts: DecodeOptions, transform: &Transform) -> Result<Self> {
        let augmenter = match transform {
            Transform::Train(t) => Augmenter::new(*t, ValAugment::default())?,
            Transform::Val(v) => Augmenter::new(TrainAugment::default(), *v)?,
        };
        Ok(Worker {
            decoder: Decoder::new(opts),
            augmenter,
            bytes: Vec::new(),
            hwc: Vec::new(),
        })
    }
}

struct Shared {
    source: Arc<dyn Source>,
    config: Config,
    /// The pool that fills batches, with one [`Worker`] per thread.
    workers: Workers<Worker>,
    bad_total: AtomicUsize,
    warned_total: AtomicUsize,
}

/// A parallel, deterministic batch loader over a [`Source`].
///
/// The same (seed, epoch, rank, world) gives the same batches whatever the thread count.
pub struct Loader<A: Allocator = HeapAllocator> {
    shared: Arc<Shared>,
    order: Order,
    allocator: A,
    recycle_tx: Sender<A::Buffer>,
    recycle_rx: Receiver<A::Buffer>,
    buffers: AtomicUsize,
}

impl<A: Allocator> fmt::Debug for Loader<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("source", &self.shared.source)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Loader<HeapAllocator> {
    /// Starts building a loader over `source`.
    pub fn builder(source: Arc<dyn Source>) -> LoaderBuilder<HeapAllocator> {
        LoaderBuilder::new(source)
    }
}

impl<A: Allocator> Loader<A> {
    /// Samples this rank sees per epoch (after padding or dropping, as the sampler decides).
    pub fn samples_per_epoch(&self) -> usize {
        self.order.len()
    }

    /// Samples per batch (the last batch of an epoch may hold fewer).
    pub fn batch_size(&self) -> usize {
        self.shared.config.batch_size
    }

    /// Batches this rank yields per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.samples_per_epoch();
        let b = self.shared.config.batch_size;
        if self.shared.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The source being read.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.shared.source
    }

    /// Bad samples met so far over the loader's life.
    pub fn bad_samples(&self) -> usize {
        self.shared.bad_total.load(Ordering::Relaxed)
    }

    /// Samples decoded so far, over the loader's life, whose JPEG data was damaged in a way libjpeg works
    /// around with a warning (as PIL does: such a file decodes there too, with grey or smeared blocks). They
    /// are used, not substituted; this says how many there were. Always 0 with zune-jpeg, which refuses
    /// such files (they are then bad samples).
    pub fn warned_samples(&self) -> usize {
        self.shared.warned_total.load(Ordering::Relaxed)
    }

    /// Batch buffers allocated so far. It stays at most `prefetch + 1` while the consumer drops each batch
    /// before asking for the next; buffers are reused across epochs.
    pub fn buffers_allocated(&self) -> usize {
        self.buffers.load(Ordering::Relaxed)
    }

    /// The batches of one epoch, in sampler order. Dropping the iterator stops the work promptly.
    pub fn epoch(&self, epoch: u64) -> Epoch<'_, A> {
        self.batches_of(epoch, self.order.indices(epoch))
    }

    /// The rest of an epoch of which `consumed` samples of the global order (all ranks together) were
    /// read: a run stopped after `s` steps of a global batch `B` (`batch_size × world`) continues with
    /// `epoch_from(epoch, s × B)`. The remaining samples, and each one's augmentation (a function of seed,
    /// epoch and sample index), are those the uninterrupted epoch would have read, for any world size that
    /// divides `consumed`; with the same global batch, the same steps too. Batches are numbered from 0 again.
    /// Errors when `consumed` is not a multiple of the world size or past the epoch's end, and for an exact
    /// evaluation partition (validation always starts at its beginning).
    pub fn epoch_from(&self, epoch: u64, consumed: usize) -> Result<Epoch<'_, A>> {
        Ok(self.batches_of(epoch, self.order.indices_from(epoch, consumed)?))
    }

    fn batches_of(&self, epoch: u64, mut indices: Vec<usize>) -> Epoch<'_, A> {
        let c = &self.shared.config;
        if c.drop_last {
            indices.truncate(indices.len() / c.batch_size * c.batch_size);
        }
        let batches: Vec<Vec<usize>> = indices
            .chunks(c.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        tracing::debug!(
            epoch,
            batches = batches.len(),
            samples = batches.iter().map(Vec::len).sum::<usize>(),
            "epoch started"
        );
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Epoch {
            loader: self,
            epoch,
            batches,
            next_to_schedule: 0,
            next_to_yield: 0,
            in_flight: 0,
            ready: BTreeMap::new(),
            done_tx,
            done_rx,
            cancelled: Arc::new(AtomicBool::new(false)),
            failed: false,
        }
    }

    fn take_buffer(&self, in_flight: usize) -> Result<Option<A::Buffer>> {
        if let Ok(buf) = self.recycle_rx.try_recv() {
            return Ok(Some(buf));
        }
        // Allocate up to the prefetch window plus the one the consumer holds; beyond that only when nothing
        // is in flight (the consumer keeps batches alive), which must not deadlock.
        let limit = self.shared.config.prefetch + 1;
        if self.buffers.load(Ordering::Relaxed) < limit || in_flight == 0 {
            self.buffers.fetch_add(1, Ordering::Relaxed);
            return self.allocator.allocate(self.batch_bytes()).map(Some);
        }
        Ok(None)
    }

    fn batch_bytes(&self) -> usize {
        let (h, w) = self.shared.config.transform.output_size();
        let per_sample = h as usize * w as usize * 3;
        let elem = match self.shared.config.output {
            Output::U8Nhwc => 1,
            Output::F32Nchw { .. } => 4,
        };
        self.shared.config.batch_size * per_sample * elem
    }
}

/// One batch: pixels in the loader's [`Output`] layout, labels, and what was substituted.
pub struct Batch<B: AsRef<[u8]> + AsMut<[u8]> + Send + 'static> {
    /// Position of this batch in the epoch.
    pub index: usize,
    /// Samples in this batch (the last one of an epoch may be short, and so may a batch from which
    /// [`BadSamples::Omit`] left samples out).
    pub len: usize,
    /// Output height and width.
    pub size: (u32, u32),
    /// Class index of each sample.
    pub labels: Vec<u32>,
    /// Source index of each sample (after substitution of bad ones).
    pub indices: Vec<usize>,
    /// Samples that could not be used: replaced ([`BadSamples::Skip`]) or left out ([`BadSamples::Omit`]).
    pub bad: Vec<BadSample>,
    buffer: Option<B>,
    bytes: usize,
    recycle: Sender<B>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Send + 'static> fmt::Debug for Batch<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("index", &self.index)
            .field("len", &self.len)
            .field("size", &self.size)
            .finish()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Send + 'static> Batch<B> {
    /// The filled part of the pixel buffer, as bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer.as_ref().expect("present until drop").as_ref()[..self.bytes]
    }

    /// u8 NHWC pixels (only meaningful with [`Output::U8Nhwc`]).
    pub fn pixels(&self) -> &[u8] {
        self.bytes()
    }

    /// f32 NCHW pixels; `None` unless the loader's output is [`Output::F32Nchw`] and the buffer is aligned.
    pub fn pixels_f32(&self) -> Option<&[f32]> {
        bytemuck::try_cast_slice(self.bytes()).ok()
    }

    /// The whole buffer (e.g. to hand a pinned buffer to an async copy).
    pub fn buffer(&self) -> &B {
        self.buffer.as_ref().expect("present until drop")
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Send + 'static> Drop for Batch<B> {
    fn drop(&mut self) {
        if let Some(buf) = self.buffer.take() {
            // The loader may be gone; then the buffer is simply freed.
            let _ = self.recycle.send(buf);
        }
    }
}

type Done<B> = (usize, Result<Batch<B>>);

/// Iterator over one epoch's batches; see [`Loader::epoch`].
pub struct Epoch<'a, A: Allocator> {
    loader: &'a Loader<A>,
    epoch: u64,
    batches: Vec<Vec<usize>>,
    next_to_schedule: usize,
    next_to_yield: usize,
    in_flight: usize,
    ready: BTreeMap<usize, Result<Batch<A::Buffer>>>,
    done_tx: Sender<Done<A::Buffer>>,
    done_rx: Receiver<Done<A::Buffer>>,
    cancelled: Arc<AtomicBool>,
    failed: bool,
}

impl<A: Allocator> fmt::Debug for Epoch<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Epoch")
            .field("epoch", &self.epoch)
            .field("next", &self.next_to_yield)
            .finish()
    }
}

impl<A: Allocator> Epoch<'_, A> {
    /// Batches left in this epoch.
    pub fn remaining(&self) -> usize {
        self.batches.len() - self.next_to_yield
    }

    fn schedule(&mut self) -> Result<()> {
        let prefetch = self.loader.shared.config.prefetch;
        while self.next_to_schedule < self.batches.len()
            && self.in_flight + self.ready.len() < prefetch
        {
            let Some(mut buffer) = self.loader.take_buffer(self.in_flight)? else {
                break;
            };
            let k = self.next_to_schedule;
            let indices = std::mem::take(&mut self.batches[k]);
            let shared = self.loader.shared.clone();
            let done = self.done_tx.clone();
            let recycle = self.loader.recycle_tx.clone();
            let cancelled = self.cancelled.clone();
            let epoch = self.epoch;
            self.loader.shared.workers.spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    fill_batch(&shared, epoch, &indices, buffer.as_mut(), &cancelled)
                }))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    Err(Error::WorkerPanic {
                        batch: k,
                        message: what,
                    })
                });
                let (h, w) = shared.config.transform.output_size();
                let per_sample_bytes = match shared.config.output {
                    Output::U8Nhwc => h as usize * w as usize * 3,
                    Output::F32Nchw { .. } => h as usize * w as usize * 12,
                };
                let batch = result.map(|filled| Batch {
                    index: k,
                    len: filled.labels.len(),
                    size: (h, w),
                    bytes: filled.labels.len() * per_sample_bytes,
                    labels: filled.labels,
                    indices: filled.indices,
                    bad: filled.bad,
                    buffer: Some(buffer),
                    recycle,
                });
                // The receiver is gone when the epoch was dropped: nothing to deliver to.
                let _ = done.send((k, batch));
            });
            self.next_to_schedule += 1;
            self.in_flight += 1;
        }
        Ok(())
    }
}

impl<A: Allocator> Iterator for Epoch<'_, A> {
    type Item = Result<Batch<A::Buffer>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next_to_yield >= self.batches.len() {
            return None;
        }
        loop {
            if let Err(e) = self.schedule() {
                self.failed = true;
                return Some(Err(e));
            }
            if let Some(result) = self.ready.remove(&self.next_to_yield) {
                self.next_to_yield += 1;
                if result.is_err() {
                    // Later batches may depend on the caps that just failed; stop the epoch here.
                    self.failed = true;
                    self.cancelled.store(true, Ordering::Relaxed);
                }
                return Some(result);
            }
            // Workers always send, even after a panic, so this cannot wait forever while jobs are in flight.
            debug_assert!(self.in_flight > 0);
            let (k, result) = self.done_rx.recv().expect("the epoch holds a sender");
            self.in_flight -= 1;
            self.ready.insert(k, result);
        }
    }
}

impl<A: Allocator> Drop for Epoch<'_, A> {
    fn drop(&mut self) {
        // Jobs in flight see this at their next sample and return at once; their buffers go back to the
        // free list through the batches they send, which are dropped with the channel.
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

struct Filled {
    labels: Vec<u32>,
    indices: Vec<usize>,
    bad: Vec<BadSample>,
}

/// What became of one slot of a batch.
struct Slot {
    /// Label and source index of the sample now in the slot; `None`: the slot is empty (left out).
    used: Option<(u32, usize)>,
    /// The sample that was meant for the slot, when it was bad.
    bad: Option<BadSample>,
}

/// Decodes and augments every sample of one batch into its slot of `buffer`, in parallel.
fn fill_batch(
    shared: &Shared,
    epoch: u64,
    indices: &[usize],
    buffer: &mut [u8],
    cancelled: &AtomicBool,
) -> Result<Filled> {
    let c = &shared.config;
    let (h, w) = c.transform.output_size();
    let slot = match c.output {
        Output::U8Nhwc => h as usize * w as usize * 3,
        Output::F32Nchw { .. } => h as usize * w as usize * 12,
    };
    let outcomes: Vec<Result<Slot>> = buffer
        .par_chunks_mut(slot)
        .zip(indices.par_iter())
        .map(|(out, &index)| {
            if cancelled.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            shared
                .workers
                .with(|worker| fill_slot(shared, worker, epoch, index, out))?
        })
        .collect();
    let mut filled = Filled {
        labels: Vec::with_capacity(indices.len()),
        indices: Vec::with_capacity(indices.len()),
        bad: Vec::new(),
    };
    for (k, outcome) in outcomes.into_iter().enumerate() {
        let Slot { used, bad } = outcome?;
        filled.bad.extend(bad);
        let Some((label, index)) = used else { continue };
        // Left-out samples leave holes: later slots move down so the batch stays packed.
        let to = filled.labels.len();
        if to != k {
            buffer.copy_within(k * slot..(k + 1) * slot, to * slot);
        }
        filled.labels.push(label);
        filled.indices.push(index);
    }
    Ok(filled)
}

/// Salt for the substitute-choice random stream, so it never coincides with the augmentation stream.
const SUBSTITUTE_SALT: u64 = 0x05ab_5717;

/// Fills one slot with sample `index`, or with a deterministic substitute when it is bad.
fn fill_slot(
    shared: &Shared,
    worker: &mut Worker,
    epoch: u64,
    index: usize,
    out: &mut [u8],
) -> Result<Slot> {
    let c = &shared.config;
    let first_error = match process(shared, worker, epoch, index, index, out) {
        Ok(()) => {
            return Ok(Slot {
                used: Some((shared.source.label(index), index)),
                bad: None,
            });
        }
        Err(e) => e,
    };
    let (max_total, max_consecutive) = match c.bad {
        BadSamples::Fail => return Err(first_error),
        BadSamples::Omit { max_total } => (max_total, 0),
        BadSamples::Skip {
            max_total,
            max_consecutive,
        } => (max_total, max_consecutive),
    };
    let bad = BadSample {
        index,
        error: crate::error::chain(&first_error),
    };
    let count_bad = || {
        let total = shared.bad_total.fetch_add(1, Ordering::Relaxed) + 1;
        if total > max_total {
            Err(Error::TooManyBadSamples {
                limit: max_total,
                last: crate::error::chain(&first_error),
            })
        } else {
            Ok(())
        }
    };
    count_bad()?;
    if let BadSamples::Omit { .. } = c.bad {
        tracing::info!(index, sample = %bad.error, "bad sample left out");
        return Ok(Slot {
            used: None,
            bad: Some(bad),
        });
    }
    let mut rng = sample_rng(c.seed ^ SUBSTITUTE_SALT, epoch, index as u64);
    let len = shared.source.len();
    for _ in 1..max_consecutive {
        let substitute = crate::rng::below(&mut rng, len as u64) as usize;
        // The substitute is augmented with the slot's own random stream, so its crop does not depend on
        // which sample failed before it.
        match process(shared, worker, epoch, index, substitute, out) {
            Ok(()) => {
                tracing::info!(index, substitute, sample = %bad.error, "bad sample replaced");
                return Ok(Slot {
                    used: Some((shared.source.label(substitute), substitute)),
                    bad: Some(bad),
                });
            }
            Err(_) => count_bad()?,
        }
    }
    Err(Error::TooManyBadSamples {
        limit: max_consecutive,
        last: crate::error::chain(&first_error),
    })
}

fn count_warnings(shared: &Shared, region: &crate::decode::Region<'_>) {
    if region.warnings > 0 {
        shared.warned_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads, decodes and transforms sample `index` into `out`, with the random stream of slot `slot_index`.
fn process(
    shared: &Shared,
    worker: &mut Worker,
    epoch: u64,
    slot_index: usize,
    index: usize,
    out: &mut [u8],
) -> Result<()> {
    let c = &shared.config;
    let Worker {
        decoder,
        augmenter,
        bytes,
        hwc,
    } = worker;
    let encoded = shared.source.bytes(index, bytes)?;
    let (h, w) = c.transform.output_size();
    let target: &mut [u8] = match c.output {
        Output::U8Nhwc => out,
        Output::F32Nchw { .. } => {
            hwc.resize(h as usize * w as usize * 3, 0);
            hwc
        }
    };
    // Decide what the sample needs from the header alone, then decode only that (libjpeg-turbo) or the
    // whole image (zune, PNG).
    let decode_err = |source| Error::Decode {
        sample: shared.source.name(index),
        source,
    };
    match &c.transform {
        Transform::Train(_) => {
            let mut rng = sample_rng(c.seed, epoch, slot_index as u64);
            let mut params = None;
            let region = decoder
                .decode_region(encoded, |width, height| {
                    let p = augmenter.train_params(width, height, &mut rng);
                    params = Some(p);
                    p.crop
                })
                .map_err(decode_err)?;
            count_warnings(shared, &region);
            let params = params.expect("decode_region calls pick for every decoded image");
            augmenter.train_region(region, params, target)?;
        }
        Transform::Val(_) => {
            let region = decoder
                .decode_region(encoded, |width, height| {
                    augmenter.val_input_box(width, height)
                })
                .map_err(decode_err)?;
            count_warnings(shared, &region);
            augmenter.val_region(region, target)?;
        }
    }
    if let Output::F32Nchw { mean, std } = c.output {
        let out_f32: &mut [f32] = bytemuck::try_cast_slice_mut(out).map_err(|e| Error::Config {
            what: "allocator",
            reason: format!("buffer not f32-aligned: {e}"),
        })?;
        normalize_to_nchw_f32(hwc, h, w, mean, std, out_f32)?;
    }
    Ok(())
}
