//! DLPack export: a batch's pixels and labels handed to torch (or numpy, jax…) as views of the loader's
//! buffer, without a copy.
//!
//! `__dlpack__` returns a capsule holding a `DLManagedTensor` (named `dltensor`) or, when the consumer
//! asks for DLPack 1.x through `max_version` as torch does, a `DLManagedTensorVersioned`
//! (`dltensor_versioned`). Either owns a reference to the batch; the consumer calls its `deleter` when the
//! tensor is freed, which drops that reference, and when the last one goes the batch's buffer returns to
//! the loader. A capsule nobody consumed frees itself the same way (its destructor calls the deleter while
//! the capsule still has its original name; a consumer renames it to `used_dltensor[_versioned]`).
//! The structs below are the ABI of `dlpack.h` (v1.0), written out by hand.

use std::ffi::{CStr, c_void};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;

const CAPSULE: &CStr = c"dltensor";
const CAPSULE_VERSIONED: &CStr = c"dltensor_versioned";

/// `kDLCPU`: pinned (page-locked) host memory is CPU memory to torch too.
pub const DEVICE_CPU: i32 = 1;
const CODE_INT: u8 = 0;
const CODE_UINT: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

/// Element types the loader hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    U8,
    I64,
}

impl Dtype {
    fn dl(self) -> DLDataType {
        match self {
            Dtype::U8 => DLDataType {
                code: CODE_UINT,
                bits: 8,
                lanes: 1,
            },
            Dtype::I64 => DLDataType {
                code: CODE_INT,
                bits: 64,
                lanes: 1,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::I64 => "int64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I64 => 8,
        }
    }
}

/// What a capsule exports: a contiguous array at `data`, kept valid by `owner`.
pub struct View {
    pub data: *mut u8,
    pub shape: Vec<i64>,
    pub dtype: Dtype,
    pub owner: Arc<dyn Send + Sync>,
}

/// Owns a `T` (the managed tensor, first so that a pointer to it is a pointer to this) and what its
/// `DLTensor` points into.
#[repr(C)]
struct Managed<T> {
    tensor: T,
    shape: Vec<i64>,
    strides: Vec<i64>,
    _owner: Arc<dyn Send + Sync>,
}

fn dl_tensor(view: &View, shape: &mut [i64], strides: &mut [i64]) -> DLTensor {
    DLTensor {
        data: view.data as *mut c_void,
        device: DLDevice {
            device_type: DEVICE_CPU,
            device_id: 0,
        },
        ndim: shape.len() as i32,
        dtype: view.dtype.dl(),
        shape: shape.as_mut_ptr(),
        strides: strides.as_mut_ptr(),
        byte_offset: 0,
    }
}

fn row_major_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    strides
}

unsafe extern "C" fn delete_legacy(t: *mut DLManagedTensor) {
    // SAFETY: `t` is the first field of a `Managed<DLManagedTensor>` made by `Box::into_raw` in `export`;
    // DLPack calls the deleter once (the consumer, or our capsule destructor when nobody consumed it).
    drop(unsafe { Box::from_raw(t as *mut Managed<DLManagedTensor>) });
}

unsafe extern "C" fn delete_versioned(t: *mut DLManagedTensorVersioned) {
    // SAFETY: as in `delete_legacy`, for `Managed<DLManagedTensorVersioned>`.
    drop(unsafe { Box::from_raw(t as *mut Managed<DLManagedTensorVersioned>) });
}

unsafe extern "C" fn capsule_destructor_legacy(capsule: *mut ffi::PyObject) {
    // SAFETY: Python calls this with the capsule being destroyed, holding the GIL. While it still has its
    // own name nobody consumed it, so the managed tensor is still ours to delete.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, CAPSULE.as_ptr()) == 1 {
            let t = ffi::PyCapsule_GetPointer(capsule, CAPSULE.as_ptr()) as *mut DLManagedTensor;
            if let Some(deleter) = (*t).deleter {
                deleter(t);
            }
        }
    }
}

unsafe extern "C" fn capsule_destructor_versioned(capsule: *mut ffi::PyObject) {
    // SAFETY: as in `capsule_destructor_legacy`.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, CAPSULE_VERSIONED.as_ptr()) == 1 {
            let t = ffi::PyCapsule_GetPointer(capsule, CAPSULE_VERSIONED.as_ptr())
                as *mut DLManagedTensorVersioned;
            if let Some(deleter) = (*t).deleter {
                deleter(t);
            }
        }
    }
}

/// A DLPack capsule for `view`: DLPack 1.0 (`dltensor_versioned`) when `versioned`, else the legacy form.
pub fn export(py: Python<'_>, view: View, versioned: bool) -> PyResult<Py<PyAny>> {
    let mut shape = view.shape.clone();
    let mut strides = row_major_strides(&shape);
    let dl = dl_tensor(&view, &mut shape, &mut strides);
    // The Vecs' heap blocks do not move when the Vecs are moved into the box, so `dl`'s pointers stay valid.
    let capsule = if versioned {
        let managed = Box::into_raw(Box::new(Managed {
            tensor: DLManagedTensorVersioned {
                version: DLPackVersion { major: 1, minor: 0 },
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_versioned),
                flags: 0,
                dl_tensor: dl,
            },
            shape,
            strides,
            _owner: view.owner,
        }));
        // SAFETY: `managed` is a valid, leaked box; the capsule takes ownership of it (see the destructor).
        // On failure nothing owns it yet, so it is freed here.
        unsafe {
            (*managed).tensor.manager_ctx = managed as *mut c_void;
            let cap = ffi::PyCapsule_New(
                managed as *mut c_void,
                CAPSULE_VERSIONED.as_ptr(),
                Some(capsule_destructor_versioned),
            );
            if cap.is_null() {
                delete_versioned(managed as *mut DLManagedTensorVersioned);
            }
            cap
        }
    } else {
        let managed = Box::into_raw(Box::new(Managed {
            tensor: DLManagedTensor {
                dl_tensor: dl,
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_legacy),
            },
            shape,
            strides,
            _owner: view.owner,
        }));
        // SAFETY: as above.
        unsafe {
            (*managed).tensor.manager_ctx = managed as *mut c_void;
            let cap = ffi::PyCapsule_New(
                managed as *mut c_void,
                CAPSULE.as_ptr(),
                Some(capsule_destructor_legacy),
            );
            if cap.is_null() {
                delete_legacy(managed as *mut DLManagedTensor);
            }
            cap
        }
    };
    // SAFETY: `capsule` is a new reference or null with a Python error set, which `from_owned_ptr_or_err`
    // turns into `Err`.
    unsafe { Bound::from_owned_ptr_or_err(py, capsule) }.map(Bound::unbind)
}
