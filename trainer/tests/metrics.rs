//! The records a training run keeps in its output folder (issue #13): `metrics.jsonl` and `summary.csv`
//! across a resume, `run.json`, and `imgtool plot` drawing a real run.

use std::path::Path;

use imgtrain::checkpoint::Checkpoint;
use imgtrain::meter::python_exp;
use imgtrain::metrics::{EpochRecord, Progress, Record, SUMMARY_HEADER};
use serde_json::Value;

use crate::train::{SMALL, dataset, imgtrain, runs, stderr, stdout, train};

fn records(dir: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(text.ends_with('\n'), "a torn last line:\n{text}");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1))
        })
        .collect()
}

fn epochs(records: &[Record]) -> Vec<EpochRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Epoch(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn summary_rows(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(SUMMARY_HEADER));
    lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

/// The averages printed in parentheses on a progress line, by meter name.
fn printed_avg(line: &str, meter: &str) -> String {
    let field = line
        .split('\t')
        .find(|f| f.starts_with(meter))
        .unwrap_or_else(|| panic!("{meter} not in {line}"));
    let open = field.find('(').unwrap();
    field[open + 1..field.len() - 1].to_owned()
}

/// Each progress record has the numbers of the progress line it was written with.
fn check_progress_against_output(records: &[Record], stdout: &str) {
    let mut checked = 0;
    for r in records {
        let (prefix, p): (String, &Progress) = match r {
            Record::Train(p) => (format!("Epoch: [{}][{}/", p.epoch, p.step), p),
            // Validation lines do not name the epoch: the first line of this step after the epoch's
            // training lines is the one.
            Record::Val(p) => (format!("Test: [{}/", p.step), p),
            Record::Epoch(_) => continue,
        };
        let line = match r {
            Record::Train(_) => stdout.lines().find(|l| l.starts_with(&prefix)),
            _ => {
                let after = stdout
                    .find(&format!("Epoch: [{}] done", p.epoch))
                    .unwrap_or_else(|| panic!("epoch {} not in the output", p.epoch));
                stdout[after..].lines().find(|l| l.starts_with(&prefix))
            }
        }
        .unwrap_or_else(|| panic!("no line {prefix} for {r:?}"));
        assert_eq!(printed_avg(line, "Loss"), python_exp(p.loss, 4), "{line}");
        assert_eq!(
            printed_avg(line, "Acc@1").trim(),
            format!("{:.2}", p.top1),
            "{line}"
        );
        assert_eq!(
            printed_avg(line, "Acc@5").trim(),
            format!("{:.2}", p.top5),
            "{line}"
        );
        assert!(p.images_per_sec > 0.0 && p.lr > 0.0, "{p:?}");
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn metrics_across_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = train(&out, &["--epochs", "1"]);
    let first_stdout = stdout(&first);
    assert_eq!(summary_rows(&out).len(), 1);
    let recs = records(&out);
    // -p 1: every step of 3 training and 2 validation batches, then the epoch.
    assert_eq!(
        recs.iter()
            .filter(|r| matches!(r, Record::Train(_)))
            .count(),
        3
    );
    assert_eq!(
        recs.iter().filter(|r| matches!(r, Record::Val(_))).count(),
        2
    );
    check_progress_against_output(&recs, &first_stdout);
    let e0 = epochs(&recs);
    assert_eq!(e0.len(), 1);
    let ck = Checkpoint::read(&out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        (e0[0].val_top1, e0[0].val_top5),
        (ck.meta.acc1, ck.meta.acc5)
    );
    assert_eq!(e0[0].global_step, ck.meta.global_step);

    // A run that died after writing epoch 1's rows but before its checkpoint, in the middle of a line.
    let planted = {
        let mut e1 = e0[0].clone();
        e1.epoch = 1;
        e1.val_top1 = 99.0;
        e1
    };
    let mut jsonl = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    jsonl += &serde_json::to_string(&Record::Epoch(planted.clone())).unwrap();
    jsonl += "\n{\"kind\":\"train\",\"epo";
    std::fs::write(out.join("metrics.jsonl"), jsonl).unwrap();
    let mut csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    csv += &(planted.csv_row() + "\n");
    std::fs::write(out.join("summary.csv"), csv).unwrap();

    let resumed = train(
        &out,
        &[
            "--epochs",
            "2",
            "--resume",
            out.join("checkpoint.safetensors").to_str().unwrap(),
        ],
    );
    let o = stdout(&resumed);
    assert!(
        o.contains("=> metrics: dropped 2 line(s) of ") && o.contains(" and 1 of "),
        "{o}"
    );
    assert!(o.contains("=> kept the earlier run's run.json as "), "{o}");
    let rows = summary_rows(&out);
    let row_epochs: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(row_epochs, ["0", "1"]);
    let recs = records(&out);
    let all = epochs(&recs);
    assert_eq!(all.iter().map(|e| e.epoch).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(all[0], e0[0], "epoch 0's record is kept as it was");
    // Epoch 1's training steps, once each.
    let steps: Vec<(u64, usize)> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Train(p) => Some((p.epoch, p.step)),
            _ => None,
        })
        .collect();
    assert_eq!(steps, [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]);
    check_progress_against_output(&recs[recs.len() - 6..], &o);

    // The numbers are the run's: the checkpoint's, the printed ones, the CSV's.
    let ck = Checkpoint::read(&out.join("checkpoint.safetensors")).unwrap();
    let e1 = &all[1];
    assert_eq!((e1.val_top1, e1.val_top5), (ck.meta.acc1, ck.meta.acc5));
    assert_eq!((e1.global_step, e1.lr), (ck.meta.global_step, ck.meta.lr));
    assert!(
        o.contains(&format!(
            " * Acc@1 {:.3} Acc@5 {:.3}",
            e1.val_top1, e1.val_top5
        )),
        "{o}"
    );
    assert!(
        o.contains(&format!("Epoch: [1] done: {} images in ", 24)),
        "{o}"
    );
    assert_eq!(rows[1], e1.csv_row().split(',').collect::<Vec<_>>());
    assert_eq!(e1.val_images, 12);
    // The resume is exact, so its epoch 1 is the straight run's.
    let straight = epochs(&records(&runs().straight));
    let key = |e: &EpochRecord| {
        (
            e.train_loss,
            e.train_top1,
            e.val_loss,
            e.val_top1,
            e.val_top5,
            e.lr,
        )
    };
    assert_eq!(key(&straight[1]), key(e1));

    run_json_is_complete(&out);
}

/// `run.json` of the resumed run, and the first run's kept beside it.
fn run_json_is_complete(out: &Path) {
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap()
    };
    let latest = read("run.json");
    let earlier = read("run.1.json");
    assert!(!out.join("run.2.json").exists());
    assert_eq!(latest["format"], "imgtrain-run");
    let args: Vec<&str> = latest["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args[0].ends_with("imgtrain"), "{args:?}");
    assert!(args.contains(&"--resume"), "{args:?}");
    assert!(
        !earlier["command_line"]
            .as_array()
            .unwrap()
            .contains(&Value::from("--resume"))
    );
    assert_eq!(
        latest["resumed_from"].as_str().unwrap(),
        out.join("checkpoint.safetensors").to_str().unwrap()
    );
    assert_eq!(
        latest["data"].as_str().unwrap(),
        dataset().to_str().unwrap()
    );
    let plan = &latest["plan"];
    assert_eq!(plan["seed"], 7);
    assert_eq!(plan["start_epoch"], 1);
    assert_eq!(earlier["plan"]["start_epoch"], 0);
    assert_eq!(plan["arch"], "resnet18");
    assert_eq!(plan["batch_size"], 8);
    assert_eq!(plan["crop_size"], 32);
    assert_eq!(plan["amp"], "off");
    assert_eq!(plan["device"]["device"], "cpu");
    assert_eq!(plan["recipe"]["epochs"], 2);
    assert_eq!(plan["recipe"]["lr"], 0.1);
    let v = &latest["versions"];
    assert_eq!(v["libtorch"], imgtrain::LIBTORCH_VERSION);
    assert_eq!(v["imgtrain"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["cuda_available"], false);
    assert!(v["gpu_name"].is_null());
    assert!(!latest["host"].as_str().unwrap().is_empty());
    let t = latest["start_time"].as_str().unwrap();
    // RFC 3339 in UTC: 2026-12-01T18:30:05.123456789Z
    assert!(
        t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
        "{t}"
    );
    assert!(earlier["start_time"].as_str().unwrap() <= t);
    assert!(
        latest["env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["OMP_NUM_THREADS", "2"]))
    );
}

#[test]
fn evaluate_writes_no_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = imgtrain()
        .arg(dataset())
        .args(SMALL)
        .arg("-e")
        .arg("--resume")
        .arg(runs().first_epoch.join("checkpoint.safetensors"))
        .arg("--output_dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
}

/// `imgtool plot` (its library: this crate cannot run the imgtool binary) on real runs' folders.
#[test]
fn plot_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let runs = runs();
    let dirs = [runs.straight.clone(), runs.first_epoch.clone()];
    let size = imgtool::plot::Size::default();
    let png_path = dir.path().join("chart.png");
    let plotted = imgtool::plot::plot(&dirs, &png_path, size).unwrap();
    assert_eq!(plotted.len(), 2);
    assert_eq!(plotted[0].epochs.len(), 2);
    assert_eq!(plotted[0].name, "straight");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (size.width, size.height));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    // Lines of both runs' colours (the first two of the palette), and text (near-black pixels).
    let count = |rgb: [u8; 3]| pixels.chunks_exact(3).filter(|p| *p == rgb).count();
    assert!(count([31, 119, 180]) > 500, "first run's colour");
    assert!(count([255, 127, 14]) > 100, "second run's colour");
    let dark = pixels
        .chunks_exact(3)
        .filter(|p| p.iter().all(|&c| c < 60))
        .count();
    assert!(dark > 2000, "text and axes: {dark} dark pixels");

    let svg_path = dir.path().join("chart.svg");
    imgtool::plot::plot(&dirs, &svg_path, size).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.contains("width=\"1500\"") && svg.contains("height=\"900\""));
    for text in [
        "straight (2 epochs",
        "first (1 epoch,",
        "Top-1 accuracy (%)",
        "Training images/s",
    ] {
        assert!(svg.contains(text), "{text} missing");
    }
    assert!(svg.matches("<polyline").count() >= 5, "no lines drawn");
}

/// Runs a Python helper of `tests/ref` with `py` and parses the JSON it prints.
fn ref_json(py: &Path, script: &str, arg: &Path) -> Value {
    let out = std::process::Command::new(py)
        .arg(crate::support::crate_file(&format!("tests/ref/{script}")))
        .arg(arg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The scalars TensorBoard shows for `dir` are those of its `metrics.jsonl`, once each, in order, as f32.
fn tensorboard_matches_metrics(py: &Path, dir: &Path) {
    let mut expected: std::collections::BTreeMap<String, Vec<(u64, f32)>> = Default::default();
    for r in records(dir) {
        let (step, scalars) = imgtrain::tensorboard::scalars(&r);
        for (tag, v) in scalars {
            expected.entry(tag).or_default().push((step, v as f32));
        }
    }
    let read = ref_json(py, "read_tensorboard.py", dir);
    let actual: std::collections::BTreeMap<String, Vec<(u64, f32)>> = read
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, events)| {
            let events = events
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap(), e[1].as_f64().unwrap() as f32));
            (tag.clone(), events.collect())
        })
        .collect();
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (tag, want) in &expected {
        assert_eq!(&actual[tag], want, "{tag} in {}", dir.display());
    }
    for tag in [
        "train/loss",
        "train/lr",
        "val/top1",
        "epoch/val_top1",
        "epoch/images_per_sec",
    ] {
        assert!(expected.contains_key(tag), "{tag}");
    }
}

/// TensorBoard reads the events of a run and of its resume as `metrics.jsonl` has them: what a run wrote
/// for an epoch it never finished (planted here) is hidden by the resume, not shown twice.
#[test]
fn tensorboard_events_across_a_resume() {
    let Some(py) = crate::support::ref_python() else {
        return;
    };
    let runs = runs();
    tensorboard_matches_metrics(&py, &runs.straight);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir(&out).unwrap();
    for entry in std::fs::read_dir(&runs.first_epoch).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
    }
    let e0 = epochs(&records(&out)).pop().unwrap();
    // A run that died during epoch 1 after some records: its own events file, after the first's.
    let g = e0.global_step;
    let mut died = imgtrain::tensorboard::EventFile::create(&out, g + 1).unwrap();
    let planted_step = Progress {
        epoch: 1,
        step: 1,
        steps: 3,
        global_step: g + 1,
        lr: 0.1,
        loss: 99.0,
        top1: 99.0,
        top5: 99.0,
        images_per_sec: 1.0,
        data_wait: Some(0.5),
        bad_samples: 0,
    };
    died.record(&Record::Train(planted_step)).unwrap();
    let mut planted_epoch = e0.clone();
    planted_epoch.epoch = 1;
    planted_epoch.global_step = g + 3;
    planted_epoch.val_top1 = 99.0;
    died.record(&Record::Epoch(planted_epoch)).unwrap();
    drop(died);

    train(
        &out,
        &[
            "--epochs",
            "2",
            "--resume",
            out.join("checkpoint.safetensors").to_str().unwrap(),
        ],
    );
    let files = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy()
                .starts_with(imgtrain::tensorboard::EVENTS_PREFIX)
        })
        .count();
    assert_eq!(files, 3, "the first run's, the planted and the resume's");
    tensorboard_matches_metrics(&py, &out);
}

/// A script standing for a Python without wandb: python3 without its site-packages.
fn python_without_wandb(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python-no-wandb");
    std::fs::write(&path, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `--enable_wandb` with an offline W&B: the W&B run holds every record of `metrics.jsonl`, with
/// `run.json` as its config, and imgtrain ends only after the sidecar has logged them.
#[test]
fn wandb_offline_run_holds_the_metrics() {
    let Some(py) = crate::support::ref_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let wandb_dir = dir.path().join("wandb-dir");
    std::fs::create_dir(&wandb_dir).unwrap();
    let result = imgtrain()
        .arg(dataset())
        .args(SMALL)
        .args(["--epochs", "1", "--enable_wandb", "--wandb-name", "small"])
        .arg("--output_dir")
        .arg(&out)
        .env("IMGTRAIN_PYTHON", &py)
        .env("WANDB_MODE", "offline")
        .env("WANDB_DIR", &wandb_dir)
        .env("WANDB_SILENT", "true")
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}\n{}",
        stdout(&result),
        stderr(&result)
    );
    assert!(!stderr(&result).contains("warning"), "{}", stderr(&result));
    let runs = ref_json(&py, "read_wandb.py", &wandb_dir);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["name"], "small");
    let run_json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["config"]["plan"], run_json["plan"]);
    assert_eq!(run["config"]["command_line"], run_json["command_line"]);

    let recs = records(&out);
    let history = run["history"].as_array().unwrap();
    assert_eq!(history.len(), recs.len());
    for (row, r) in history.iter().zip(&recs) {
        let Value::Object(fields) = serde_json::to_value(r).unwrap() else {
            unreachable!()
        };
        let kind = fields["kind"].as_str().unwrap();
        assert_eq!(row["global_step"], fields["global_step"]);
        for (k, v) in fields.iter().filter(|(_, v)| v.is_number()) {
            let logged = &row[format!("{kind}/{k}")];
            assert_eq!(logged.as_f64(), v.as_f64(), "{kind}/{k}: {row}");
        }
    }
}

/// `--enable_wandb` without the wandb package (or without the interpreter) stops the run before it
/// writes anything, naming the interpreter and the fix.
#[test]
fn wandb_without_the_package_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let no_wandb = python_without_wandb(dir.path());
    let missing = dir.path().join("no-such-python");
    for (python, says) in [
        (
            &no_wandb,
            "cannot import wandb (ModuleNotFoundError: No module named 'wandb')",
        ),
        (&missing, "cannot run it"),
    ] {
        let out_dir = dir.path().join("run");
        let out = imgtrain()
            .arg(dataset())
            .args(SMALL)
            .args(["--epochs", "1", "--enable-wandb"])
            .arg("--output_dir")
            .arg(&out_dir)
            .env("IMGTRAIN_PYTHON", python)
            .output()
            .unwrap();
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(!out.status.success(), "{o}\n{e}");
        assert!(!o.contains("Epoch: ["), "training started:\n{o}");
        let head = format!(
            "imgtrain: error: --enable_wandb: {}: {says}",
            python.display()
        );
        assert!(e.starts_with(&head), "{e}");
        assert!(e.contains("IMGTRAIN_PYTHON"), "{e}");
        if python == &no_wandb {
            assert!(e.contains(" -m pip install wandb`"), "{e}");
        }
        assert!(!out_dir.join("run.json").exists());
    }
}

/// The sidecar's follower (run by itself, no training) reads appended lines once, waits for a line's
/// end, and after the file is rewritten (atomically, or cut shorter in place: a run starting at an
/// earlier epoch) reads only the lines that differ from what it had read.
#[test]
fn wandb_sidecar_follows_a_rewritten_file() {
    let Some(py) = crate::support::ref_python() else {
        return;
    };
    let check = r#"
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("sidecar", sys.argv[1])
sidecar = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sidecar)
path = os.path.join(sys.argv[2], "metrics.jsonl")
follower = sidecar.Follower(path)
assert follower.new_lines() == [], "no file yet"
with open(path, "w") as f:
    f.write("a\nb\nc\nhal")
assert follower.new_lines() == ["a", "b", "c"]
with open(path, "a") as f:
    f.write("f\n")
assert follower.new_lines() == ["half"]
with open(path + ".tmp", "w") as f:
    f.write("a\nb\nx\n")
os.replace(path + ".tmp", path)
assert follower.new_lines() == ["x"]
with open(path, "r+") as f:
    f.truncate(2)
with open(path, "a") as f:
    f.write("y\n")
assert follower.new_lines() == ["y"]
print("ok")
"#;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(check)
        .arg(crate::support::crate_file("scripts/wandb_sidecar.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && stdout(&out) == "ok\n",
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
