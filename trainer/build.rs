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
//!   device-generic interface, so neither CUDA headers nor a CUDA toolkit are needed to build it; only
//!   the count of host-device synchronisations (libtorch's sync debug mode, `c10/cuda/CUDAFunctions.h`)
//!   needs `cuda_runtime_api.h`, and is compiled in when one is found: `IMGTRAIN_CUDA_INCLUDE`, then
//!   PyPI's `nvidia/cu13/include` beside torch (`scripts/libtorch-env.sh` installs it), then
//!   `$CUDA_HOME/include` and `/usr/local/cuda/include`;
//! - the distributed half of the bridge (`cpp/dist.cpp`, Rust side `src/dist.rs`): c10d's TCPStore,
//!   process groups and Reducer. Gloo's headers come from Debian's `libgloo-dev` (`/usr/include/gloo`,
//!   or `IMGTRAIN_GLOO_INCLUDE`; Gloo itself is compiled into libtorch_cpu); NCCL's process group is
//!   compiled in when the CUDA headers above, `nccl.h` (PyPI's `nvidia/nccl/include` beside torch, or
//!   `IMGTRAIN_NCCL_INCLUDE`) and libtorch_cuda are all there. Without them the run says which backend
//!   this build lacks.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=cpp/bridge.cpp");
    println!("cargo:rerun-if-changed=cpp/dist.cpp");
    println!("cargo:rerun-if-changed=cpp/guard.h");
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
        .file("cpp/dist.cpp")
        .flag("-std=c++17")
        // The ABI of PyPI's torch and of libtorch's cxx11 zips; torch-sys compiles its wrapper the same way.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(true)
        .extra_warnings(true)
        .opt_level(2);
    // As system headers: libtorch's own headers trip -Wextra (unused parameters) by the dozen.
    let mut includes = vec![
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ];
    // The sync count also calls into libc10_cuda (c10::cuda::warn_or_error_on_sync, for its self-test),
    // which a CPU-only libtorch does not have.
    let cuda = cuda_include(root).filter(|_| lib.join("libc10_cuda.so").exists());
    if let Some(cuda) = &cuda {
        build.define("IMGTRAIN_BRIDGE_CUDA", None);
        includes.push(cuda.clone());
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    if let Some(gloo) = gloo_include() {
        build.define("USE_C10D_GLOO", None);
        includes.push(gloo);
    } else {
        println!(
            "cargo:warning=Gloo headers not found (apt-get install libgloo-dev): imgtrain is built without \
             the CPU distributed backend"
        );
    }
    if cuda.is_some()
        && lib.join("libtorch_cuda.so").exists()
        && let Some(nccl) = nccl_include(root)
    {
        build.define("USE_C10D_NCCL", None);
        includes.push(nccl);
    }
    // The compiler's own search path: naming it again with -isystem would reorder it before libstdc++'s
    // headers and break their #include_next.
    includes.retain(|d| d != Path::new("/usr/include") && d != Path::new("/usr/local/include"));
    for dir in includes {
        build.flag("-isystem").flag(dir.display().to_string());
    }
    build.compile("imgtrain_bridge");
}

/// The folder holding `gloo/`, for c10d's ProcessGroupGloo header.
fn gloo_include() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=IMGTRAIN_GLOO_INCLUDE");
    std::env::var_os("IMGTRAIN_GLOO_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ])
        .find(|d| d.join("gloo/config.h").is_file())
}

/// A folder with `nccl.h`, for c10d's ProcessGroupNCCL header.
fn nccl_include(torch_root: &Path) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=IMGTRAIN_NCCL_INCLUDE");
    let mut candidates: Vec<PathBuf> = std::env::var_os("IMGTRAIN_NCCL_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(site) = torch_root.parent() {
        candidates.push(site.join("nvidia/nccl/include"));
    }
    candidates.push(PathBuf::from("/usr/include"));
    candidates.into_iter().find(|d| d.join("nccl.h").is_file())
}

/// A folder with `cuda_runtime_api.h`, for the bridge's synchronisation count; see the module docs.
fn cuda_include(torch_root: &Path) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=IMGTRAIN_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("IMGTRAIN_CUDA_INCLUDE") {
        candidates.push(PathBuf::from(dir));
    }
    // torch's Python package: <site-packages>/torch; the NVIDIA wheels: <site-packages>/nvidia/cu13.
    if let Some(site) = torch_root.parent() {
        candidates.push(site.join("nvidia/cu13/include"));
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates
        .into_iter()
        .find(|d| d.join("cuda_runtime_api.h").is_file())
}
