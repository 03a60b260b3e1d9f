//! The trainer's C++ bridge to libtorch (`trainer/cpp/bridge.cpp`, compiled by `build.rs` against the
//! headers of the libtorch tch links): what tch does not expose.
//!
//! - autocast controls per device type (used by [`crate::amp`]);
//! - one SGD step over all parameters ([`sgd_step`]), per parameter, with `_foreach_` ops or with the
//!   fused kernel, and gradients reset to undefined ([`grads_set_to_none`]);
//! - CUDA streams and events for overlapping host-to-device copies with compute ([`CudaStream`],
//!   [`CudaEvent`], [`record_stream`]), and a count of host-device synchronisations ([`SyncCounter`]).
//!
//! A host-to-device copy beside the compute stream, for the training loop (all on the loop's thread):
//! 1. once: `let copy = CudaStream::from_pool(Some(dev), false)?`;
//! 2. per batch: `{ let _on = copy.make_current()?; /* pinned host tensor .to_device_(.., non_blocking) */ }`,
//!    then `let mut copied = CudaEvent::new()?; copied.record(&copy)?` (the pinned buffer may go back to
//!    the loader once `copied.query()?` is true);
//! 3. before the batch is used: `let compute = CudaStream::current(Some(dev))?;
//!    compute.wait_stream(&copy)?` (or `copied.block(&compute)?`), and `record_stream(&images, &compute)?`
//!    since the device memory was allocated while `copy` was current.
//!
//! Every C++ function catches all exceptions and hands back their message, which becomes
//! [`TrainError::Bridge`] naming the operation: a libtorch error never unwinds into Rust (that would
//! abort the process).

use std::ffi::{CStr, c_char, c_void};
use std::ptr::NonNull;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Result, TrainError};

/// c10's `DeviceType::CUDA` code (`c10/core/DeviceType.h`, stable: it is serialised; CPU is 0).
pub(crate) const DEVICE_TYPE_CUDA: i8 = 1;

/// `c10::Stream::pack3` in C's terms (`imgtrain_stream` in the C++ file).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawStream {
    id: i64,
    device_index: i8,
    device_type: i8,
}

mod ffi {
    use super::*;

    // Each returns NULL on success or a malloc'd message that imgtrain_bridge_free_error frees.
    unsafe extern "C" {
        pub fn imgtrain_bridge_free_error(message: *mut c_char);

        pub fn imgtrain_autocast_set_dtype(device_type: i8, dtype: i8) -> *mut c_char;
        pub fn imgtrain_autocast_get_dtype(device_type: i8, out: *mut i8) -> *mut c_char;
        pub fn imgtrain_autocast_set_enabled(device_type: i8, enabled: bool) -> *mut c_char;
        pub fn imgtrain_autocast_is_enabled(device_type: i8, out: *mut bool) -> *mut c_char;
        pub fn imgtrain_autocast_increment_nesting(out: *mut i32) -> *mut c_char;
        pub fn imgtrain_autocast_decrement_nesting(out: *mut i32) -> *mut c_char;
        pub fn imgtrain_autocast_clear_cache() -> *mut c_char;

        pub fn imgtrain_sgd_step(
            params: *const *const C_tensor,
            bufs: *const *mut C_tensor,
            n: usize,
            lr: f64,
            momentum: f64,
            dampening: f64,
            weight_decay: f64,
            nesterov: bool,
            kernel: i32,
            grad_scale: *const C_tensor,
            found_inf: *const C_tensor,
        ) -> *mut c_char;
        pub fn imgtrain_grads_set_to_none(params: *const *const C_tensor, n: usize) -> *mut c_char;
        pub fn imgtrain_channels_last_(tensors: *const *const C_tensor, n: usize) -> *mut c_char;

        pub fn imgtrain_cuda_stream_from_pool(
            device_index: i8,
            high_priority: bool,
            out: *mut RawStream,
        ) -> *mut c_char;
        pub fn imgtrain_cuda_current_stream(device_index: i8, out: *mut RawStream) -> *mut c_char;
        pub fn imgtrain_cuda_exchange_stream(
            s: *const RawStream,
            previous: *mut RawStream,
        ) -> *mut c_char;
        pub fn imgtrain_cuda_stream_wait_stream(
            waiter: *const RawStream,
            other: *const RawStream,
        ) -> *mut c_char;
        pub fn imgtrain_cuda_stream_synchronize(s: *const RawStream) -> *mut c_char;
        pub fn imgtrain_cuda_event_new(out: *mut *mut c_void) -> *mut c_char;
        pub fn imgtrain_cuda_event_free(event: *mut c_void);
        pub fn imgtrain_cuda_event_record(event: *mut c_void, s: *const RawStream) -> *mut c_char;
        pub fn imgtrain_cuda_event_query(event: *mut c_void, done: *mut bool) -> *mut c_char;
        pub fn imgtrain_cuda_event_synchronize(event: *mut c_void) -> *mut c_char;
        pub fn imgtrain_cuda_event_block(event: *mut c_void, s: *const RawStream) -> *mut c_char;
        pub fn imgtrain_tensor_record_stream(
            t: *const C_tensor,
            s: *const RawStream,
        ) -> *mut c_char;

        pub fn imgtrain_bridge_has_cuda_headers() -> bool;
        pub fn imgtrain_cuda_sync_count_start() -> *mut c_char;
        pub fn imgtrain_cuda_sync_count(out: *mut u64) -> *mut c_char;
        pub fn imgtrain_cuda_sync_count_stop() -> *mut c_char;
    }
}

/// Turns a bridge function's return value into a `Result`, freeing the message.
pub(crate) fn check(op: &'static str, err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from the bridge, freed exactly once, here.
    let message = unsafe {
        let m = CStr::from_ptr(err).to_string_lossy().into_owned();
        ffi::imgtrain_bridge_free_error(err);
        m
    };
    Err(TrainError::Bridge { op, message })
}

// ---- autocast ------------------------------------------------------------------------------------------

/// Sets the autocast dtype (a c10 `ScalarType` code: Half, BFloat16 or Float) of a device type (CPU or
/// CUDA code) on the calling thread.
pub(crate) fn autocast_set_dtype(device_type: i8, dtype: i8) -> Result<()> {
    // SAFETY: plain values; the C++ side validates both codes.
    check("autocast_set_dtype", unsafe {
        ffi::imgtrain_autocast_set_dtype(device_type, dtype)
    })
}

/// The autocast dtype (c10 `ScalarType` code) of a device type on the calling thread.
pub(crate) fn autocast_get_dtype(device_type: i8) -> Result<i8> {
    let mut out = -1;
    // SAFETY: `out` is a valid place for the result.
    check("autocast_get_dtype", unsafe {
        ffi::imgtrain_autocast_get_dtype(device_type, &mut out)
    })?;
    Ok(out)
}

/// Switches autocast for a device type on or off on the calling thread.
pub(crate) fn autocast_set_enabled(device_type: i8, enabled: bool) -> Result<()> {
    // SAFETY: plain values; the C++ side validates the code.
    check("autocast_set_enabled", unsafe {
        ffi::imgtrain_autocast_set_enabled(device_type, enabled)
    })
}

/// Whether autocast is on for a device type on the calling thread.
pub(crate) fn autocast_is_enabled(device_type: i8) -> Result<bool> {
    let mut out = false;
    // SAFETY: `out` is a valid place for the result.
    check("autocast_is_enabled", unsafe {
        ffi::imgtrain_autocast_is_enabled(device_type, &mut out)
    })?;
    Ok(out)
}

/// Enters an autocast region; returns the new nesting depth.
pub(crate) fn autocast_increment_nesting() -> Result<i32> {
    let mut out = 0;
    // SAFETY: `out` is a valid place for the result.
    check("autocast_increment_nesting", unsafe {
        ffi::imgtrain_autocast_increment_nesting(&mut out)
    })?;
    Ok(out)
}

/// Leaves an autocast region; returns the new nesting depth.
pub(crate) fn autocast_decrement_nesting() -> Result<i32> {
    let mut out = 0;
    // SAFETY: `out` is a valid place for the result.
    check("autocast_decrement_nesting", unsafe {
        ffi::imgtrain_autocast_decrement_nesting(&mut out)
    })?;
    Ok(out)
}

/// Drops the weights autocast cast for the region that just ended.
pub(crate) fn autocast_clear_cache() -> Result<()> {
    // SAFETY: no arguments.
    check("autocast_clear_cache", unsafe {
        ffi::imgtrain_autocast_clear_cache()
    })
}

// ---- SGD -----------------------------------------------------------------------------------------------

/// How [`sgd_step`] computes an update. All three follow `torch.optim.SGD`'s rule; they differ in the
/// kernels launched, hence in rounding on some devices (see `optim.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgdKernel {
    /// `torch.optim.SGD(foreach=False)`: the same ATen calls in the same order, about 4 per parameter.
    PerParameter = 0,
    /// `torch.optim.SGD(foreach=True)`: `_foreach_` ops, about 4 calls for all parameters.
    Foreach = 1,
    /// `torch.optim.SGD(fused=True)`: `at::_fused_sgd_`, one call for all parameters (two on a step where
    /// some parameters get their first momentum buffer and others do not).
    Fused = 2,
}

/// SGD's hyper-parameters, as `torch.optim.SGD` names them (no `maximize`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdOptions {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// One SGD step over `params` with their momentum buffers `bufs` (same length; an undefined tensor, as
/// `Tensor::new()` makes, for "no buffer yet": the step sets it on the parameter's first update, as
/// torch does). Parameters whose gradient is undefined are left alone, buffer included.
///
/// `scale = Some((grad_scale, found_inf))` (one-element f32 tensors on the parameters' device) divides
/// the gradients by `grad_scale` and skips the whole update where `found_inf` is nonzero, on the device
/// without a host sync; only [`SgdKernel::Fused`] takes it.
pub fn sgd_step(
    params: &[Tensor],
    bufs: &mut [Tensor],
    opts: &SgdOptions,
    kernel: SgdKernel,
    scale: Option<(&Tensor, &Tensor)>,
) -> Result<()> {
    assert_eq!(
        params.len(),
        bufs.len(),
        "one momentum buffer per parameter"
    );
    let ps: Vec<*const C_tensor> = params.iter().map(Tensor::as_ptr).collect();
    let bs: Vec<*mut C_tensor> = bufs.iter_mut().map(Tensor::as_mut_ptr).collect();
    let (grad_scale, found_inf) = match scale {
        Some((s, f)) => (s.as_ptr(), f.as_ptr()),
        None => (std::ptr::null(), std::ptr::null()),
    };
    // SAFETY: `ps` and `bs` point at `params.len()` live `at::Tensor`s (tch's tensors), `bs` borrowed
    // mutably for the call, which may assign new buffers into them; the scale tensors are live or null.
    check("sgd_step", unsafe {
        ffi::imgtrain_sgd_step(
            ps.as_ptr(),
            bs.as_ptr(),
            ps.len(),
            opts.lr,
            opts.momentum,
            opts.dampening,
            opts.weight_decay,
            opts.nesterov,
            kernel as i32,
            grad_scale,
            found_inf,
        )
    })
}

/// Makes the gradients of `params` undefined, like PyTorch's `zero_grad(set_to_none=True)`.
pub fn grads_set_to_none(params: &[Tensor]) -> Result<()> {
    let ps: Vec<*const C_tensor> = params.iter().map(Tensor::as_ptr).collect();
    // SAFETY: `ps` points at `params.len()` live tensors; only their autograd metadata changes.
    check("grads_set_to_none", unsafe {
        ffi::imgtrain_grads_set_to_none(ps.as_ptr(), ps.len())
    })
}

/// Gives every 4-D tensor of `tensors` the channels_last memory layout in place (same values, same
/// variables), as `model.to(memory_format=torch.channels_last)` does; other tensors stay as they are.
pub fn channels_last_(tensors: &[Tensor]) -> Result<()> {
    let ts: Vec<*const C_tensor> = tensors.iter().map(Tensor::as_ptr).collect();
    // SAFETY: `ts` points at `tensors.len()` live tensors; each keeps its identity, only its storage
    // layout changes (under no-grad), which tch's handles do not cache.
    check("channels_last_", unsafe {
        ffi::imgtrain_channels_last_(ts.as_ptr(), ts.len())
    })
}

// ---- CUDA streams and events ------------------------------------------------------------------------

fn device_index(device: Option<usize>) -> Result<i8> {
    match device {
        None => Ok(-1),
        Some(i) => i8::try_from(i).map_err(|_| TrainError::Bridge {
            op: "cuda_device",
            message: format!("CUDA device index {i} is out of range"),
        }),
    }
}

/// A CUDA stream, as libtorch names it (a plain value: device, stream id). Streams from the pool live as
/// long as the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaStream(RawStream);

impl CudaStream {
    /// A stream from libtorch's pool (`c10::cuda::getStreamFromPool`) on CUDA device `device` (`None`:
    /// the current device), e.g. for host-to-device copies beside the compute stream.
    pub fn from_pool(device: Option<usize>, high_priority: bool) -> Result<CudaStream> {
        let index = device_index(device)?;
        let mut out = RawStream {
            id: 0,
            device_index: 0,
            device_type: 0,
        };
        // SAFETY: `out` is a valid place for the result.
        check("cuda_stream_from_pool", unsafe {
            ffi::imgtrain_cuda_stream_from_pool(index, high_priority, &mut out)
        })?;
        Ok(CudaStream(out))
    }

    /// The calling thread's current stream on CUDA device `device` (`None`: the current device): the
    /// one tch's kernels and copies are queued on.
    pub fn current(device: Option<usize>) -> Result<CudaStream> {
        let index = device_index(device)?;
        let mut out = RawStream {
            id: 0,
            device_index: 0,
            device_type: 0,
        };
        // SAFETY: `out` is a valid place for the result.
        check("cuda_current_stream", unsafe {
            ffi::imgtrain_cuda_current_stream(index, &mut out)
        })?;
        Ok(CudaStream(out))
    }

    /// The CUDA device index of the stream.
    pub fn device_index(&self) -> usize {
        self.0.device_index.max(0) as usize
    }

    /// Makes this the calling thread's current stream on its device until the guard drops (then the
    /// previous one is current again): tch's copies and kernels in between are queued on it.
    pub fn make_current(&self) -> Result<StreamGuard> {
        let mut previous = self.0;
        // SAFETY: both pointers are valid for the call.
        check("cuda_exchange_stream", unsafe {
            ffi::imgtrain_cuda_exchange_stream(&self.0, &mut previous)
        })?;
        Ok(StreamGuard {
            previous,
            _thread_bound: std::marker::PhantomData,
        })
    }

    /// Work queued on this stream from now on waits for all the work queued on `other` so far; the host
    /// does not wait (an event recorded on `other`, waited for by this stream).
    pub fn wait_stream(&self, other: &CudaStream) -> Result<()> {
        // SAFETY: both pointers are valid for the call.
        check("cuda_stream_wait_stream", unsafe {
            ffi::imgtrain_cuda_stream_wait_stream(&self.0, &other.0)
        })
    }

    /// The host waits until everything queued on this stream is done.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: the pointer is valid for the call.
        check("cuda_stream_synchronize", unsafe {
            ffi::imgtrain_cuda_stream_synchronize(&self.0)
        })
    }
}

/// Restores the previous current stream when dropped; see [`CudaStream::make_current`].
#[derive(Debug)]
#[must_use = "the stream is current only while the guard lives"]
pub struct StreamGuard {
    previous: RawStream,
    /// The current stream is per thread: the guard must drop on the thread that made it.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut replaced = self.previous;
        // SAFETY: both pointers are valid for the call. Exchanging back to a stream that was current a
        // moment ago on a device that exists cannot fail; were it to, there is nothing better to do in a
        // destructor than to leave the stream as it is.
        let err = unsafe { ffi::imgtrain_cuda_exchange_stream(&self.previous, &mut replaced) };
        let _ = check("cuda_exchange_stream", err);
    }
}

/// A CUDA event (`c10::Event`): recorded on a stream, it completes when the work queued before it does.
/// Created on the first [`record`](Self::record); a never-recorded event counts as completed.
#[derive(Debug)]
pub struct CudaEvent(NonNull<c_void>);

// SAFETY: a CUDA event may be recorded, queried and destroyed from any host thread; the `c10::Event` is
// owned by this value alone and `&mut self` serialises recording.
unsafe impl Send for CudaEvent {}

impl CudaEvent {
    /// A new event; fails with "CUDA not available" where there is no CUDA device.
    pub fn new() -> Result<CudaEvent> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `out` is a valid place for the result.
        check("cuda_event_new", unsafe {
            ffi::imgtrain_cuda_event_new(&mut out)
        })?;
        NonNull::new(out).map(CudaEvent).ok_or(TrainError::Bridge {
            op: "cuda_event_new",
            message: "no event was returned".to_owned(),
        })
    }

    /// Records the event after the work queued on `stream` so far.
    pub fn record(&mut self, stream: &CudaStream) -> Result<()> {
        // SAFETY: the event is live (owned by `self`), the stream pointer valid for the call.
        check("cuda_event_record", unsafe {
            ffi::imgtrain_cuda_event_record(self.0.as_ptr(), &stream.0)
        })
    }

    /// Whether the work before the last record has completed; does not wait.
    pub fn query(&self) -> Result<bool> {
        let mut done = false;
        // SAFETY: the event is live; `done` is a valid place for the result.
        check("cuda_event_query", unsafe {
            ffi::imgtrain_cuda_event_query(self.0.as_ptr(), &mut done)
        })?;
        Ok(done)
    }

    /// The host waits until the work before the last record has completed.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: the event is live.
        check("cuda_event_synchronize", unsafe {
            ffi::imgtrain_cuda_event_synchronize(self.0.as_ptr())
        })
    }

    /// Work queued on `stream` from now on waits for this event; the host does not wait.
    pub fn block(&self, stream: &CudaStream) -> Result<()> {
        // SAFETY: the event is live, the stream pointer valid for the call.
        check("cuda_event_block", unsafe {
            ffi::imgtrain_cuda_event_block(self.0.as_ptr(), &stream.0)
        })
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: the event came from imgtrain_cuda_event_new and is freed once, here.
        unsafe { ffi::imgtrain_cuda_event_free(self.0.as_ptr()) }
    }
}

/// Tells libtorch's caching allocator that `tensor`'s memory is in use on `stream` (PyTorch's
/// `Tensor.record_stream`): needed for a tensor allocated while a side stream was current and then used
/// on another, or its memory could be handed out again while that stream still reads it.
pub fn record_stream(tensor: &Tensor, stream: &CudaStream) -> Result<()> {
    // SAFETY: the tensor is live for the call, the stream pointer valid.
    check("tensor_record_stream", unsafe {
        ffi::imgtrain_tensor_record_stream(tensor.as_ptr(), &stream.0)
    })
}

/// Whether the bridge was compiled with CUDA's `cuda_runtime_api.h`, which [`SyncCounter`] needs (see
/// `trainer/build.rs`); streams and events do not.
pub fn built_with_cuda_headers() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { ffi::imgtrain_bridge_has_cuda_headers() }
}

/// Counts the host-device synchronisations made on the calling thread while it lives.
///
/// It switches on libtorch's sync debug mode (PyTorch's `torch.cuda.set_sync_debug_mode("warn")`), which
/// flags every blocking device-to-host copy (`.item()`, `double_value`, `.to(Device::Cpu)`, a
/// `Vec::try_from` of a CUDA tensor), every stream and device synchronize, and counts those flags instead
/// of printing them; [`CudaEvent::synchronize`] counts itself (libtorch does not flag event waits).
/// Not counted: implicit synchronisations inside the CUDA runtime (`cudaMalloc`/`cudaFree` when the
/// caching allocator grows or frees, pinned host allocations) and waits on `CudaEvent::query` loops.
/// The mode is process-wide: a sync on another thread prints libtorch's warning. Start it on the thread
/// that runs the steps, around the steps measured, one counter at a time (dropping one stops counting
/// on its thread).
#[derive(Debug)]
pub struct SyncCounter {
    /// The count lives in the C++ thread-local state of the thread that started it.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl SyncCounter {
    /// Starts counting; checks with one stream synchronize (not counted) that libtorch's flags reach
    /// the counter. Fails where there is no CUDA device, or the bridge was built without CUDA headers.
    pub fn start() -> Result<SyncCounter> {
        // SAFETY: no arguments; thread-local state.
        check("cuda_sync_count_start", unsafe {
            ffi::imgtrain_cuda_sync_count_start()
        })?;
        Ok(SyncCounter {
            _thread_bound: std::marker::PhantomData,
        })
    }

    /// The synchronisations counted so far on this thread.
    pub fn count(&self) -> Result<u64> {
        let mut out = 0;
        // SAFETY: `out` is a valid place for the result.
        check("cuda_sync_count", unsafe {
            ffi::imgtrain_cuda_sync_count(&mut out)
        })?;
        Ok(out)
    }
}

impl Drop for SyncCounter {
    fn drop(&mut self) {
        // SAFETY: no arguments; restores the thread's previous warning handler. It cannot fail; there
        // is nothing to do in a destructor if it did.
        let _ = check("cuda_sync_count_stop", unsafe {
            ffi::imgtrain_cuda_sync_count_stop()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda_error(e: TrainError) -> String {
        let msg = e.to_string();
        assert!(matches!(e, TrainError::Bridge { .. }), "{msg}");
        msg
    }

    #[test]
    fn channels_last_keeps_values_and_variables() {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().randn("w", &[2, 3, 4, 5], 0.0, 1.0);
        let b = vs.root().randn("b", &[3], 0.0, 1.0);
        let before = w.copy();
        assert_eq!(w.stride(), [60, 20, 5, 1]);
        let vars = vs.trainable_variables();
        channels_last_(&vars).unwrap();
        // The same variables (as the optimizer and the VarStore hold them), NHWC in memory.
        assert_eq!(w.stride(), [60, 1, 15, 3]);
        assert_eq!(vs.trainable_variables()[0].stride(), [60, 1, 15, 3]);
        assert!(w.equal(&before));
        assert!(w.requires_grad());
        assert_eq!(b.stride(), [1]);
        // Twice is a no-op.
        channels_last_(&vars).unwrap();
        assert!(w.equal(&before));
    }

    /// Without a CUDA device, every CUDA helper returns an error naming the operation (no abort).
    #[test]
    fn cuda_helpers_fail_cleanly_without_cuda() {
        if tch::Cuda::is_available() {
            return;
        }
        let msg = cuda_error(CudaStream::from_pool(None, false).unwrap_err());
        assert!(msg.contains("cuda_stream_from_pool"), "{msg}");
        assert!(msg.contains("CUDA not available"), "{msg}");
        let msg = cuda_error(CudaStream::current(Some(0)).unwrap_err());
        assert!(msg.contains("CUDA not available"), "{msg}");
        let msg = cuda_error(CudaEvent::new().unwrap_err());
        assert!(msg.contains("cuda_event_new"), "{msg}");
        // A made-up stream value must not get past the checks either.
        let fake = CudaStream(RawStream {
            id: 0,
            device_index: 0,
            device_type: DEVICE_TYPE_CUDA,
        });
        for e in [
            fake.make_current().map(drop).unwrap_err(),
            fake.wait_stream(&fake).unwrap_err(),
            fake.synchronize().unwrap_err(),
            record_stream(&Tensor::from_slice(&[1.0f32]), &fake).unwrap_err(),
        ] {
            let msg = cuda_error(e);
            assert!(msg.contains("CUDA not available"), "{msg}");
        }
        let cpu = CudaStream(RawStream {
            id: 0,
            device_index: 0,
            device_type: 0, // c10::DeviceType::CPU
        });
        let msg = cuda_error(cpu.synchronize().unwrap_err());
        assert!(msg.contains("not a CUDA stream"), "{msg}");
        assert!(CudaStream::from_pool(Some(1000), false).is_err());
        let msg = cuda_error(SyncCounter::start().unwrap_err());
        assert!(msg.contains("cuda_sync_count_start"), "{msg}");
        if built_with_cuda_headers() {
            assert!(msg.contains("CUDA not available"), "{msg}");
        } else {
            assert!(msg.contains("built without CUDA stream support"), "{msg}");
        }
        // Never started on this thread: an error, not a zero.
        // SAFETY: no arguments.
        let err = unsafe { ffi::imgtrain_cuda_sync_count(&mut 0) };
        let msg = cuda_error(check("cuda_sync_count", err).unwrap_err());
        assert!(msg.contains("not being counted"), "{msg}");
    }

    /// The sync count's mechanism, checked without a GPU: the debug mode the bridge sets is the one
    /// libc10_cuda reads (one static shared through a unique-symbol binding), and its flag reaches the
    /// bridge's counter instead of stderr.
    #[test]
    fn sync_flags_reach_the_counter() {
        unsafe extern "C" {
            fn imgtrain_cuda_sync_flag_selftest(counted: *mut u64) -> *mut c_char;
        }
        if !built_with_cuda_headers() {
            return;
        }
        let mut counted = 0;
        // SAFETY: `counted` is a valid place for the result; the state touched is restored.
        check("cuda_sync_flag_selftest", unsafe {
            imgtrain_cuda_sync_flag_selftest(&mut counted)
        })
        .unwrap();
        assert_eq!(counted, 1);
    }

    #[test]
    fn bad_autocast_codes_are_errors_not_out_of_bounds_writes() {
        let msg = autocast_set_dtype(100, 5).unwrap_err().to_string();
        assert!(msg.contains("autocast_set_dtype"), "{msg}");
        assert!(msg.contains("unsupported device type"), "{msg}");
        let msg = autocast_set_dtype(DEVICE_TYPE_CUDA, 4)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unsupported dtype"), "{msg}");
    }

    #[test]
    fn a_libtorch_exception_comes_back_as_an_error() {
        // Shapes that cannot be added: the C++ exception is caught and named.
        let p = Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(&[1.0f32, 2.0]))
            .sum(tch::Kind::Float)
            .backward();
        let mut bufs = [Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu))];
        let opts = SgdOptions {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let err = sgd_step(
            std::slice::from_ref(&p),
            &mut bufs,
            &opts,
            SgdKernel::PerParameter,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sgd_step"), "{err}");
        assert!(err.contains("size"), "{err}");
    }
}
