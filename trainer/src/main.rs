//! `imgtrain`: train and evaluate torchvision architectures on ImageNet-style data with libtorch.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Train image classifiers with libtorch, fed by the imgloader pipeline.
///
/// This build checks the libtorch install and the device: it reports which device a run would use and runs
/// a small convolution forward and backward on it.
#[derive(Debug, Parser)]
#[command(name = "imgtrain", version, about, long_about = None)]
struct Args {
    /// GPU id to use (default: GPU 0 when CUDA is available, else the CPU).
    #[arg(long, value_name = "N")]
    gpu: Option<usize>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let info = imgtrain::device::select(args.gpu)?;
    println!(
        "imgtrain {}: libtorch {}, device {info}",
        env!("CARGO_PKG_VERSION"),
        imgtrain::LIBTORCH_VERSION
    );
    info.smoke_test().context("device check failed")?;
    println!(
        "device check passed: conv2d forward and backward on {:?}",
        info.device
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imgtrain: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
