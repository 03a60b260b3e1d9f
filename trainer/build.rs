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
        println!("cargo:rustc-env=IMGTRAIN_LIBTORCH_VERSION=unknown");
        println!("cargo:rustc-env=IMGTRAIN_LIBTORCH_LIB=unknown");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}:$ORIGIN");
    // torch's Python package keeps its version beside lib/; a plain libtorch zip has build-version.
    let root = Path::new(&lib).parent().unwrap_or(Path::new(&lib));
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_owned())
            })
        })
        .or_else(|| {
            std::fs::read_to_string(root.join("build-version"))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=IMGTRAIN_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=IMGTRAIN_LIBTORCH_LIB={lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
