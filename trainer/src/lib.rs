//! A libtorch (tch) trainer for torchvision architectures, fed by [`imgloader`].
//!
//! The loader hands out u8 NHWC batches; this crate is the only one that makes tensors.

pub mod device;
pub mod models;

/// The libtorch this crate was built against, as its Python package or zip reports it.
pub const LIBTORCH_VERSION: &str = env!("IMGTRAIN_LIBTORCH_VERSION");
/// The libtorch library folder baked into the binary's rpath.
pub const LIBTORCH_LIB: &str = env!("IMGTRAIN_LIBTORCH_LIB");
