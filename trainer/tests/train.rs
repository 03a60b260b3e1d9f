//! `imgtrain` training and evaluation end to end on the CPU: exact resume, evaluate-only, and bad input
//! rejected before any training starts.
//!
//! Tiny data keeps this fast: 4 classes, 6 training and 3 validation images per class at 48-64 px,
//! resnet18 on 32 px crops, batches of 8.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use imgtrain::checkpoint::{Checkpoint, MOMENTUM_PREFIX};

/// The shared dataset, written once per test binary.
pub(crate) fn dataset_config() -> imgfixtures::SynthConfig {
    imgfixtures::SynthConfig {
        classes: 4,
        train_per_class: 6,
        val_per_class: 3,
        min_side: 48,
        max_side: 64,
        ..Default::default()
    }
}

pub(crate) fn dataset() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::support::shared_dir("dataset");
        imgfixtures::write_dataset(&dataset_config(), &dir).unwrap();
        dir
    })
}

/// Two finished training runs shared by several tests: one straight through 2 epochs, and one of 1 epoch
/// that another test resumes.
pub(crate) struct Runs {
    pub(crate) straight: PathBuf,
    pub(crate) first_epoch: PathBuf,
    pub(crate) straight_stdout: String,
}

pub(crate) fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = crate::support::shared_dir("runs");
        let straight = dir.join("straight");
        let first_epoch = dir.join("first");
        let out = train(&straight, &["--epochs", "2"]);
        let straight_stdout = stdout(&out);
        let out1 = train(&first_epoch, &["--epochs", "1"]);
        assert!(out1.status.success(), "{}", stderr(&out1));
        Runs {
            straight,
            first_epoch,
            straight_stdout,
        }
    })
}

pub(crate) fn imgtrain() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgtrain"));
    // The CPU, with a fixed thread count: libtorch's CPU kernels are deterministic for a given thread
    // count, CUDA's are not.
    cmd.env("CUDA_VISIBLE_DEVICES", "")
        .env("OMP_NUM_THREADS", "2");
    cmd
}

/// The flags every small run shares.
pub(crate) const SMALL: &[&str] = &[
    "--arch",
    "resnet18",
    "-b",
    "8",
    "--crop-size",
    "32",
    "--val-resize",
    "36",
    "-j",
    "2",
    "--seed",
    "7",
    "-p",
    "1",
];

pub(crate) fn train(out_dir: &Path, extra: &[&str]) -> Output {
    let out = imgtrain()
        .arg(dataset())
        .args(SMALL)
        .arg("--output_dir")
        .arg(out_dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imgtrain {extra:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs imgtrain expecting failure before training; returns stderr.
pub(crate) fn fails_before_training(args: &[&std::ffi::OsStr]) -> String {
    let out = imgtrain().args(args).output().unwrap();
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(!out.status.success(), "expected failure:\n{o}\n{e}");
    assert!(!o.contains("Epoch: ["), "training started:\n{o}");
    assert!(e.starts_with("imgtrain: error: "), "{e}");
    e
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

pub(crate) fn assert_same_state(a: &Checkpoint, b: &Checkpoint) {
    let names_a: Vec<&str> = a.names().collect();
    let names_b: Vec<&str> = b.names().collect();
    assert_eq!(names_a, names_b);
    assert!(
        names_a.iter().any(|n| n.starts_with(MOMENTUM_PREFIX)),
        "no momentum buffers saved"
    );
    assert!(names_a.contains(&"bn1.running_mean"), "{names_a:?}");
    for name in names_a {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert!(x.equal(y), "{name} differs");
    }
    let (ma, mb) = (&a.meta, &b.meta);
    assert_eq!(
        (ma.epoch, ma.global_step, ma.seed, ma.lr),
        (mb.epoch, mb.global_step, mb.seed, mb.lr)
    );
    assert_eq!(ma.recipe, mb.recipe);
    assert_eq!(
        (ma.acc1, ma.acc5, ma.best_acc1),
        (mb.acc1, mb.acc5, mb.best_acc1)
    );
}

#[test]
fn resume_is_exact() {
    let runs = runs();
    let dir = tempfile::tempdir().unwrap();
    let first = runs.first_epoch.join("checkpoint.safetensors");
    let out = train(
        dir.path(),
        &["--epochs", "2", "--resume", first.to_str().unwrap()],
    );
    let o = stdout(&out);
    assert!(o.contains("=> loaded checkpoint"), "{o}");
    assert!(!o.contains("Epoch: [0]"), "resumed at epoch 1:\n{o}");
    assert!(o.contains("Epoch: [1][1/3]"), "{o}");

    let straight = Checkpoint::read(&runs.straight.join("checkpoint.safetensors")).unwrap();
    let resumed = Checkpoint::read(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(straight.meta.epoch, 2);
    assert_same_state(&straight, &resumed);

    // The comparison can fail: one epoch less is another state.
    let one = Checkpoint::read(&first).unwrap();
    assert_eq!(one.meta.epoch, 1);
    assert!(
        !one.tensor("conv1.weight")
            .unwrap()
            .equal(straight.tensor("conv1.weight").unwrap())
    );
}

#[test]
fn output_reads_like_main_py() {
    let o = &runs().straight_stdout;
    assert!(o.contains("=> creating model 'resnet18'"), "{o}");
    // 24 images in batches of 8; printed every batch (-p 1), counted from 1 like ProgressMeter.
    for k in 1..=3 {
        assert!(o.contains(&format!("Epoch: [0][{k}/3]\tTime ")), "{o}");
    }
    let line = o
        .lines()
        .find(|l| l.starts_with("Epoch: [1][3/3]"))
        .unwrap();
    for field in ["\tTime ", "\tData ", "\tLoss ", "\tAcc@1 ", "\tAcc@5 "] {
        assert!(line.contains(field), "{line}");
    }
    assert!(o.contains("Test: [1/2]\tTime "), "{o}");
    assert_eq!(
        o.lines().filter(|l| l.starts_with(" * Acc@1 ")).count(),
        2,
        "{o}"
    );
    assert!(o.contains("Epoch: [0] done: 24 images in "), "{o}");
    assert!(o.contains("images/s"), "{o}");
    assert!(o.contains("% of the time waiting for data"), "{o}");
    assert!(o.contains("== summary"), "{o}");
    let best = runs().straight.join("model_best.safetensors");
    assert!(best.is_file());
    assert!(Checkpoint::read(&best).is_ok());
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(&runs().straight)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn resume_restores_the_whole_recipe() {
    // Not main.py's defaults anywhere: a resume that fell back to a default would differ.
    const RECIPE: &[&str] = &[
        "--momentum",
        "0.5",
        "--wd",
        "0.01",
        "--lr",
        "0.05",
        "--warmup-epochs",
        "0.5",
        "--label-smoothing",
        "0.1",
    ];
    let dir = tempfile::tempdir().unwrap();
    let (straight, first, resumed) = (
        dir.path().join("straight"),
        dir.path().join("first"),
        dir.path().join("resumed"),
    );
    train(&straight, &[RECIPE, &["--epochs", "2"]].concat());
    train(&first, &[RECIPE, &["--epochs", "1"]].concat());
    let first_ck = first.join("checkpoint.safetensors");
    let out = train(
        &resumed,
        &["--epochs", "2", "--resume", first_ck.to_str().unwrap()],
    );
    let o = stdout(&out);
    assert!(
        o.contains("recipe: lr 0.05, momentum 0.5, wd 0.01, Step { step_size: 30, gamma: 0.1 } schedule, 0.5 warm-up epoch(s), label smoothing 0.1"),
        "{o}"
    );
    assert!(
        o.contains("=> --epochs 2 overrides the checkpoint's 1"),
        "{o}"
    );
    let a = Checkpoint::read(&straight.join("checkpoint.safetensors")).unwrap();
    let b = Checkpoint::read(&resumed.join("checkpoint.safetensors")).unwrap();
    assert_same_state(&a, &b);
    assert_eq!(b.meta.recipe.momentum, 0.5);
    assert_eq!(b.meta.recipe.label_smoothing, 0.1);
    // An explicit flag on resume wins, and is printed as an override.
    let out = train(
        &dir.path().join("override"),
        &[
            "--epochs",
            "2",
            "--momentum",
            "0.8",
            "--resume",
            first_ck.to_str().unwrap(),
        ],
    );
    let o = stdout(&out);
    assert!(
        o.contains("=> --momentum 0.8 overrides the checkpoint's 0.5"),
        "{o}"
    );
    let c = Checkpoint::read(&dir.path().join("override/checkpoint.safetensors")).unwrap();
    assert_eq!(c.meta.recipe.momentum, 0.8);
    assert!(
        !c.tensor("conv1.weight")
            .unwrap()
            .equal(a.tensor("conv1.weight").unwrap())
    );
}

/// A copy of the dataset's val split, with `broken` (relative to val/) replaced by a truncated JPEG, or
/// removed when `remove`.
fn val_copy(broken: &str, remove: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "val"] {
        let from = dataset().join(split);
        for class in std::fs::read_dir(&from).unwrap() {
            let class = class.unwrap();
            let to = dir.path().join(split).join(class.file_name());
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(class.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
    }
    let target = dir.path().join("val").join(broken);
    if remove {
        std::fs::remove_file(&target).unwrap();
    } else {
        let bytes = std::fs::read(&target).unwrap();
        std::fs::write(&target, &bytes[..bytes.len() / 3]).unwrap();
    }
    dir
}

#[test]
fn validation_leaves_a_bad_image_out_instead_of_counting_another_twice() {
    let ck = runs().straight.join("checkpoint.safetensors");
    let class = std::fs::read_dir(dataset().join("val"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    let file = std::fs::read_dir(dataset().join("val").join(&class))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    let broken = format!("{class}/{file}");
    let evaluate = |dir: &Path| {
        let out = imgtrain()
            .arg(dir)
            .args(SMALL)
            .arg("-e")
            .arg("--resume")
            .arg(&ck)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let with_bad = val_copy(&broken, false);
    let without = val_copy(&broken, true);
    let (o_bad, o_without) = (evaluate(with_bad.path()), evaluate(without.path()));
    let acc = |o: &str| {
        o.lines()
            .find(|l| l.starts_with(" * Acc@1 "))
            .unwrap()
            .split_whitespace()
            .take(5)
            .collect::<Vec<_>>()
            .join(" ")
    };
    // The bad image is named and left out: the same accuracy as without the file, over 11 of 12.
    assert_eq!(acc(&o_bad), acc(&o_without), "{o_bad}\n{o_without}");
    assert!(o_bad.contains("=> val image left out: "), "{o_bad}");
    assert!(o_bad.contains(&broken), "{o_bad}");
    assert!(
        o_bad.contains("over 11 of 12 images (1 bad image(s) left out)"),
        "{o_bad}"
    );
    assert!(
        o_bad.contains("over 11 of 12 images; 1 bad ones left out"),
        "{o_bad}"
    );
    assert!(o_without.contains("over 11 images"), "{o_without}");
}

/// The temporary files of a checkpoint write in `dir`, with the process that wrote each.
fn checkpoint_temporaries(dir: &Path) -> Vec<(String, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            ["checkpoint.safetensors", "model_best.safetensors"]
                .iter()
                .find_map(|d| imgloader::atomic::temporary_owner(&name, d))
                .map(|pid| (name, pid))
        })
        .collect()
}

/// `kill -9` at moments spread over a run, half of them while a checkpoint is being written: whatever
/// checkpoint is there reads and checks out, and the next start removes the temporary files. The number
/// of kills is `IMGTRAIN_KILLS` (6 here; RELIABILITY.md's long form runs 50).
#[test]
fn checkpoints_survive_kill_9() {
    let kills: u64 = std::env::var("IMGTRAIN_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("checkpoint.safetensors");
    let mut mid_write = 0;
    for i in 0..kills {
        let mut child = imgtrain()
            .arg(dataset())
            .args(SMALL)
            .args(["--epochs", "1000", "--output_dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        if i % 2 == 0 {
            // While a write is under way: as soon as this process's temporary file appears, then 0-19 ms.
            while !checkpoint_temporaries(dir.path())
                .iter()
                .any(|(_, p)| *p == pid)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no checkpoint write seen"
                );
                assert!(child.try_wait().unwrap().is_none(), "imgtrain exited");
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            std::thread::sleep(std::time::Duration::from_millis(i * 7 % 20));
        } else {
            std::thread::sleep(std::time::Duration::from_millis(700 + i * 611 % 3000));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if checkpoint_temporaries(dir.path())
            .iter()
            .any(|(_, p)| *p == pid)
        {
            mid_write += 1;
        }
        if ck.exists()
            && let Err(e) = Checkpoint::read(&ck)
        {
            panic!("after kill {i}: {e}");
        }
    }
    assert!(
        kills < 2 || mid_write > 0,
        "no kill landed during a write: the test did not test"
    );
    // Each start removed what the kill before it left; the last kill's temporary (if any) is still here.
    let left = checkpoint_temporaries(dir.path());
    assert!(left.len() <= 1, "{left:?}");
    let out = train(dir.path(), &["--epochs", "1"]);
    let o = stdout(&out);
    assert_eq!(
        o.matches("left by an interrupted checkpoint write").count(),
        left.len(),
        "{o}"
    );
    assert!(checkpoint_temporaries(dir.path()).is_empty());
    Checkpoint::read(&ck).unwrap();
}

#[test]
fn evaluate_only_reproduces_the_checkpoint_accuracy() {
    let ck_path = runs().straight.join("checkpoint.safetensors");
    let ck = Checkpoint::read(&ck_path).unwrap();
    let out = imgtrain()
        .arg(dataset())
        .args(SMALL)
        .arg("-e")
        .arg("--resume")
        .arg(&ck_path)
        .output()
        .unwrap();
    let o = stdout(&out);
    assert!(out.status.success(), "{o}\n{}", stderr(&out));
    assert!(!o.contains("Epoch: ["), "evaluate must not train:\n{o}");
    let expected = format!(" * Acc@1 {:.3} Acc@5 {:.3}", ck.meta.acc1, ck.meta.acc5);
    assert!(o.contains(&expected), "expected {expected:?} in\n{o}");
    // Evaluation writes nothing.
    let after = Checkpoint::read(&ck_path).unwrap();
    assert_eq!(after.meta, ck.meta);
    // The pure-Rust decoder evaluates the same model too (its pixels differ from PIL's by a level or so,
    // so the accuracy may move a little, not the run's success).
    let out = imgtrain()
        .arg(dataset())
        .args(SMALL)
        .args(["-e", "--jpeg", "zune", "--resume"])
        .arg(&ck_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(" * Acc@1 "), "{}", stdout(&out));
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let good = runs().first_epoch.join("checkpoint.safetensors");
    let before = std::fs::read(&good).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = imgtrain()
        .arg(dataset())
        .args(SMALL)
        .args(["--epochs", "3", "--lr", "1e30", "--output_dir"])
        .arg(dir.path())
        .arg("--resume")
        .arg(&good)
        .output()
        .unwrap();
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{o}\n{e}");
    // An explicit --lr wins over the checkpoint's, and says so.
    assert!(
        o.contains("=> --lr 1e30 overrides the checkpoint's 0.1"),
        "{o}"
    );
    assert!(e.contains("loss is "), "{e}");
    assert!(e.contains("at epoch 1, step "), "{e}");
    assert!(
        e.contains(&format!("The last good checkpoint is {}", good.display())),
        "{e}"
    );
    assert!(!dir.path().join("checkpoint.safetensors").exists());
    assert_eq!(std::fs::read(&good).unwrap(), before);
}

#[test]
fn missing_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let e = fails_before_training(&[missing.as_os_str()]);
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("cannot read the dataset folder"), "{e}");

    // A folder without splits says what it looked for.
    let e = fails_before_training(&[dir.path().as_os_str()]);
    assert!(
        e.contains(
            "no train split: looked for train.tar, ILSVRC2012_img_train.tar, train/, \
             ILSVRC/Data/CLS-LOC/train/ (class folders or webdataset shards)"
        ),
        "{e}"
    );
    std::fs::create_dir(dir.path().join("train")).unwrap();
    let e = fails_before_training(&[
        dir.path().as_os_str(),
        os("--output_dir"),
        dir.path().as_os_str(),
    ]);
    assert!(e.contains("no val split"), "{e}");
}

#[test]
fn empty_dataset() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "val"] {
        std::fs::create_dir_all(dir.path().join(split).join("n00000000")).unwrap();
    }
    let e = fails_before_training(&[dir.path().as_os_str()]);
    assert!(e.contains("train data"), "{e}");
    assert!(e.contains("n00000000"), "{e}");
}

#[test]
fn wrong_checkpoint_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    let run = |ck: &Path| {
        fails_before_training(&[
            dataset().as_os_str(),
            os("--resume"),
            ck.as_os_str(),
            os("--output_dir"),
            dir.path().as_os_str(),
        ])
    };
    let e = run(&garbage);
    assert!(
        e.contains(&format!("checkpoint {}", garbage.display())),
        "{e}"
    );
    assert!(e.contains("not a safetensors file"), "{e}");

    // Plain weights (safetensors without our metadata) point to --pretrained.
    let weights = dir.path().join("weights.safetensors");
    tch::Tensor::write_safetensors(
        &[("fc.bias", tch::Tensor::zeros([4], tch::kind::FLOAT_CPU))],
        &weights,
    )
    .unwrap();
    let e = run(&weights);
    assert!(e.contains("not an imgtrain checkpoint"), "{e}");
    assert!(e.contains("--pretrained"), "{e}");

    // A flipped byte in the tensor data fails the checksum.
    let mut bytes = std::fs::read(runs().first_epoch.join("checkpoint.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x40;
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, &bytes).unwrap();
    let e = run(&corrupt);
    assert!(e.contains("checksum mismatch"), "{e}");

    // Truncated: the safetensors header promises more bytes than there are.
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..n / 2]).unwrap();
    let e = run(&truncated);
    assert!(e.contains("not a safetensors file"), "{e}");

    let e = run(&dir.path().join("absent.safetensors"));
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn checkpoint_of_another_arch() {
    let ck = runs().first_epoch.join("checkpoint.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let e = fails_before_training(&[
        dataset().as_os_str(),
        os("--arch"),
        os("resnet50"),
        os("--resume"),
        ck.as_os_str(),
        os("--output_dir"),
        dir.path().as_os_str(),
    ]);
    assert!(
        e.contains("holds a resnet18 model but --arch is resnet50"),
        "{e}"
    );
}

#[test]
fn unwritable_output_dir() {
    // Under a regular file nothing can be created, whoever runs the test (root ignores permissions).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out_dir = file.join("out");
    let e = fails_before_training(&[
        dataset().as_os_str(),
        os("--output_dir"),
        out_dir.as_os_str(),
    ]);
    assert!(
        e.contains(&format!("output dir {}", out_dir.display())),
        "{e}"
    );
    assert!(e.contains("not writable"), "{e}");
}

#[test]
fn unknown_arch_lists_the_choices() {
    let e = fails_before_training(&[dataset().as_os_str(), os("-a"), os("resnet-18")]);
    assert!(e.contains("unknown architecture \"resnet-18\""), "{e}");
    for arch in imgtrain::models::ARCHS {
        assert!(e.contains(arch), "{e}");
    }
}

#[test]
fn bad_flag_values() {
    let d = dataset().as_os_str();
    let e = fails_before_training(&[d, os("--crop-size"), os("64"), os("--val-resize"), os("32")]);
    assert!(
        e.contains("--val-resize: 32 is smaller than --crop-size 64"),
        "{e}"
    );
    let e = fails_before_training(&[d, os("--amp"), os("bf16")]);
    assert!(e.contains("needs a CUDA device"), "{e}");
    let e = fails_before_training(&[d, os("--pretrained")]);
    assert!(e.contains("--pretrained: needs a weights file"), "{e}");
    let e = fails_before_training(&[d, os("--limit-train"), os("0")]);
    assert!(e.contains("--limit-train"), "{e}");
    let e = fails_before_training(&[d, os("--epochs"), os("3"), os("--warmup-epochs"), os("5")]);
    assert!(
        e.contains("--warmup-epochs: 5 is not less than --epochs 3"),
        "{e}"
    );
    // Negative numbers reach the range checks, with or without `=`.
    for args in [
        [os("--lr"), os("-0.1")],
        [os("--lr=-0.1"), os("--momentum=0.9")],
    ] {
        let e = fails_before_training(&[d, args[0], args[1]]);
        assert!(e.contains("--lr: -0.1 must be a positive number"), "{e}");
    }
    let e = fails_before_training(&[d, os("--momentum"), os("-0.5")]);
    assert!(e.contains("--momentum: -0.5 must be in [0, 1)"), "{e}");
    let e = fails_before_training(&[d, os("--wd"), os("-1")]);
    assert!(e.contains("--wd: -1 must be >= 0"), "{e}");
    let e = fails_before_training(&[d, os("--warmup-epochs"), os("-2")]);
    assert!(e.contains("--warmup-epochs: -2 must be >= 0"), "{e}");
    let out = imgtrain()
        .args([d, os("--jpeg"), os("libpng")])
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("--jpeg") && e.contains("unknown JPEG decoder \"libpng\""),
        "{e}"
    );
}

#[test]
fn dummy_data_needs_no_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out = imgtrain()
        .args([
            "--dummy",
            "--limit-train",
            "16",
            "--limit-val",
            "8",
            "--epochs",
            "1",
        ])
        .args(SMALL)
        .arg("--output_dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let o = stdout(&out);
    assert!(out.status.success(), "{o}\n{}", stderr(&out));
    assert!(o.contains("Epoch: [0] done: 16 images in "), "{o}");
    assert!(o.contains("(1000 classes; chance is 0.1)"), "{o}");
    let ck = Checkpoint::read(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.meta.classes.len(), 1000);
    assert_eq!(ck.tensor("fc.weight").unwrap().size(), [1000, 512]);
}
