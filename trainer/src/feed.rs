//! From loader batches to normalised NCHW tensors and labels on the device — and the one argument for why
//! handing the loader's memory to libtorch is sound.
//!
//! The loader fills u8 NHWC batches into buffers from [`TensorAllocator`]: libtorch tensors, in pinned
//! (page-locked) host memory when the run is on a GPU, so the copy to the device is asynchronous. Each
//! buffer has room after the pixels for the batch's labels as int64, so labels travel through the same
//! pinned memory (no per-batch pinning). [`Normalizer`] turns the u8 batch into `(x / 255 - mean) / std`
//! on the device and permutes it to NCHW; the permuted view of an NHWC tensor is exactly PyTorch's
//! `channels_last` layout, so no copy is made unless contiguous NCHW is asked for.
//!
//! # Safety argument
//! A [`TensorBuffer`] is a 1-D u8 CPU tensor that only its buffer holds. The loader writes into it through
//! `as_mut` (needs `&mut`) while it fills a batch; then the [`imgloader::Batch`] owns it, and only the
//! trainer sees it, through `&` (tensor views of the pixels, and [`TensorBuffer::labels`], which writes the
//! label area — bytes that no `as_ref`/`as_mut` slice covers). The views and the device copies made from
//! them must be finished before the batch goes back to the loader: [`Hold`] keeps the batch until an event
//! recorded after the copies has completed, or the trainer has read a result computed from the batch,
//! and an early drop (an error path) waits for the copies first.
//!
//! On CUDA the copies go on a separate stream from the pool, which the compute stream waits for on the
//! device (the host does not wait), so the next batch's copy overlaps the current step's kernels.

use std::sync::Arc;

use imgloader::{
    Allocator, BadSamples, Batch, DecodeOptions, IMAGENET_MEAN, IMAGENET_STD, Loader, Source,
    Transform,
};
use tch::{Device, Kind, Tensor};

use crate::bridge::{CudaEvent, CudaStream, record_stream};
use crate::error::{Result, TorchContext, TrainError};

/// Batch buffers that are libtorch tensors: pinned host memory for a CUDA run, ordinary CPU memory
/// otherwise, each with room for `label_capacity` int64 labels after the pixels.
#[derive(Debug, Clone, Copy)]
pub struct TensorAllocator {
    /// The CUDA device the pinned memory serves; `None`: plain CPU memory.
    pin_for: Option<Device>,
    /// Labels a buffer can hold: the batch size.
    label_capacity: usize,
}

impl TensorAllocator {
    /// Buffers for a run on `device` with batches of up to `batch_size` samples.
    pub fn for_device(device: Device, batch_size: usize) -> Self {
        TensorAllocator {
            pin_for: matches!(device, Device::Cuda(_)).then_some(device),
            label_capacity: batch_size,
        }
    }
}

/// A batch buffer: the first `len` bytes are the loader's, then (8-byte aligned) the label area.
#[derive(Debug)]
pub struct TensorBuffer {
    tensor: Tensor,
    len: usize,
    labels_at: usize,
    label_capacity: usize,
}

impl TensorBuffer {
    /// The first `bytes` bytes as a `[n, h, w, 3]` u8 tensor sharing this buffer's memory.
    ///
    /// The view must be dropped (and any asynchronous copy from it finished) before the batch owning this
    /// buffer is dropped, since the loader then refills the memory.
    pub fn view_nhwc(&self, n: usize, h: u32, w: u32) -> Result<Tensor> {
        let bytes = n * h as usize * w as usize * 3;
        debug_assert!(bytes <= self.len);
        self.tensor
            .f_narrow(0, 0, bytes as i64)
            .and_then(|t| t.f_view([n as i64, i64::from(h), i64::from(w), 3]))
            .during(|| "viewing a batch buffer".into())
    }

    /// Writes `labels` as int64 into the label area and returns them as an int64 tensor sharing that
    /// memory (pinned for a CUDA run, so their copy to the device does not wait). Same rule as
    /// [`view_nhwc`](Self::view_nhwc): done with before the batch is dropped.
    pub fn labels(&self, labels: &[u32]) -> Result<Tensor> {
        assert!(
            labels.len() <= self.label_capacity,
            "{} labels for a buffer made for {}",
            labels.len(),
            self.label_capacity
        );
        // SAFETY: the label area is `label_capacity * 8` bytes at `labels_at` (a multiple of 8) inside the
        // tensor's `labels_at + 8 * label_capacity` bytes (see `allocate`), and the data pointer is 64-byte
        // aligned, so every `i64` written is in bounds and aligned. No Rust reference covers these bytes
        // (`as_ref`/`as_mut` stop at `len <= labels_at`); only the holder of the batch calls this, and any
        // earlier device copy from the area finished before the buffer went back to the loader (module
        // docs).
        unsafe {
            let area = (self.tensor.data_ptr() as *mut u8).add(self.labels_at) as *mut i64;
            for (k, &l) in labels.iter().enumerate() {
                area.add(k).write(i64::from(l));
            }
        }
        self.tensor
            .f_narrow(0, self.labels_at as i64, 8 * labels.len() as i64)
            .and_then(|t| t.f_view_dtype(Kind::Int64))
            .during(|| "viewing a batch's labels".into())
    }
}

impl AsRef<[u8]> for TensorBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `tensor` is a contiguous 1-D u8 CPU tensor of at least `len` elements that this buffer
        // owns (allocated in `allocate`, never resized or shared with another buffer), so its data pointer
        // is valid for `len` bytes for as long as `self` lives. Nothing writes to these bytes while `&self`
        // is borrowed: the loader writes only through `as_mut` (which needs `&mut self`), tensor views made
        // by `view_nhwc` are only read from, and `labels` writes only past `len`.
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.len) }
    }
}

impl AsMut<[u8]> for TensorBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`, the pointer is valid for `len` bytes while `self` lives. `&mut self`
        // means the loader holds the buffer exclusively: the trainer's views of a batch and its copies to
        // the device are finished before the batch (and with it this buffer) goes back to the loader.
        unsafe { std::slice::from_raw_parts_mut(self.tensor.data_ptr() as *mut u8, self.len) }
    }
}

impl Allocator for TensorAllocator {
    type Buffer = TensorBuffer;

    fn allocate(&self, len: usize) -> imgloader::Result<TensorBuffer> {
        let labels_at = len.next_multiple_of(8);
        let total = labels_at + 8 * self.label_capacity;
        let fail = |e: tch::TchError| imgloader::Error::Config {
            what: "allocator",
            reason: format!("cannot allocate a {total}-byte batch buffer: {e}"),
        };
        // libtorch's CPU allocator aligns to 64 bytes and CUDA's host allocator to pages, above the
        // loader's 4-byte requirement and the labels' 8. `zeros`, not `empty`: no read of uninitialised
        // bytes through `as_ref`.
        let tensor =
            Tensor::f_zeros([total.max(1) as i64], (Kind::Uint8, Device::Cpu)).map_err(fail)?;
        let tensor = match self.pin_for {
            Some(device) => tensor.f_pin_memory(device).map_err(fail)?,
            None => tensor,
        };
        debug_assert!(tensor.is_contiguous());
        debug_assert_eq!(tensor.data_ptr() as usize % 8, 0);
        Ok(TensorBuffer {
            tensor,
            len,
            labels_at,
            label_capacity: self.label_capacity,
        })
    }
}

/// Turns u8 NHWC batches into normalised float NCHW tensors on the device.
#[derive(Debug)]
pub struct Normalizer {
    device: Device,
    channels_last: bool,
    /// `255 * mean`, shape `[3]`, on the device.
    offset: Tensor,
    /// `1 / (255 * std)`, shape `[3]`, on the device.
    scale: Tensor,
}

impl Normalizer {
    /// A normaliser with torchvision's ImageNet mean and std. `channels_last` keeps the NHWC memory
    /// layout under the NCHW shape (what cuDNN is fastest with); otherwise the result is contiguous NCHW.
    pub fn new(device: Device, channels_last: bool) -> Result<Self> {
        let what = || "creating the normalisation constants".to_owned();
        let offset: Vec<f32> = IMAGENET_MEAN.iter().map(|m| m * 255.0).collect();
        let scale: Vec<f32> = IMAGENET_STD.iter().map(|s| 1.0 / (s * 255.0)).collect();
        Ok(Normalizer {
            device,
            channels_last,
            offset: Tensor::f_from_slice(&offset)
                .and_then(|t| t.f_to_device(device))
                .during(what)?,
            scale: Tensor::f_from_slice(&scale)
                .and_then(|t| t.f_to_device(device))
                .during(what)?,
        })
    }

    /// Copies `host` (CPU, pinned for a CUDA run) to the device without waiting for the copy to finish.
    /// The caller keeps `host`'s memory unchanged until the device has done the copy.
    pub fn upload(&self, host: &Tensor) -> Result<Tensor> {
        host.f_to_device_(self.device, host.kind(), true, false)
            .during(|| "copying a batch to the device".into())
    }

    /// Normalises a u8 NHWC tensor already on the device.
    pub fn normalize(&self, nhwc: &Tensor) -> Result<Tensor> {
        let what = || "normalising a batch".to_owned();
        let x = nhwc
            .f_to_kind(Kind::Float)
            .and_then(|x| x.f_sub(&self.offset))
            .and_then(|x| x.f_mul(&self.scale))
            .and_then(|x| x.f_permute([0, 3, 1, 2]))
            .during(what)?;
        if self.channels_last {
            Ok(x)
        } else {
            x.f_contiguous().during(what)
        }
    }
}

/// A loader batch whose memory may still be read by device copies: dropping it before they are done would
/// let the loader refill the memory under them, so an early drop (an error path) waits for the copies.
#[derive(Debug)]
pub struct Hold {
    batch: Option<Batch<TensorBuffer>>,
    /// CUDA: recorded on the copy stream after the batch's copies were queued.
    copied: Option<CudaEvent>,
    /// CUDA: the stream the copies were queued on (waited for when the event could not be recorded).
    copy_stream: Option<CudaStream>,
}

impl Hold {
    fn new(batch: Batch<TensorBuffer>, copy_stream: Option<CudaStream>) -> Hold {
        Hold {
            batch: Some(batch),
            copied: None,
            copy_stream,
        }
    }

    /// Gives the batch back to the loader if its copies are known to be done (always on the CPU).
    pub fn try_release(&mut self) -> Result<()> {
        let done = match (&self.copied, &self.copy_stream) {
            (Some(e), _) => e.query()?,
            (None, Some(_)) => false,
            (None, None) => true,
        };
        if done {
            self.batch = None;
        }
        Ok(())
    }

    /// Releases the batch, knowing that the device is past its copies (a result computed from them was
    /// read).
    pub fn release_after_sync(mut self) {
        self.batch = None;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.batch.is_none() {
            return;
        }
        // Errors cannot be returned from here; a failed wait on a broken device is followed by the
        // process's error exit, before the loader refills anything.
        match (&self.copied, &self.copy_stream) {
            (Some(e), _) => drop(e.synchronize()),
            (None, Some(s)) => drop(s.synchronize()),
            (None, None) => {}
        }
    }
}

/// A batch on the device.
#[derive(Debug)]
pub struct DeviceBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub len: usize,
    /// Each sample's index in the split (none for `--dummy` batches).
    pub indices: Vec<usize>,
    hold: Option<Hold>,
}

impl DeviceBatch {
    /// Drops the tensors (which may share the buffer's memory: labels on the CPU) and keeps what holds the
    /// batch's memory until its copies are done.
    pub fn into_hold(self) -> Option<Hold> {
        let DeviceBatch {
            images,
            labels,
            hold,
            ..
        } = self;
        drop((images, labels));
        hold
    }

    /// Gives the batch's memory back to the loader, once the caller has waited for the device to be past
    /// this batch's copies (e.g. by reading a result computed from it).
    pub fn release_after_sync(self) {
        if let Some(hold) = self.into_hold() {
            hold.release_after_sync();
        }
    }
}

/// Where one split's batches come from.
#[derive(Debug)]
enum Origin {
    Loader(Loader<TensorAllocator>),
    /// `--dummy`: random pixels and labels made on the device.
    Dummy {
        samples: usize,
        batch: usize,
        size: u32,
        classes: usize,
    },
}

/// One split's batches, on the device.
#[derive(Debug)]
pub struct Feed {
    split: &'static str,
    origin: Origin,
    normalizer: Normalizer,
    device: Device,
    /// CUDA: the stream host-to-device copies go on, so that they overlap the compute stream's work.
    copy_stream: Option<CudaStream>,
    /// How the batches are made, for `--verbose`.
    settings: String,
}

/// How a feed reads its split.
#[derive(Debug)]
pub struct FeedOptions {
    pub batch_size: usize,
    pub workers: usize,
    pub transform: Transform,
    pub decode: DecodeOptions,
    pub seed: u64,
    pub bad_samples: BadSamples,
    /// This process's share of a distributed run (rank `rank` of `world`): PyTorch's
    /// DistributedSampler for training, the exact partition for validation.
    pub rank: usize,
    pub world: usize,
}

impl Feed {
    /// Batches of `source` through the loader.
    pub fn loader(
        split: &'static str,
        path: &std::path::Path,
        source: Arc<dyn Source>,
        opts: FeedOptions,
        normalizer: Normalizer,
    ) -> Result<Feed> {
        let device = normalizer.device;
        let settings = format!(
            "{} samples from {}, batches of {}, {} thread(s), rank {} of {}, seed {}, bad samples {:?}, \
             {:?}, {:?}",
            source.len(),
            path.display(),
            opts.batch_size,
            opts.workers,
            opts.rank,
            opts.world,
            opts.seed,
            opts.bad_samples,
            opts.transform,
            opts.decode
        );
        let mut builder = Loader::builder(source);
        builder
            .batch_size(opts.batch_size)
            .threads(opts.workers)
            .transform(opts.transform)
            .decode_options(opts.decode)
            .bad_samples(opts.bad_samples)
            .distributed(opts.rank, opts.world)
            .seed(opts.seed);
        let loader = builder
            .allocator(TensorAllocator::for_device(device, opts.batch_size))
            .build()
            .map_err(|source| TrainError::Loader {
                split,
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        let copy_stream = match device {
            Device::Cuda(i) => Some(CudaStream::from_pool(Some(i), false)?),
            _ => None,
        };
        Ok(Feed {
            split,
            origin: Origin::Loader(loader),
            normalizer,
            device,
            copy_stream,
            settings,
        })
    }

    /// `--dummy` batches: `samples` random images of `size` px and random labels below `classes`.
    pub fn dummy(
        split: &'static str,
        samples: usize,
        batch: usize,
        size: u32,
        classes: usize,
        normalizer: Normalizer,
    ) -> Feed {
        Feed {
            split,
            device: normalizer.device,
            copy_stream: None,
            settings: format!(
                "--dummy: {samples} random images of {size} px in batches of {batch}, {classes} classes"
            ),
            origin: Origin::Dummy {
                samples,
                batch,
                size,
                classes,
            },
            normalizer,
        }
    }

    /// Batches in an epoch.
    pub fn batches_per_epoch(&self) -> usize {
        match &self.origin {
            Origin::Loader(l) => l.batches_per_epoch(),
            Origin::Dummy { samples, batch, .. } => samples.div_ceil(*batch),
        }
    }

    /// Samples per batch (the last batch of an epoch may hold fewer).
    pub fn batch_size(&self) -> usize {
        match &self.origin {
            Origin::Loader(l) => l.batch_size(),
            Origin::Dummy { batch, .. } => *batch,
        }
    }

    /// Samples in an epoch (before any bad one is left out).
    pub fn samples_per_epoch(&self) -> usize {
        match &self.origin {
            Origin::Loader(l) => l.samples_per_epoch(),
            Origin::Dummy { samples, .. } => *samples,
        }
    }

    /// The split's name and how its batches are made (source, batch size, threads, share, policies).
    pub fn describe(&self) -> String {
        format!("{} loader: {}", self.split, self.settings)
    }

    /// The split the batches come from (none for `--dummy`).
    pub fn source(&self) -> Option<&Arc<dyn Source>> {
        match &self.origin {
            Origin::Loader(l) => Some(l.source()),
            Origin::Dummy { .. } => None,
        }
    }

    /// Samples whose JPEG decoded with libjpeg warnings, over the loader's life.
    pub fn warned_samples(&self) -> usize {
        match &self.origin {
            Origin::Loader(l) => l.warned_samples(),
            Origin::Dummy { .. } => 0,
        }
    }

    /// Starts epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> FeedEpoch<'_> {
        self.epoch_from(epoch, 0, 1)
            .expect("every feed starts an epoch at its beginning")
    }

    /// The rest of `epoch` once `consumed` samples of its global order were read by `world` ranks (see
    /// [`imgloader::Loader::epoch_from`]).
    pub fn epoch_from(&self, epoch: u64, consumed: usize, world: usize) -> Result<FeedEpoch<'_>> {
        let (iter, k) = match &self.origin {
            Origin::Loader(l) => (
                Some(
                    l.epoch_from(epoch, consumed)
                        .map_err(|source| TrainError::Batch {
                            split: self.split,
                            epoch,
                            source: Box::new(source),
                        })?,
                ),
                0,
            ),
            // This rank's next sample is its (consumed / world)-th.
            Origin::Dummy { batch, .. } => (None, consumed / world.max(1) / batch),
        };
        Ok(FeedEpoch {
            feed: self,
            iter,
            epoch,
            k,
            bad: Vec::new(),
        })
    }
}

/// One epoch of a [`Feed`].
#[derive(Debug)]
pub struct FeedEpoch<'a> {
    feed: &'a Feed,
    iter: Option<imgloader::Epoch<'a, TensorAllocator>>,
    epoch: u64,
    k: usize,
    /// Every sample the loader could not use so far this epoch (name and error).
    pub bad: Vec<String>,
}

impl FeedEpoch<'_> {
    /// The next batch on the device; `None` at the end of the epoch. A batch from which every sample was
    /// left out is skipped (its samples are in [`bad`](Self::bad)).
    pub fn next_batch(&mut self) -> Result<Option<DeviceBatch>> {
        let feed = self.feed;
        let k = self.k;
        self.k += 1;
        match &feed.origin {
            Origin::Loader(_) => loop {
                let Some(next) = self.iter.as_mut().and_then(Iterator::next) else {
                    return Ok(None);
                };
                let batch = next.map_err(|source| TrainError::Batch {
                    split: feed.split,
                    epoch: self.epoch,
                    source: Box::new(source),
                })?;
                self.bad.extend(batch.bad.iter().map(|b| b.error.clone()));
                if batch.len == 0 {
                    continue;
                }
                return self.upload(batch).map(Some);
            },
            Origin::Dummy {
                samples,
                batch,
                size,
                classes,
            } => {
                let start = k * batch;
                if start >= *samples {
                    return Ok(None);
                }
                let n = (*batch).min(samples - start) as i64;
                let s = i64::from(*size);
                let what = || "making a --dummy batch".to_owned();
                let pixels = Tensor::f_randint(256, [n, s, s, 3], (Kind::Uint8, feed.device))
                    .during(what)?;
                let labels = Tensor::f_randint(*classes as i64, [n], (Kind::Int64, feed.device))
                    .during(what)?;
                Ok(Some(DeviceBatch {
                    images: feed.normalizer.normalize(&pixels)?,
                    labels,
                    len: n as usize,
                    indices: Vec::new(),
                    hold: None,
                }))
            }
        }
    }

    /// Queues the batch's copies to the device — on the CUDA copy stream, which the compute stream then
    /// waits for without the host waiting — and its normalisation on the compute stream.
    fn upload(&self, batch: Batch<TensorBuffer>) -> Result<DeviceBatch> {
        let feed = self.feed;
        let (h, w) = batch.size;
        let len = batch.len;
        let indices = batch.indices.clone();
        // From here on an early return waits for the copies before the batch goes back.
        let mut hold = Hold::new(batch, feed.copy_stream);
        let batch = hold.batch.as_ref().expect("just set");
        let buffer = batch.buffer();
        let nhwc = buffer.view_nhwc(len, h, w)?;
        let labels = buffer.labels(&batch.labels)?;
        let Some(copy) = feed.copy_stream else {
            let images = feed.normalizer.normalize(&feed.normalizer.upload(&nhwc)?)?;
            let labels = feed.normalizer.upload(&labels)?;
            return Ok(DeviceBatch {
                images,
                labels,
                len,
                indices,
                hold: Some(hold),
            });
        };
        let compute = CudaStream::current(Some(copy.device_index()))?;
        let (pixels, labels) = {
            let _on_copy = copy.make_current()?;
            (
                feed.normalizer.upload(&nhwc)?,
                feed.normalizer.upload(&labels)?,
            )
        };
        let mut copied = CudaEvent::new()?;
        copied.record(&copy)?;
        hold.copied = Some(copied);
        compute.wait_stream(&copy)?;
        // Allocated while the copy stream was current: tell the caching allocator that the compute stream
        // uses them too, so their memory is not reused before its work is done.
        record_stream(&pixels, &compute)?;
        record_stream(&labels, &compute)?;
        Ok(DeviceBatch {
            images: feed.normalizer.normalize(&pixels)?,
            labels,
            len,
            indices,
            hold: Some(hold),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_live_after_the_pixels_and_leave_them_alone() {
        let alloc = TensorAllocator::for_device(Device::Cpu, 4);
        // 13 pixel bytes: the label area starts at the next multiple of 8.
        let mut buf = alloc.allocate(13).unwrap();
        buf.as_mut().copy_from_slice(&[7u8; 13]);
        let labels = buf.labels(&[3, 0, 999, u32::MAX]).unwrap();
        assert_eq!(labels.kind(), Kind::Int64);
        assert_eq!(
            Vec::<i64>::try_from(&labels).unwrap(),
            [3, 0, 999, i64::from(u32::MAX)]
        );
        assert_eq!(buf.as_ref(), &[7u8; 13]);
        // A shorter batch reuses the front of the area.
        let labels = buf.labels(&[5]).unwrap();
        assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [5]);
        let view = buf.view_nhwc(1, 1, 4).unwrap();
        assert_eq!(view.size(), [1, 1, 4, 3]);
    }

    #[test]
    #[should_panic(expected = "5 labels for a buffer made for 4")]
    fn more_labels_than_the_batch_size_is_a_bug() {
        let buf = TensorAllocator::for_device(Device::Cpu, 4)
            .allocate(12)
            .unwrap();
        let _ = buf.labels(&[0; 5]);
    }
}
