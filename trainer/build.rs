//! Link-time settings for binaries that use libtorch.
//!
//! - rpath to the libtorch the build used, so `imgtrain` starts without `LD_LIBRARY_PATH`
//!   (plus `$ORIGIN`, for libraries copied beside the binary);
//! - keep `libtorch_cuda` linked although no symbol of it is referenced: libtorch registers its CUDA
//!   backend from that library's static initialisers, and `--as-needed` would drop it, leaving CUDA
//!   silently unavailable at run time;
//! - the trainer's C++ bridge (`cpp/bridge.cpp`, Rust side `src/bridge.rs`), compiled against the headers
//!   of the same libtorch: `<root>/include` and `<root>/include/torch/csrc/api/include`, where `<root>` is
//!   the parent of torch-sys's lib dir. Its CUDA stream and event functions go through c10's
//!   device-generic interface, so neither CUDA headers nor a CUDA toolkit are needed to build it.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=cpp/bridge.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect(
        "torch-sys did not report its libtorch lib dir (DEP_TCH_LIBTORCH_LIB); the trainer's C++ bridge \
         needs that libtorch's headers",
    );
    bridge(Path::new(&lib));
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

/// Compiles `cpp/bridge.cpp` into a static library linked into this crate.
fn bridge(lib: &Path) {
    let root = lib.parent().unwrap_or(lib);
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("cpp/bridge.cpp")
        .flag("-std=c++17")
        // The ABI of PyPI's torch and of libtorch's cxx11 zips; torch-sys compiles its wrapper the same way.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(true)
        .extra_warnings(true)
        .opt_level(2);
    // As system headers: libtorch's own headers trip -Wextra (unused parameters) by the dozen.
    for dir in [
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ] {
        build.flag("-isystem").flag(dir.display().to_string());
    }
    build.compile("imgtrain_bridge");
}
