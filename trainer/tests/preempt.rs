//! Preemptible training (issue #14): SIGTERM mid-epoch, then `--resume auto`, gives the uninterrupted
//! run's weights bit for bit on the CPU; a 2-rank run stopped mid-epoch continues on 1 or 4 ranks with
//! the same global batch and reads each epoch's samples exactly as the uninterrupted run did; kill -9
//! during mid-epoch checkpoint writes always leaves a checkpoint that loads and resumes exactly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imgtrain::checkpoint::Checkpoint;
use imgtrain::metrics::Record;

use crate::dist::largest_difference;
use crate::train::{assert_same_state, dataset, imgtrain, stderr, stdout};

/// resnet18, 3 epochs of 24 images in batches of 4: 6 steps an epoch.
const RESNET: &[&str] = &[
    "--arch",
    "resnet18",
    "-b",
    "4",
    "--crop-size",
    "32",
    "--val-resize",
    "36",
    "-j",
    "1",
    "--seed",
    "11",
    "-p",
    "1",
    "--epochs",
    "2",
    "--log-samples",
];

/// No BatchNorm, no dropout (so that 1, 2 and 4 ranks give the same weights); with `-b 4` ([`B4`]), 6
/// steps an epoch (ranks agree whether to stop every 4 steps). A small learning rate: at 0.01 this
/// net's ReLUs sit at their kinks on this data, and a rounding difference of a mean of means (1e-8)
/// could flip one and move a weight by 1e-3.
const ALEXNET: &[&str] = &[
    "--arch",
    "alexnet",
    "--dropout",
    "0",
    "--crop-size",
    "63",
    "--val-resize",
    "70",
    "-j",
    "1",
    "--seed",
    "5",
    "--lr",
    "0.001",
    "-p",
    "1",
    "--epochs",
    "2",
    "--limit-val",
    "4",
    "--log-samples",
];

/// The global batch of the alexnet runs.
const B4: [&str; 2] = ["-b", "4"];

fn run(dir: &Path, args: &[&str], extra: &[&str]) -> String {
    let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    extra.extend(["--output_dir".to_owned(), dir.display().to_string()]);
    stdout(&crate::dist::run(args, &extra))
}

/// A run whose standard output is read on a thread; `started` gets each line until the receiver is
/// dropped, and the thread returns the whole output.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: JoinHandle<String>,
}

fn watch(dir: &Path, args: &[&str], extra: &[&str]) -> Watched {
    let mut child = imgtrain()
        .arg(dataset())
        .args(args)
        .args(extra)
        .arg("--output_dir")
        .arg(dir)
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let output = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    Watched {
        child,
        lines,
        output,
    }
}

impl Watched {
    /// Waits for a line starting with `prefix`.
    fn wait_for_line(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(l) if l.starts_with(prefix) => return,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no line starting with {prefix:?}");
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on a child of this test.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits (at most a minute) for the exit; returns success, stdout and stderr.
    fn finish(mut self) -> (bool, String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "still running a minute later");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut err).unwrap();
        (status.success(), self.output.join().unwrap(), err)
    }
}

/// Each epoch's samples, over every rank's log in `dir`: sorted source indices (a sample read twice
/// appears twice).
fn samples_per_epoch(dir: &Path) -> BTreeMap<u64, Vec<usize>> {
    let mut epochs: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("samples.rank") {
            for (epoch, _, indices) in imgtrain::samples::read(&path).unwrap() {
                epochs.entry(epoch).or_default().extend(indices);
            }
        }
    }
    for v in epochs.values_mut() {
        v.sort_unstable();
    }
    epochs
}

/// The global steps of the training records of `metrics.jsonl`.
fn train_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| match serde_json::from_str::<Record>(l).unwrap() {
            Record::Train(p) => Some(p.global_step),
            _ => None,
        })
        .collect()
}

/// A step of epoch 1 to stop at, different from run to run (1-based, not the last).
fn some_step() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    1 + nanos % 4
}

#[test]
fn sigterm_mid_epoch_then_resume_is_bit_identical() {
    let straight = tempfile::tempdir().unwrap();
    run(straight.path(), RESNET, &[]);
    let stopped = tempfile::tempdir().unwrap();
    let at = some_step();
    let w = watch(stopped.path(), RESNET, &[]);
    w.wait_for_line(&format!("Epoch: [1][{at}/6]"));
    w.signal(libc::SIGTERM);
    let (ok, o, e) = w.finish();
    assert!(ok, "exit status after SIGTERM, at step {at}:\n{o}\n{e}");
    assert!(o.contains("=> stopped by a signal after step "), "{o}");
    let mid = Checkpoint::read(&stopped.path().join("checkpoint.safetensors")).unwrap();
    let position = mid.meta.position.expect("a mid-epoch checkpoint");
    assert_eq!(mid.meta.epoch, 1);
    assert!((1..6).contains(&position.steps), "{position:?}");
    let o = run(stopped.path(), RESNET, &["--resume", "auto"]);
    assert!(
        o.contains(&format!("Epoch: [1][{}/6]", position.steps + 1)),
        "{o}"
    );
    assert!(!o.contains("Epoch: [0]"), "{o}");
    let a = Checkpoint::read(&straight.path().join("checkpoint.safetensors")).unwrap();
    let b = Checkpoint::read(&stopped.path().join("checkpoint.safetensors")).unwrap();
    assert_same_state(&a, &b);
    // The same samples, step by step; metrics without a gap or a step twice.
    let log = |d: &Path| std::fs::read_to_string(d.join("samples.rank0.csv")).unwrap();
    assert_eq!(log(straight.path()), log(stopped.path()));
    assert_eq!(train_steps(stopped.path()), (1..=12).collect::<Vec<_>>());
    assert_eq!(train_steps(straight.path()), train_steps(stopped.path()));
    // The epoch's record covers all of it, as the uninterrupted run's.
    let summary = |d: &Path| {
        let text = std::fs::read_to_string(d.join("summary.csv")).unwrap();
        text.lines()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(straight.path()), summary(stopped.path()));
}

#[test]
fn two_ranks_stopped_mid_epoch_continue_on_one_and_on_four() {
    let straight = tempfile::tempdir().unwrap();
    run(straight.path(), ALEXNET, &B4);
    let two = [
        "-b",
        "4",
        "--multiprocessing-distributed",
        "--nproc-per-node",
        "2",
    ];
    let stopped = tempfile::tempdir().unwrap();
    let w = watch(stopped.path(), ALEXNET, &two);
    w.wait_for_line("Epoch: [0][2/6]");
    // Ctrl-C reaches the launcher, which passes it on: every rank stops at the same step.
    w.signal(libc::SIGINT);
    let (ok, o, e) = w.finish();
    assert!(ok, "{o}\n{e}");
    assert!(o.contains("=> every rank stopped cleanly"), "{o}");
    let mid = Checkpoint::read(&stopped.path().join("checkpoint.safetensors")).unwrap();
    let position = mid.meta.position.expect("a mid-epoch checkpoint");
    assert_eq!((position.global_batch, position.steps), (4, 4));

    let reference = samples_per_epoch(straight.path());
    let a = Checkpoint::read(&straight.path().join("checkpoint.safetensors")).unwrap();
    for ranks in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(stopped.path()).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let n = ranks.to_string();
        let mut extra = vec!["-b", "4", "--resume", "auto"];
        if ranks > 1 {
            extra.extend(["--multiprocessing-distributed", "--nproc-per-node", &n]);
        }
        run(dir.path(), ALEXNET, &extra);
        assert_eq!(samples_per_epoch(dir.path()), reference, "{ranks} rank(s)");
        let b = Checkpoint::read(&dir.path().join("checkpoint.safetensors")).unwrap();
        let (worst, name) = largest_difference(&a, &b);
        eprintln!("resumed on {ranks} rank(s): largest relative difference {worst:e} ({name})");
        assert!(
            worst <= 1e-5,
            "{ranks} rank(s): {name} differs by {worst:e}"
        );
        assert_eq!(
            train_steps(dir.path()),
            (1..=12).collect::<Vec<_>>(),
            "{ranks} rank(s)"
        );
    }
    // Another global batch is refused, naming the way out; with it, the epoch's samples stay the same.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(stopped.path()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let out = imgtrain()
        .arg(dataset())
        .args(ALEXNET)
        .args(["-b", "2", "--resume", "auto", "--output_dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("--batch-size: the checkpoint stopped mid-epoch with a global batch of 4")
            && e.contains("--allow-reshard"),
        "{e}"
    );
    let o = run(
        dir.path(),
        ALEXNET,
        &["-b", "2", "--resume", "auto", "--allow-reshard"],
    );
    assert!(
        o.contains("=> --allow-reshard: the global batch changes from 4 to 2"),
        "{o}"
    );
    assert_eq!(samples_per_epoch(dir.path()), reference);
}

#[test]
fn kill_9_during_mid_epoch_checkpoints_resumes_exactly() {
    let kills: u64 = std::env::var("IMGTRAIN_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let straight = tempfile::tempdir().unwrap();
    run(straight.path(), RESNET, &[]);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoint.safetensors");
    let every = ["--checkpoint-every", "1", "--resume", "auto"];
    for i in 0..kills {
        let w = watch(dir.path(), RESNET, &every);
        w.wait_for_line("Epoch: [");
        // At varied moments: during or between the per-step checkpoint writes.
        std::thread::sleep(Duration::from_millis(50 + i * 137 % 400));
        w.signal(libc::SIGKILL);
        let _ = w.finish();
        if ck.exists()
            && let Err(e) = Checkpoint::read(&ck)
        {
            panic!("after kill {i}: {e}");
        }
    }
    run(dir.path(), RESNET, &every);
    let a = Checkpoint::read(&straight.path().join("checkpoint.safetensors")).unwrap();
    let b = Checkpoint::read(&ck).unwrap();
    assert_same_state(&a, &b);
}

#[test]
fn resume_auto_never_starts_over_a_broken_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoint.safetensors");
    std::fs::write(&ck, b"not a checkpoint").unwrap();
    let out = imgtrain()
        .arg(dataset())
        .args(RESNET)
        .args(["--resume", "auto", "--output_dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{o}");
    assert!(!o.contains("Epoch: ["), "{o}");
    assert!(
        e.starts_with(&format!("imgtrain: error: checkpoint {}", ck.display())),
        "{e}"
    );
    // The broken file is still there for a human to look at.
    assert_eq!(std::fs::read(&ck).unwrap(), b"not a checkpoint");
}
