//! With the `turbojpeg` feature: compiles `src/decode/libjpeg_shim.c` against the headers of the
//! libjpeg-turbo that `turbojpeg-sys` built (it links the library itself). Without it: nothing, and no C
//! compiler is needed.

fn main() {
    println!("cargo:rerun-if-changed=src/decode/libjpeg_shim.c");
    #[cfg(feature = "turbojpeg")]
    shim();
}

#[cfg(feature = "turbojpeg")]
fn shim() {
    // turbojpeg-sys (`links = "turbojpeg"`) says where libjpeg-turbo's headers were installed; several
    // paths are comma-separated.
    let include = std::env::var("DEP_TURBOJPEG_INCLUDE")
        .expect("turbojpeg-sys did not report libjpeg-turbo's include directory");
    let mut build = cc::Build::new();
    build
        .file("src/decode/libjpeg_shim.c")
        .warnings(true)
        .opt_level(2);
    for dir in include.split(',').filter(|d| !d.is_empty()) {
        build.include(dir);
    }
    build.compile("imgloader_libjpeg_shim");
    // The shim calls into libjpeg-turbo's static library; name it again after the shim so that the linker,
    // which reads static archives in order, resolves the shim's references whatever order rustc chose.
    println!("cargo:rustc-link-lib=static:-bundle=turbojpeg");
}
