//! From a dataset folder to normalised NCHW tensors on the device.
//!
//! The loader fills u8 NHWC batches into buffers from [`TensorAllocator`]: pinned host memory when the
//! run is on a GPU, so the copy to the device can be asynchronous. [`Normalizer`] turns the u8 batch into
//! `(x / 255 - mean) / std` on the device and permutes it to NCHW; the permuted view of an NHWC tensor is
//! exactly PyTorch's `channels_last` layout, so no copy is made unless contiguous NCHW is asked for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imgloader::{Allocator, IMAGENET_MEAN, IMAGENET_STD, Source};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError};

/// Where the splits of a dataset are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPaths {
    /// The training split (`None` when the run only evaluates).
    pub train: Option<PathBuf>,
    /// The validation split.
    pub val: PathBuf,
}

/// Finds the splits under `data`: `train.tar` and `val.tar`, or `train/` and `val/` folders (class
/// folders or webdataset shards). A tar wins over a folder of the same split (typically its extracted
/// copy): it is read in place through its index, without a file open per image. `need_train` is false
/// for evaluate-only runs.
pub fn locate(data: &Path, need_train: bool) -> Result<DataPaths> {
    let err = |reason: String| TrainError::Data {
        path: data.to_owned(),
        reason,
    };
    match std::fs::metadata(data) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(err(
                "is a file; DATA is a folder holding train/ and val/ (or train.tar and val.tar)"
                    .into(),
            ));
        }
        Err(e) => return Err(err(format!("cannot read the dataset folder: {e}"))),
    }
    let find = |split: &str| -> Option<PathBuf> {
        let tar = data.join(format!("{split}.tar"));
        if tar.is_file() {
            return Some(tar);
        }
        let dir = data.join(split);
        dir.is_dir().then_some(dir)
    };
    let missing = |split: &str| {
        err(format!(
            "no {split} split: looked for {split}.tar and {split}/ (class folders or webdataset shards)"
        ))
    };
    let train = if need_train {
        Some(find("train").ok_or_else(|| missing("train"))?)
    } else {
        None
    };
    let val = find("val").ok_or_else(|| missing("val"))?;
    Ok(DataPaths { train, val })
}

/// `n` samples of a source spread evenly over it (sample `i * len / n`), keeping its classes, so that a
/// quick run over a class-ordered dataset still sees every class when `n` is at least their number.
#[derive(Debug)]
pub struct Subset {
    inner: Arc<dyn Source>,
    n: usize,
}

impl Subset {
    /// The first `n` of the evenly spaced samples; the whole source when `n >= inner.len()`.
    pub fn spread(inner: Arc<dyn Source>, n: usize) -> Arc<dyn Source> {
        if n >= inner.len() {
            return inner;
        }
        Arc::new(Subset { inner, n })
    }

    fn map(&self, index: usize) -> usize {
        assert!(
            index < self.n,
            "index {index} out of range (len {})",
            self.n
        );
        // u128: len * n may overflow usize on 32-bit targets for large datasets.
        (index as u128 * self.inner.len() as u128 / self.n as u128) as usize
    }
}

impl Source for Subset {
    fn len(&self) -> usize {
        self.n
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> u32 {
        self.inner.label(self.map(index))
    }
    fn bytes<'a>(&'a self, index: usize, scratch: &'a mut Vec<u8>) -> imgloader::Result<&'a [u8]> {
        self.inner.bytes(self.map(index), scratch)
    }
    fn name(&self, index: usize) -> String {
        self.inner.name(self.map(index))
    }
}

/// Batch buffers that are libtorch tensors: pinned (page-locked) host memory for a CUDA run, so that the
/// host-to-device copy is asynchronous, or ordinary CPU tensors otherwise.
#[derive(Debug, Clone, Copy)]
pub struct TensorAllocator {
    /// The CUDA device the pinned memory serves; `None`: plain CPU memory.
    pin_for: Option<Device>,
}

impl TensorAllocator {
    /// Buffers for a run on `device`.
    pub fn for_device(device: Device) -> Self {
        TensorAllocator {
            pin_for: matches!(device, Device::Cuda(_)).then_some(device),
        }
    }
}

/// A batch buffer: a 1-D u8 CPU tensor of `len` bytes that nobody else holds.
#[derive(Debug)]
pub struct TensorBuffer {
    tensor: Tensor,
    len: usize,
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
}

impl AsRef<[u8]> for TensorBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `tensor` is a contiguous 1-D u8 CPU tensor of exactly `len` elements that this buffer
        // owns (allocated in `allocate`, never resized or shared with another buffer), so its data pointer
        // is valid for `len` bytes for as long as `self` lives. Nothing writes to it while `&self` is
        // borrowed: the loader writes only through `as_mut` (which needs `&mut self`), and tensor views
        // made by `view_nhwc` are only read from, and dropped before the batch hands the buffer back.
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
        let fail = |e: tch::TchError| imgloader::Error::Config {
            what: "allocator",
            reason: format!("cannot allocate a {len}-byte batch buffer: {e}"),
        };
        // libtorch's CPU allocator aligns to 64 bytes and CUDA's host allocator to pages, above the
        // loader's 4-byte requirement. `zeros`, not `empty`: no read of uninitialised bytes through `as_ref`.
        let tensor =
            Tensor::f_zeros([len.max(1) as i64], (Kind::Uint8, Device::Cpu)).map_err(fail)?;
        let tensor = match self.pin_for {
            Some(device) => tensor.f_pin_memory(device).map_err(fail)?,
            None => tensor,
        };
        debug_assert!(tensor.is_contiguous());
        Ok(TensorBuffer { tensor, len })
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

    /// Copies `nhwc` (u8 `[n, h, w, 3]`, CPU, pinned for a CUDA run) to the device, without waiting for
    /// the copy to finish, and normalises it there. The caller keeps `nhwc`'s memory unchanged until the
    /// device has done the copy.
    pub fn to_device(&self, nhwc: &Tensor) -> Result<Tensor> {
        let what = || "normalising a batch".to_owned();
        let on_device = nhwc
            .f_to_device_(self.device, Kind::Uint8, true, false)
            .during(what)?;
        self.normalize(&on_device)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 samples, label = index / 5 (two classes in order, like a class-folder source).
    #[derive(Debug)]
    struct Ordered(Vec<String>);

    impl Source for Ordered {
        fn len(&self) -> usize {
            10
        }
        fn classes(&self) -> &[String] {
            &self.0
        }
        fn label(&self, index: usize) -> u32 {
            assert!(index < 10);
            (index / 5) as u32
        }
        fn bytes<'a>(
            &'a self,
            index: usize,
            scratch: &'a mut Vec<u8>,
        ) -> imgloader::Result<&'a [u8]> {
            scratch.clear();
            scratch.push(index as u8);
            Ok(scratch)
        }
        fn name(&self, index: usize) -> String {
            format!("sample {index}")
        }
    }

    #[test]
    fn subset_spreads_over_every_class() {
        let src: Arc<dyn Source> = Arc::new(Ordered(vec!["a".into(), "b".into()]));
        let sub = Subset::spread(src.clone(), 4);
        assert_eq!(sub.len(), 4);
        assert_eq!(sub.classes(), src.classes());
        let names: Vec<String> = (0..4).map(|i| sub.name(i)).collect();
        assert_eq!(names, ["sample 0", "sample 2", "sample 5", "sample 7"]);
        assert_eq!(
            (0..4).map(|i| sub.label(i)).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
        let mut scratch = Vec::new();
        assert_eq!(sub.bytes(3, &mut scratch).unwrap(), &[7]);
        // A limit at or above the size is the source itself.
        assert!(Arc::ptr_eq(&Subset::spread(src.clone(), 10), &src));
    }

    #[test]
    fn locate_prefers_tars_and_names_what_it_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("train")).unwrap();
        std::fs::create_dir(d.join("val")).unwrap();
        let p = locate(d, true).unwrap();
        assert_eq!(p.train.as_deref(), Some(d.join("train").as_path()));
        std::fs::write(d.join("train.tar"), b"").unwrap();
        let p = locate(d, true).unwrap();
        assert_eq!(p.train.as_deref(), Some(d.join("train.tar").as_path()));
        assert_eq!(p.val, d.join("val"));
        let p = locate(d, false).unwrap();
        assert_eq!(p.train, None);
        std::fs::remove_dir(d.join("val")).unwrap();
        let e = locate(d, false).unwrap_err().to_string();
        assert!(
            e.contains("no val split: looked for val.tar and val/"),
            "{e}"
        );
    }
}
