//! Weights & Biases logging (`--enable_wandb`), through a Python sidecar.
//!
//! W&B has no Rust SDK, so imgtrain starts `scripts/wandb_sidecar.py` (compiled into the binary, so an
//! installed imgtrain needs no file beside it) as a child process with the `wandb` package: it follows
//! `metrics.jsonl` as the run appends to it and logs every record, with `run.json` as the W&B config. The
//! sidecar's stdin is a pipe nobody writes to; it closes when imgtrain ends its log, or dies, and the
//! sidecar then logs the rest of the file and finishes the W&B run. imgtrain waits for it.
//!
//! Why not `wandb sync --sync-tensorboard` over the event files: that uploads after the fact (or needs a
//! process watching anyway), logs `simple_value`s as f32, and would give W&B TensorBoard's view of a
//! resume instead of `metrics.jsonl`'s. Following `metrics.jsonl` logs the very numbers the run prints,
//! live, each record as one W&B row with every field, and the same script can send a finished run later
//! (`python trainer/scripts/wandb_sidecar.py RUN_DIR`).
//!
//! Each imgtrain run, a resume included, is a new W&B run holding the whole of `metrics.jsonl` as the
//! resume left it: the epochs it kept, then its own. So no W&B run shows an epoch twice; the W&B run of
//! an interrupted attempt keeps what it had logged.
//!
//! The interpreter is `$IMGTRAIN_PYTHON`, else `python3`. It is checked (`import wandb`) before the
//! run writes anything, and a missing `wandb` stops the run there. A sidecar that fails later (W&B
//! unreachable, not logged in) does not stop training; imgtrain warns when it exits badly.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::error::{Result, TrainError};

/// The sidecar's source.
pub const SIDECAR: &str = include_str!("../scripts/wandb_sidecar.py");

/// The variable naming the Python interpreter that has `wandb`.
pub const PYTHON_VAR: &str = "IMGTRAIN_PYTHON";

/// The W&B project unless `--wandb-project` says otherwise.
pub const DEFAULT_PROJECT: &str = "imgtrain";

/// Where a run's records go in W&B.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WandbConfig {
    /// The W&B project (`--wandb-project`).
    pub project: String,
    /// The W&B run's name (`--wandb-name`); `None`: the output folder's name.
    pub name: Option<String>,
}

/// The interpreter the sidecar runs with: `$IMGTRAIN_PYTHON`, else `python3`.
pub fn python() -> PathBuf {
    std::env::var_os(PYTHON_VAR)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

fn failure(python: &Path, reason: String) -> TrainError {
    TrainError::Wandb {
        python: python.to_owned(),
        reason,
    }
}

/// Checks that `python` runs and imports `wandb`.
pub fn check(python: &Path) -> Result<()> {
    let out = Command::new(python)
        .args(["-c", "import wandb"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            failure(
                python,
                format!("cannot run it ({e}); set {PYTHON_VAR} to a Python that has wandb"),
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("").trim();
    Err(failure(
        python,
        format!(
            "cannot import wandb ({last}): run `{} -m pip install wandb`, or set {PYTHON_VAR} to a \
             Python that has it",
            python.display()
        ),
    ))
}

/// The running sidecar. Dropping it closes its stdin and waits for it to log the last records.
#[derive(Debug)]
pub struct Sidecar {
    python: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Sidecar {
    /// Starts the sidecar with `python` on the run folder `dir` (which holds `run.json`).
    pub fn start(python: &Path, dir: &Path, cfg: &WandbConfig) -> Result<Sidecar> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let name = cfg.name.clone().map(OsString::from).unwrap_or_else(|| {
            dir.file_name()
                .map_or_else(|| OsString::from("imgtrain"), ToOwned::to_owned)
        });
        let mut child = Command::new(python)
            .arg("-c")
            .arg(SIDECAR)
            .arg(&dir)
            .arg("--follow")
            .arg("--project")
            .arg(&cfg.project)
            .arg("--name")
            .arg(name)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| failure(python, format!("cannot start the W&B sidecar: {e}")))?;
        let stdin = child.stdin.take();
        Ok(Sidecar {
            python: python.to_owned(),
            child,
            stdin,
        })
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        drop(self.stdin.take());
        println!("=> W&B: waiting for the sidecar to log the last records");
        match self.child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!(
                "imgtrain: warning: the W&B sidecar ({}) {status}; W&B may lack records",
                self.python.display()
            ),
            Err(e) => eprintln!("imgtrain: warning: waiting for the W&B sidecar: {e}"),
        }
    }
}
