//! Batch buffers for Python: the loader's pixels, then (8-byte aligned) room for the batch's labels as
//! int64, so that both reach torch as views of one allocation and go back to the loader together. The
//! trainer's `TensorAllocator` does the same with libtorch tensors; here the memory is plain heap, page-
//! locked on request through a callback (torch's `cudaHostRegister`), since this crate links no CUDA.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use imgloader::Allocator;
use pyo3::prelude::*;

/// How buffers are page-locked: Python callables `register(ptr, nbytes)` and `unregister(ptr)`.
pub struct Pinner {
    pub register: Py<PyAny>,
    pub unregister: Py<PyAny>,
}

impl fmt::Debug for Pinner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pinner")
    }
}

/// Allocates [`PyBuffer`]s with room for `label_capacity` labels.
#[derive(Debug, Clone)]
pub struct PyAllocator {
    pub label_capacity: usize,
    pub pin: Option<Arc<Pinner>>,
}

/// One batch buffer: `len` bytes for the loader, then the label area.
pub struct PyBuffer {
    words: NonNull<[u64]>,
    len: usize,
    labels_at: usize,
    label_capacity: usize,
    pin: Option<Arc<Pinner>>,
}

impl fmt::Debug for PyBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PyBuffer")
            .field("len", &self.len)
            .field("labels_at", &self.labels_at)
            .finish_non_exhaustive()
    }
}

// SAFETY: a `PyBuffer` owns its allocation alone (made in `allocate`, freed in `drop`), like a `Box<[u64]>`.
// Shared access reads the pixel bytes only; the one write through `&self`, `write_labels`, is an `unsafe fn`
// whose caller guarantees nobody else looks at the label area meanwhile.
unsafe impl Send for PyBuffer {}
// SAFETY: see `Send`.
unsafe impl Sync for PyBuffer {}

impl PyBuffer {
    /// Address of the first pixel byte.
    pub fn pixels_ptr(&self) -> *mut u8 {
        self.words.as_ptr() as *mut u8
    }

    /// Address of the label area (`label_capacity` int64s).
    pub fn labels_ptr(&self) -> *mut i64 {
        // SAFETY: `labels_at + 8 * label_capacity` bytes were allocated (see `allocate`), so the offset stays
        // inside the allocation.
        unsafe { self.pixels_ptr().add(self.labels_at) as *mut i64 }
    }

    /// Writes `labels` as int64 into the label area.
    ///
    /// # Safety
    /// Nothing may read or write the label area meanwhile: call it while the batch is held by one thread
    /// and before any view of the labels (a DLPack export) exists.
    pub unsafe fn write_labels(&self, labels: &[u32]) {
        assert!(labels.len() <= self.label_capacity, "more labels than room");
        let area = self.labels_ptr();
        for (k, &l) in labels.iter().enumerate() {
            // SAFETY: `k < label_capacity`, the area is 8-byte aligned (`labels_at` is a multiple of 8 from
            // an 8-byte aligned base) and no reference covers it (`as_ref`/`as_mut` stop at `len`); the
            // caller keeps others away.
            unsafe { area.add(k).write(i64::from(l)) };
        }
    }

    fn total_bytes(&self) -> usize {
        self.labels_at + 8 * self.label_capacity
    }
}

impl AsRef<[u8]> for PyBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the allocation holds at least `len` initialised (zeroed) bytes and lives as long as
        // `self`; writes happen through `as_mut` (needs `&mut self`) or past `len` (`write_labels`).
        unsafe { std::slice::from_raw_parts(self.pixels_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for PyBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`; `&mut self` means the loader holds the buffer alone: the Python views of a
        // batch keep the batch (and this buffer) alive, so it only comes back to the loader when they are gone.
        unsafe { std::slice::from_raw_parts_mut(self.pixels_ptr(), self.len) }
    }
}

impl Drop for PyBuffer {
    fn drop(&mut self) {
        if let Some(pin) = &self.pin {
            let ptr = self.pixels_ptr() as usize;
            // Unregistering can only fail if registration did; nothing to do about it while freeing.
            Python::attach(|py| {
                let _ = pin.unregister.call1(py, (ptr,));
            });
        }
        // SAFETY: `words` came from `Box::into_raw` in `allocate` and is freed only here.
        drop(unsafe { Box::from_raw(self.words.as_ptr()) });
    }
}

impl Allocator for PyAllocator {
    type Buffer = PyBuffer;

    fn allocate(&self, len: usize) -> imgloader::Result<PyBuffer> {
        let labels_at = len.next_multiple_of(8);
        let total = labels_at + 8 * self.label_capacity;
        // Zeroed u64 words: 8-byte aligned (the loader needs 4, the labels 8) and never uninitialised.
        let words: Box<[u64]> = vec![0u64; total.div_ceil(8).max(1)].into_boxed_slice();
        let mut buffer = PyBuffer {
            words: NonNull::from(Box::leak(words)),
            len,
            labels_at,
            label_capacity: self.label_capacity,
            pin: None,
        };
        let Some(pin) = &self.pin else {
            return Ok(buffer);
        };
        let (ptr, bytes) = (buffer.pixels_ptr() as usize, buffer.total_bytes());
        Python::attach(|py| pin.register.call1(py, (ptr, bytes)).map(drop)).map_err(|e| {
            imgloader::Error::Config {
                what: "pin_memory",
                reason: format!("cannot page-lock a {bytes}-byte batch buffer: {e}"),
            }
        })?;
        buffer.pin = Some(pin.clone());
        Ok(buffer)
    }
}
