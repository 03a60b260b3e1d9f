//! The `imgtrain` binary as a user starts it.

use std::process::Command;

fn imgtrain() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgtrain"));
    // The binary must find libtorch through its rpath, not through the environment.
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

#[test]
fn help_runs_without_ld_library_path() {
    let out = imgtrain().arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Usage: imgtrain"), "{stdout}");
    assert!(stdout.contains("--gpu"), "{stdout}");
}

#[test]
fn starts_and_names_its_device() {
    let out = imgtrain().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("libtorch 2.11.0"), "{stdout}");
    assert!(
        stdout.contains("device cpu") || stdout.contains("device cuda:"),
        "{stdout}"
    );
    assert!(stdout.contains("device check passed"), "{stdout}");
}

#[test]
fn missing_gpu_is_a_clear_error() {
    let out = imgtrain().args(["--gpu", "99"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--gpu 99"), "{stderr}");
    assert!(stderr.contains("CUDA device(s) visible"), "{stderr}");
}

#[test]
fn libtorch_cuda_stays_linked() {
    // GPU.md step 2: without libtorch_cuda in DT_NEEDED, CUDA is silently unavailable on GPU machines.
    let lib = std::path::Path::new(imgtrain::LIBTORCH_LIB);
    if !lib.join("libtorch_cuda.so").exists() {
        eprintln!(
            "skipped: this libtorch ({}) has no CUDA library",
            lib.display()
        );
        return;
    }
    let out = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_imgtrain")])
        .output()
        .unwrap();
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("[libtorch_cuda.so]"), "{dynamic}");
    assert!(
        dynamic.contains(imgtrain::LIBTORCH_LIB),
        "rpath must name libtorch's folder:\n{dynamic}"
    );
}
