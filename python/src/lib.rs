//! `imgloader._imgloader`: the native half of the Python package `imgloader` (python/imgloader/ is the
//! other half: torch conversion, `torch.distributed` defaults, pinning through torch).
//!
//! A Python epoch is a thread of ours walking [`imgloader::Loader::epoch_from`] and handing each batch over
//! a rendezvous channel; `__next__` waits on it with the GIL released, a short timeout at a time, so that
//! Ctrl-C is noticed between waits. A batch is exported as two DLPack views of one buffer ([`alloc`]);
//! the buffer goes back to the loader when both views and every tensor made from them are gone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use imgloader::decode::JpegBackend;
use imgloader::{
    BadSamples, Batch, DecodeOptions, Loader, OpenOptions, TrainAugment, Transform, ValAugment,
};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

mod alloc;
mod dlpack;

use alloc::{Pinner, PyAllocator, PyBuffer};
use dlpack::{DEVICE_CPU, Dtype, View};

pyo3::create_exception!(
    _imgloader,
    LoaderError,
    PyRuntimeError,
    "A dataset could not be read or a batch not made; the message names the file or member at fault."
);

/// How long `__next__` waits with the GIL released before it looks for a signal (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// The loader's error as a Python exception: a bad argument is a `ValueError`, a missing file a
/// `FileNotFoundError`, anything else a `LoaderError`; the message is the whole cause chain.
fn to_py(e: imgloader::Error) -> PyErr {
    let message = imgloader::error::chain(&e);
    match &e {
        imgloader::Error::Config { .. } | imgloader::Error::Shape { .. } => {
            PyValueError::new_err(message)
        }
        imgloader::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        _ => LoaderError::new_err(message),
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A dataset: class folders, a tar of class folders (read in place through an index), webdataset shards,
/// or a flat folder or tar of images with a labels file.
#[pyclass(name = "Source", module = "imgloader._imgloader", frozen)]
struct PySource {
    inner: Arc<dyn imgloader::Source>,
    path: PathBuf,
}

#[pymethods]
impl PySource {
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Class names, in label order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.classes().to_vec()
    }

    /// The label of sample `index`.
    fn label(&self, index: usize) -> PyResult<u32> {
        self.check(index).map(|()| self.inner.label(index))
    }

    /// The full name of sample `index`: a path, or `archive › member`.
    fn name(&self, index: usize) -> PyResult<String> {
        self.check(index).map(|()| self.inner.name(index))
    }

    fn __repr__(&self) -> String {
        format!(
            "Source({:?}, {} samples, {} classes)",
            self.path,
            self.inner.len(),
            self.inner.classes().len()
        )
    }
}

impl PySource {
    fn check(&self, index: usize) -> PyResult<()> {
        if index < self.inner.len() {
            Ok(())
        } else {
            Err(pyo3::exceptions::PyIndexError::new_err(format!(
                "sample {index} of a source of {}",
                self.inner.len()
            )))
        }
    }
}

/// Opens a dataset (see `Source`); `labels` (and `synsets`) for a flat folder or tar of images such as
/// ImageNet's val.
#[pyfunction]
#[pyo3(signature = (path, labels = None, synsets = None))]
fn open(
    py: Python<'_>,
    path: PathBuf,
    labels: Option<PathBuf>,
    synsets: Option<PathBuf>,
) -> PyResult<PySource> {
    let opts = OpenOptions {
        labels,
        synsets,
        ..OpenOptions::default()
    };
    // Indexing a large tar takes a while: let other Python threads run.
    let inner = py.detach(|| imgloader::open(&path, &opts)).map_err(to_py)?;
    Ok(PySource { inner, path })
}

/// What this build has: the JPEG decoder, the version.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let turbo = cfg!(feature = "turbojpeg");
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("jpeg", if turbo { "libjpeg-turbo" } else { "zune-jpeg" })?;
    d.set_item("turbojpeg", turbo)?;
    d.set_item("abi3", "cp39")?;
    Ok(d)
}

/// The native loader; `imgloader.Loader` wraps it.
#[pyclass(name = "Loader", module = "imgloader._imgloader", frozen)]
struct PyLoader {
    inner: Arc<Loader<PyAllocator>>,
}

fn parse_transform(name: &str, crop_size: u32, val_resize: u32) -> PyResult<Transform> {
    match name {
        "train" => Ok(Transform::Train(TrainAugment {
            size: (crop_size, crop_size),
            ..TrainAugment::default()
        })),
        "val" => Ok(Transform::Val(ValAugment {
            resize: val_resize,
            crop: crop_size,
        })),
        other => Err(PyValueError::new_err(format!(
            "transform={other:?}: expected \"train\" (RandomResizedCrop + flip) or \"val\" (resize + centre crop)"
        ))),
    }
}

fn parse_bad(name: &str) -> PyResult<BadSamples> {
    match name {
        "skip" => Ok(BadSamples::default()),
        "fail" => Ok(BadSamples::Fail),
        "omit" => Ok(BadSamples::Omit { max_total: 1000 }),
        other => Err(PyValueError::new_err(format!(
            "bad={other:?}: expected \"skip\", \"fail\" or \"omit\""
        ))),
    }
}

fn parse_jpeg(name: Option<&str>) -> PyResult<JpegBackend> {
    match name {
        None => Ok(JpegBackend::default()),
        Some("zune") => Ok(JpegBackend::Zune),
        Some("turbo") if cfg!(feature = "turbojpeg") => Ok(JpegBackend::Turbo),
        Some("turbo") => Err(PyValueError::new_err(
            "jpeg=\"turbo\": this build has no libjpeg-turbo (see imgloader.build_info()); rebuild with \
             cmake and nasm on PATH",
        )),
        Some(other) => Err(PyValueError::new_err(format!(
            "jpeg={other:?}: expected \"zune\" or \"turbo\""
        ))),
    }
}

#[pymethods]
impl PyLoader {
    #[new]
    #[pyo3(signature = (
        source, batch_size = 256, threads = None, transform = "train", crop_size = 224, val_resize = 256,
        seed = 0, rank = 0, world_size = 1, drop_last = false, shuffle = None, bad = "skip", prefetch = 0,
        jpeg = None, pin = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: &PySource,
        batch_size: usize,
        threads: Option<usize>,
        transform: &str,
        crop_size: u32,
        val_resize: u32,
        seed: u64,
        rank: usize,
        world_size: usize,
        drop_last: bool,
        shuffle: Option<bool>,
        bad: &str,
        prefetch: usize,
        jpeg: Option<&str>,
        pin: Option<(Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<Self> {
        let transform = parse_transform(transform, crop_size, val_resize)?;
        let allocator = PyAllocator {
            label_capacity: batch_size,
            pin: pin.map(|(register, unregister)| {
                Arc::new(Pinner {
                    register,
                    unregister,
                })
            }),
        };
        let mut builder = Loader::builder(source.inner.clone());
        builder
            .batch_size(batch_size)
            .seed(seed)
            .distributed(rank, world_size)
            .drop_last(drop_last)
            .transform(transform)
            .bad_samples(parse_bad(bad)?)
            .prefetch(prefetch)
            .decode_options(DecodeOptions {
                jpeg: parse_jpeg(jpeg)?,
                ..DecodeOptions::default()
            });
        if let Some(n) = threads {
            builder.threads(n);
        }
        if let Some(yes) = shuffle {
            builder.shuffle(yes);
        }
        let builder = builder.allocator(allocator);
        let inner = py.detach(|| builder.build()).map_err(to_py)?;
        Ok(PyLoader {
            inner: Arc::new(inner),
        })
    }

    /// Batches per epoch for this rank.
    fn __len__(&self) -> usize {
        self.inner.batches_per_epoch()
    }

    #[getter]
    fn samples_per_epoch(&self) -> usize {
        self.inner.samples_per_epoch()
    }

    #[getter]
    fn batch_size(&self) -> usize {
        self.inner.batch_size()
    }

    /// Batch buffers allocated over the loader's life (they are reused: at most prefetch + the batches
    /// the caller still holds).
    #[getter]
    fn buffers_allocated(&self) -> usize {
        self.inner.buffers_allocated()
    }

    /// Bad samples met over the loader's life.
    #[getter]
    fn bad_samples(&self) -> usize {
        self.inner.bad_samples()
    }

    /// The batches of `epoch`, starting after `start` samples of the global order (all ranks together).
    #[pyo3(signature = (epoch, start = 0))]
    fn epoch(&self, py: Python<'_>, epoch: u64, start: usize) -> PyResult<PyEpoch> {
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(0);
        let loader = self.inner.clone();
        std::thread::Builder::new()
            .name("imgloader-epoch".into())
            .spawn(move || {
                let walk = || {
                    let batches = match loader.epoch_from(epoch, start) {
                        Ok(batches) => batches,
                        Err(e) => {
                            let _ = tx.send(Msg::Error(e));
                            return;
                        }
                    };
                    if tx.send(Msg::Start(batches.remaining())).is_err() {
                        return;
                    }
                    for batch in batches {
                        let failed = batch.is_err();
                        let msg = batch.map_or_else(Msg::Error, Msg::Batch);
                        // A send fails when the Python epoch is gone: dropping `batches` stops the work.
                        if tx.send(msg).is_err() || failed {
                            return;
                        }
                    }
                };
                if let Err(panic) = catch_unwind(AssertUnwindSafe(walk)) {
                    let _ = tx.send(Msg::Panic(panic_message(panic)));
                }
            })
            .map_err(|e| LoaderError::new_err(format!("cannot start an epoch thread: {e}")))?;
        let epoch = PyEpoch {
            rx,
            remaining: AtomicUsize::new(0),
        };
        match epoch.wait(py)? {
            Some(Msg::Start(n)) => {
                epoch.remaining.store(n, Ordering::Relaxed);
                Ok(epoch)
            }
            Some(other) => Err(other.into_err()),
            None => Err(LoaderError::new_err(
                "the epoch thread ended before starting",
            )),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Loader({} batches of {} per epoch)",
            self.inner.batches_per_epoch(),
            self.inner.batch_size()
        )
    }
}

enum Msg {
    Start(usize),
    Batch(Batch<PyBuffer>),
    Error(imgloader::Error),
    Panic(String),
}

impl Msg {
    fn into_err(self) -> PyErr {
        match self {
            Msg::Error(e) => to_py(e),
            Msg::Panic(m) => {
                PanicException::new_err(format!("imgloader epoch thread panicked: {m}"))
            }
            Msg::Start(_) | Msg::Batch(_) => LoaderError::new_err("unexpected message"),
        }
    }
}

/// One epoch's batches, as `(images, labels)` pairs of `Array`s.
#[pyclass(name = "Epoch", module = "imgloader._imgloader", frozen)]
struct PyEpoch {
    rx: Receiver<Msg>,
    remaining: AtomicUsize,
}

impl PyEpoch {
    /// The next message; `None` once the epoch thread is done. Raises `KeyboardInterrupt` (or whatever a
    /// signal handler raises) while waiting.
    fn wait(&self, py: Python<'_>) -> PyResult<Option<Msg>> {
        loop {
            match py.detach(|| self.rx.recv_timeout(SIGNAL_CHECK)) {
                Ok(msg) => return Ok(Some(msg)),
                Err(RecvTimeoutError::Timeout) => py.check_signals()?,
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }
}

#[pymethods]
impl PyEpoch {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<(Array, Array)>> {
        match self.wait(py)? {
            Some(Msg::Batch(batch)) => {
                self.remaining.fetch_sub(1, Ordering::Relaxed);
                Ok(Some(arrays(batch)))
            }
            Some(other) => Err(other.into_err()),
            None => Ok(None),
        }
    }

    /// Batches not yet handed out.
    fn __len__(&self) -> usize {
        self.remaining.load(Ordering::Relaxed)
    }
}

fn arrays(batch: Batch<PyBuffer>) -> (Array, Array) {
    // SAFETY: this thread holds the batch alone (it just came out of the channel) and no view of its
    // label area exists yet; the arrays made below are the first.
    unsafe { batch.buffer().write_labels(&batch.labels) };
    let n = batch.len as i64;
    let (h, w) = batch.size;
    let images_at = batch.buffer().pixels_ptr();
    let labels_at = batch.buffer().labels_ptr() as *mut u8;
    let held = Arc::new(batch);
    let images = Array {
        data: images_at as usize,
        shape: vec![n, i64::from(h), i64::from(w), 3],
        dtype: Dtype::U8,
        batch: held.clone(),
    };
    let labels = Array {
        data: labels_at as usize,
        shape: vec![n],
        dtype: Dtype::I64,
        batch: held,
    };
    (images, labels)
}

/// A batch's pixels (u8, `[n, h, w, 3]`) or labels (int64, `[n]`) in the loader's own buffer, exported
/// without a copy through DLPack: `torch.from_dlpack(array)`, `numpy.from_dlpack(array)`.
#[pyclass(name = "Array", module = "imgloader._imgloader", frozen)]
struct Array {
    data: usize,
    shape: Vec<i64>,
    dtype: Dtype,
    batch: Arc<Batch<PyBuffer>>,
}

#[pymethods]
impl Array {
    #[pyo3(signature = (*, stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<Py<PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        // `stream` concerns device arrays; this memory is on the host, where there is nothing to order.
        let _ = stream;
        if let Some((kind, _)) = dl_device
            && kind != DEVICE_CPU
        {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "imgloader batches live in host memory; copy them to the device with .to(device)",
            ));
        }
        if copy == Some(true) {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "imgloader exports its buffers without a copy; copy the tensor made from it instead",
            ));
        }
        let view = View {
            data: self.data as *mut u8,
            shape: self.shape.clone(),
            dtype: self.dtype,
            owner: self.batch.clone(),
        };
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        dlpack::export(py, view, versioned)
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (DEVICE_CPU, 0)
    }

    /// The address of the first element (what `tensor.data_ptr()` of a tensor made from this one gives).
    #[getter]
    fn data_ptr(&self) -> usize {
        self.data
    }

    #[getter]
    fn shape(&self) -> Vec<i64> {
        self.shape.clone()
    }

    /// `"uint8"` (pixels) or `"int64"` (labels).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.shape.iter().product::<i64>() as usize * self.dtype.size()
    }

    /// The source index of each sample in the batch (after any bad sample was replaced).
    #[getter]
    fn indices(&self) -> Vec<usize> {
        self.batch.indices.clone()
    }

    /// The batch's position in its epoch.
    #[getter]
    fn batch_index(&self) -> usize {
        self.batch.index
    }

    /// Samples that could not be used in this batch: `(index, message)` pairs.
    #[getter]
    fn bad(&self) -> Vec<(usize, String)> {
        self.batch
            .bad
            .iter()
            .map(|b| (b.index, b.error.clone()))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!("Array(shape={:?}, dtype={})", self.shape, self.dtype.name())
    }
}

/// The native module; the package `imgloader` re-exports it with a Python layer on top.
#[pymodule]
fn _imgloader(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySource>()?;
    m.add_class::<PyLoader>()?;
    m.add_class::<PyEpoch>()?;
    m.add_class::<Array>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add("LoaderError", m.py().get_type::<LoaderError>())?;
    Ok(())
}
