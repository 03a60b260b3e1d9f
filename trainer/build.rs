//! Link-time settings for binaries that use libtorch.
//!
//! - rpath to the libtorch the build used, so `imgtrain` starts without `LD_LIBRARY_PATH`
//!   (plus `$ORIGIN`, for libraries copied beside the binary);
//! - keep `libtorch_cuda` linked although no symbol of it is referenced: libtorch registers its CUDA
//!   backend from that library's static initialisers, and `--as-needed` would drop it, leaving CUDA
//!   silently unavailable at run time.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch lib dir; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}:$ORIGIN");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
