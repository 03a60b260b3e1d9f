//! `run.json`: what a training run was told and where it ran, enough to run it again — the command line,
//! the resolved [`Plan`] (every default filled in, the seed included), the versions of imgtrain, tch and
//! libtorch, what CUDA and cuDNN offered (GPU name and driver from `nvidia-smi` when it is there), the
//! host, the working folder and the start time (RFC 3339, UTC).
//!
//! Every training run writes `run.json` into its output folder before its first step. A folder already
//! holding one (a resumed run, or a run started again in the same folder) keeps it as `run.<n>.json`, `n`
//! counting from 1 in the order the runs started, so `run.json` is always the latest run and
//! `run.1.json`, `run.2.json`, … the earlier ones. `--evaluate` writes nothing.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Cuda;

use crate::config::Plan;
use crate::error::{Result, TrainError};

/// The file of the latest run.
pub const RUN_FILE: &str = "run.json";

/// The `format` field of `run.json`.
pub const FORMAT: &str = "imgtrain-run";

/// The contents of `run.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub format: &'static str,
    pub version: u32,
    /// The command line, program name first.
    pub command_line: Vec<String>,
    /// When the run started (RFC 3339, UTC).
    pub start_time: String,
    pub host: String,
    /// The folder the run was started in (relative paths on the command line are relative to it).
    pub cwd: Option<PathBuf>,
    /// The dataset folder, made absolute (`None` with `--dummy`).
    pub data: Option<PathBuf>,
    /// The checkpoint resumed from, made absolute.
    pub resumed_from: Option<PathBuf>,
    pub versions: Versions,
    /// Every setting of the run, defaults resolved.
    pub plan: Plan,
    /// Environment variables that change what libtorch does.
    pub env: Vec<(String, String)>,
}

/// Versions of the software and what the machine offers.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub imgtrain: &'static str,
    pub tch: &'static str,
    pub libtorch: &'static str,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_devices: i64,
    /// The GPU the run uses, as `nvidia-smi` names it (CUDA runs, when `nvidia-smi` is there).
    pub gpu_name: Option<String>,
    pub driver_version: Option<String>,
}

/// Variables recorded when set.
const ENV_VARS: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
    "NCCL_DEBUG",
];

/// `p` made absolute against the working folder (as given if that fails).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// The host's name (Linux), else `$HOSTNAME`, else empty.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// GPU `index`'s name and the driver version, from `nvidia-smi` (none when it is missing or fails).
fn gpu_and_driver(index: usize) -> (Option<String>, Option<String>) {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version",
            "--format=csv,noheader",
            &format!("--id={index}"),
        ])
        .output();
    let Ok(out) = out else { return (None, None) };
    if !out.status.success() {
        return (None, None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text
        .lines()
        .next()
        .unwrap_or("")
        .split(',')
        .map(|f| f.trim().to_owned());
    let name = fields.next().filter(|s| !s.is_empty());
    (name, fields.next().filter(|s| !s.is_empty()))
}

impl RunInfo {
    /// The record of a run following `plan`, started now with `args`.
    pub fn new(
        plan: &Plan,
        args: &[String],
        data: Option<&Path>,
        resumed_from: Option<&Path>,
    ) -> RunInfo {
        let start_time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let (gpu_name, driver_version) = match plan.device.device {
            tch::Device::Cuda(i) => gpu_and_driver(i),
            _ => (None, None),
        };
        RunInfo {
            format: FORMAT,
            version: 1,
            command_line: args.to_vec(),
            start_time,
            host: host_name(),
            cwd: std::env::current_dir().ok(),
            data: data.map(absolute),
            resumed_from: resumed_from.map(absolute),
            versions: Versions {
                imgtrain: env!("CARGO_PKG_VERSION"),
                tch: "0.24.0",
                libtorch: crate::LIBTORCH_VERSION,
                cuda_available: Cuda::is_available(),
                cudnn_available: Cuda::cudnn_is_available(),
                cuda_devices: Cuda::device_count(),
                gpu_name,
                driver_version,
            },
            plan: plan.clone(),
            env: ENV_VARS
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect(),
        }
    }

    /// Writes `dir/run.json` atomically, first keeping an earlier run's as `run.<n>.json` (see the module
    /// docs). Returns the path of the kept copy, if any.
    pub fn write(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let path = dir.join(RUN_FILE);
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| TrainError::RunRecord { path, source }
        };
        let mut kept = None;
        if path.exists() {
            let n = std::fs::read_dir(dir)
                .map_err(err(dir))?
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_prefix("run.")?
                        .strip_suffix(".json")?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap_or(0)
                + 1;
            let to = dir.join(format!("run.{n}.json"));
            std::fs::rename(&path, &to).map_err(err(&to))?;
            kept = Some(to);
        }
        let mut json = serde_json::to_string_pretty(self).map_err(|e| TrainError::RunRecord {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        json.push('\n');
        imgloader::atomic::write_file(&path, json.as_bytes()).map_err(err(&path))?;
        Ok(kept)
    }
}

/// What a run records in its output folder before its first step: `run.json` written, the metrics
/// files opened (see [`crate::metrics`]), and with `--enable_wandb` the W&B sidecar started on them
/// (its Python checked first, before anything is written). Nothing for `--evaluate`.
pub fn start_records(
    cfg: &crate::TrainConfig,
    plan: &Plan,
) -> Result<Option<crate::metrics::MetricsLog>> {
    if cfg.evaluate {
        return Ok(None);
    }
    let wandb_python = crate::wandb::python();
    if cfg.wandb.is_some() {
        crate::wandb::check(&wandb_python)?;
    }
    remove_stale_temporaries(&plan.output_dir)?;
    let info = RunInfo::new(plan, &cfg.args, cfg.data.as_deref(), cfg.resume.as_deref());
    if let Some(kept) = info.write(&plan.output_dir)? {
        println!("=> kept the earlier run's {RUN_FILE} as {}", kept.display());
    }
    let resume_step = plan.position.map(|_| plan.resume_global_step);
    let mut log =
        crate::metrics::MetricsLog::open(&plan.output_dir, plan.start_epoch, resume_step)?;
    if let Some(w) = &cfg.wandb {
        log.attach(crate::wandb::Sidecar::start(
            &wandb_python,
            &plan.output_dir,
            w,
        )?);
    }
    Ok(Some(log))
}

/// Removes the temporary files a killed run left while rewriting a record (those of a live process are
/// left alone), saying so.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    use crate::metrics::{METRICS_FILE, SUMMARY_FILE};
    let err = |source| TrainError::RunRecord {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let name = entry.map_err(err)?.file_name();
        let name = name.to_string_lossy();
        let owner = [METRICS_FILE, SUMMARY_FILE, RUN_FILE]
            .iter()
            .find_map(|dest| imgloader::atomic::temporary_owner(&name, dest));
        let Some(pid) = owner else { continue };
        if pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists() {
            let path = dir.join(&*name);
            std::fs::remove_file(&path).map_err(err)?;
            println!(
                "=> removed {}, left by an interrupted write",
                path.display()
            );
        }
    }
    Ok(())
}
