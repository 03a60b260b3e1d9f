//! The model zoo: names, errors, a few training steps of every architecture, and the same logits as
//! torchvision for the same weights and input.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use imgtrain::models::{self, ARCHS, ModelError};
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use crate::support::{crate_file, ref_python};

/// One libtorch intra-op thread. Tests run side by side (and beside the Python reference) on few cores;
/// more threads only make them wait on each other's barriers, which made these tests 10-50x slower.
fn one_thread() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tch::set_num_threads(1));
}

/// The same values in channels_last layout (NHWC strides), the layout the trainer feeds its models.
fn channels_last(xs: &Tensor) -> Tensor {
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn sorted_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A small model for the weight-file tests: mobilenet_v3_small, 1.5M parameters.
fn small(num_classes: i64, seed: i64) -> (VarStore, models::Model) {
    one_thread();
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let model = models::build("mobilenet_v3_small", &vs.root(), num_classes).unwrap();
    (vs, model)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn unknown_arch_error_lists_the_choices() {
    let vs = VarStore::new(Device::Cpu);
    let err = models::build("resnet51", &vs.root(), 10).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnknownArch { arch, .. } if arch == "resnet51"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("\"resnet51\""), "{msg}");
    for arch in ARCHS {
        assert!(msg.contains(arch), "{arch} missing from: {msg}");
    }
    assert!(
        vs.variables().is_empty(),
        "nothing is created for an unknown architecture"
    );
    assert_eq!(models::min_image_size("resnet51"), None);
}

#[test]
fn zero_classes_is_an_error() {
    let vs = VarStore::new(Device::Cpu);
    let err = models::build("resnet18", &vs.root(), 0).unwrap_err();
    assert!(
        matches!(err, ModelError::NumClasses { num_classes: 0 }),
        "{err:?}"
    );
    assert!(vs.variables().is_empty());
}

#[test]
fn resnet18_has_torchvision_names_and_size() {
    let vs = VarStore::new(Device::Cpu);
    let model = models::build("resnet18", &vs.root(), 1000).unwrap();
    assert_eq!(model.arch(), "resnet18");
    let vars = vs.variables();
    // torchvision's resnet18 state_dict: 122 keys, 20 of them num_batches_tracked.
    assert_eq!(vars.len(), 102);
    for name in [
        "conv1.weight",
        "bn1.running_mean",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.running_var",
        "fc.bias",
    ] {
        assert!(vars.contains_key(name), "{name} missing");
    }
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64;
    assert_eq!(
        params, 11_689_512,
        "torchvision's ResNet18_Weights num_params"
    );
    // Batch norms start as torchvision's: weight 1, bias 0, running statistics 0 and 1.
    assert_eq!(vars["bn1.weight"].min().double_value(&[]), 1.0);
    assert_eq!(vars["bn1.bias"].abs().max().double_value(&[]), 0.0);
    assert_eq!(vars["bn1.running_var"].min().double_value(&[]), 1.0);
}

fn write(path: &Path, tensors: &[(String, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

#[test]
fn pretrained_round_trip_ignores_num_batches_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    let (src, src_model) = small(10, 1);
    let mut tensors = sorted_vars(&src);
    let counter = "features.0.1.num_batches_tracked".to_owned();
    tensors.push((counter.clone(), Tensor::from(7i64)));
    write(&file, &tensors);

    let (mut dst, dst_model) = small(10, 2);
    let before = dst.variables()["features.0.0.weight"].copy();
    let report = models::load_pretrained(&mut dst, &file).unwrap();
    assert_eq!(report.path, file);
    assert_eq!(report.loaded, src.len());
    assert_eq!(report.ignored, vec![counter]);
    assert!(
        max_abs_diff(&before, &dst.variables()["features.0.0.weight"]) > 0.0,
        "weights changed"
    );
    for (name, t) in sorted_vars(&src) {
        assert_eq!(max_abs_diff(&t, &dst.variables()[&name]), 0.0, "{name}");
    }
    assert_eq!(
        dst.trainable_variables().len(),
        src.trainable_variables().len()
    );
    assert!(
        dst.trainable_variables().iter().all(Tensor::requires_grad),
        "still trainable after loading"
    );
    let xs = Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU);
    let (a, b) = tch::no_grad(|| {
        (
            src_model.forward_t(&xs, false),
            dst_model.forward_t(&xs, false),
        )
    });
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn pretrained_half_precision_file_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("half.safetensors");
    let (src, _) = small(10, 1);
    let tensors: Vec<_> = sorted_vars(&src)
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Half)))
        .collect();
    write(&file, &tensors);
    let (mut dst, _) = small(10, 2);
    models::load_pretrained(&mut dst, &file).unwrap();
    for (name, t) in tensors {
        let var = &dst.variables()[&name];
        assert_eq!(var.kind(), Kind::Float, "{name} keeps the model's dtype");
        assert_eq!(max_abs_diff(&t.to_kind(Kind::Float), var), 0.0, "{name}");
    }
}

#[test]
fn pretrained_missing_and_unexpected_names_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("renamed.safetensors");
    let (src, _) = small(10, 1);
    let mut tensors: Vec<_> = sorted_vars(&src)
        .into_iter()
        .filter(|(n, _)| n != "classifier.3.weight")
        .collect();
    tensors.push((
        "classifier.9.weight".to_owned(),
        Tensor::zeros([3], tch::kind::FLOAT_CPU),
    ));
    write(&file, &tensors);

    let (mut dst, _) = small(10, 2);
    let before = sorted_vars(&dst)
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect::<Vec<_>>();
    let err = models::load_pretrained(&mut dst, &file).unwrap_err();
    let msg = err.to_string();
    let ModelError::WeightsMismatch {
        path,
        missing,
        unexpected,
        mismatched,
    } = err
    else {
        panic!("{msg}")
    };
    assert_eq!(path, file);
    assert_eq!(
        missing,
        vec![("classifier.3.weight".to_owned(), vec![10, 1024])]
    );
    assert_eq!(
        unexpected,
        vec![("classifier.9.weight".to_owned(), vec![3])]
    );
    assert!(mismatched.is_empty());
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("classifier.3.weight [10, 1024]"), "{msg}");
    assert!(msg.contains("classifier.9.weight [3]"), "{msg}");
    for (name, t) in before {
        assert_eq!(
            max_abs_diff(&t, &dst.variables()[&name]),
            0.0,
            "{name} must be untouched after a failed load"
        );
    }
}

#[test]
fn pretrained_wrong_shapes_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imagenet-head.safetensors");
    let (src, _) = small(1000, 1);
    write(&file, &sorted_vars(&src));
    let (mut dst, _) = small(10, 2);
    let err = models::load_pretrained(&mut dst, &file).unwrap_err();
    let msg = err.to_string();
    let ModelError::WeightsMismatch {
        missing,
        unexpected,
        mismatched,
        ..
    } = err
    else {
        panic!("{msg}")
    };
    assert!(missing.is_empty() && unexpected.is_empty(), "{msg}");
    assert_eq!(
        mismatched,
        vec![
            ("classifier.3.bias".to_owned(), vec![1000], vec![10]),
            (
                "classifier.3.weight".to_owned(),
                vec![1000, 1024],
                vec![10, 1024]
            ),
        ]
    );
    assert!(
        msg.contains("classifier.3.weight (file [1000, 1024], model [10, 1024])"),
        "{msg}"
    );
    assert!(msg.contains("number of classes"), "{msg}");
}

#[test]
fn pretrained_integer_tensor_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ints.safetensors");
    let (src, _) = small(10, 1);
    let tensors: Vec<_> = sorted_vars(&src)
        .into_iter()
        .map(|(n, t)| {
            if n == "classifier.3.bias" {
                (n, t.to_kind(Kind::Int64))
            } else {
                (n, t)
            }
        })
        .collect();
    write(&file, &tensors);
    let (mut dst, _) = small(10, 2);
    let err = models::load_pretrained(&mut dst, &file).unwrap_err();
    assert!(
        matches!(&err, ModelError::WeightsDtype { name, kind: Kind::Int64, .. } if name == "classifier.3.bias"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn unreadable_weight_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    fs::write(&garbage, b"this is not a safetensors file").unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    let (src, _) = small(10, 1);
    write(&truncated, &sorted_vars(&src));
    let bytes = fs::read(&truncated).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let absent = dir.path().join("absent.safetensors");
    for file in [garbage, truncated, absent] {
        let (mut dst, _) = small(10, 2);
        let err = models::load_pretrained(&mut dst, &file).unwrap_err();
        assert!(
            matches!(&err, ModelError::ReadWeights { path, .. } if *path == file),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is chained"
        );
    }
}

/// forward_t(train) and backward on a batch of 2 of tiny channels_last images (as the trainer feeds
/// them): finite losses and gradients, gradients reaching the weights, weights moving. Tiny is 64×64:
/// smaller inputs leave the last batch norms one pixel of two images, whose batch statistics are degenerate
/// (at 32×32, efficientnet's first gradients reach 1e14 and its second loss is NaN, in torchvision too).
#[test]
fn every_arch_trains_a_few_steps_on_tiny_inputs() {
    one_thread();
    let start = Instant::now();
    for &arch in ARCHS {
        let t0 = Instant::now();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let model = models::build(arch, &vs.root(), 10).unwrap();
        let mut opt = nn::Sgd::default().build(&vs, 1e-3).unwrap();
        let size = 64;
        assert!(models::min_image_size(arch).unwrap() <= size, "{arch}");
        let xs = channels_last(&Tensor::randn([2, 3, size, size], tch::kind::FLOAT_CPU));
        let labels = Tensor::from_slice(&[1i64, 7]);
        let params: Vec<(String, Tensor)> = sorted_vars(&vs)
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        assert_eq!(params.len(), vs.trainable_variables().len());
        let first: Vec<Tensor> = params.iter().map(|(_, t)| t.copy()).collect();
        for step in 0..2 {
            let logits = model.forward_t(&xs, true);
            assert_eq!(logits.size(), [2, 10], "{arch}");
            let loss = logits.cross_entropy_for_logits(&labels);
            let value = loss.double_value(&[]);
            assert!(value.is_finite(), "{arch} step {step}: loss {value}");
            opt.zero_grad();
            loss.backward();
            for (name, p) in &params {
                let grad = p.grad();
                assert!(grad.defined(), "{arch} step {step}: no gradient for {name}");
                assert!(
                    grad.isfinite().all().int64_value(&[]) == 1,
                    "{arch} step {step}: non-finite gradient of {name}"
                );
            }
            if step == 0 {
                let zero: Vec<&str> = params
                    .iter()
                    .filter(|(_, p)| p.grad().abs().max().double_value(&[]) == 0.0)
                    .map(|(n, _)| n.as_str())
                    .collect();
                // Stochastic depth (efficientnet) may drop a block's branch for both images; everything
                // else must get a gradient.
                let allowed = if arch.starts_with("efficientnet") {
                    params.len() / 10
                } else {
                    0
                };
                assert!(
                    zero.len() <= allowed,
                    "{arch}: zero gradient for {} weights: {zero:?}",
                    zero.len()
                );
            }
            opt.step();
        }
        let moved = params
            .iter()
            .zip(&first)
            .filter(|((_, p), f)| max_abs_diff(p, f) > 0.0)
            .count();
        assert!(
            moved * 10 >= params.len() * 9,
            "{arch}: only {moved} of {} weights moved",
            params.len()
        );
        eprintln!(
            "{arch:>20}: 2 steps at {size}x{size} in {:.2}s",
            t0.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "every architecture trained in {:.1}s",
        start.elapsed().as_secs_f64()
    );
}

/// Images the parity test feeds. 64 is the smallest size above AlexNet's 63.
const PARITY_SIZE: i64 = 64;

/// One architecture at 1000 classes proves the default head; the others use 10, which keeps the
/// classifiers (and the test) small without changing the architecture.
fn parity_classes(arch: &str) -> i64 {
    if arch == "resnet18" { 1000 } else { 10 }
}

struct Parity {
    arch: &'static str,
    secs: f64,
    scale: f64,
    diff: f64,
    diff_channels_last: f64,
}

fn check_parity(dir: &Path, arch: &'static str) -> Parity {
    let t0 = Instant::now();
    let weights = dir.join(format!("{arch}.weights.safetensors"));
    let reference = dir.join(format!("{arch}.ref.safetensors"));
    let refs: HashMap<String, Tensor> = Tensor::read_safetensors(&reference)
        .unwrap()
        .into_iter()
        .collect();
    let mut vs = VarStore::new(Device::Cpu);
    let model = models::build(arch, &vs.root(), parity_classes(arch)).unwrap();
    let report =
        models::load_pretrained(&mut vs, &weights).unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert_eq!(report.loaded, vs.len());
    let (input, expected, expected_cl) = (
        &refs["input"],
        &refs["logits"],
        &refs["logits_channels_last"],
    );
    let (got, got_cl) = tch::no_grad(|| {
        (
            model.forward_t(input, false),
            model.forward_t(&channels_last(input), false),
        )
    });
    assert_eq!(got.size(), expected.size(), "{arch}");
    let scale = expected.abs().max().double_value(&[]);
    let norm = scale.max(1.0);
    let parity = Parity {
        arch,
        scale,
        diff: max_abs_diff(&got, expected) / norm,
        diff_channels_last: max_abs_diff(&got_cl, expected_cl) / norm,
        secs: 0.0,
    };
    fs::remove_file(weights).unwrap();
    fs::remove_file(reference).unwrap();
    Parity {
        secs: t0.elapsed().as_secs_f64(),
        ..parity
    }
}

/// Same weights, same input: logits within 1e-4 of torchvision's (relative to the largest logit when
/// that exceeds 1), for every architecture, from contiguous input and from channels_last input (compared
/// with torchvision's channels_last run: the two layouts run different kernels, which round differently).
#[test]
fn every_arch_matches_torchvision() {
    let Some(python) = ref_python() else { return };
    one_thread();
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("models_ref.log");
    let mut child = Command::new(&python)
        .arg(crate_file("tests/ref/models_ref.py"))
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let mut requests = child.stdin.take().unwrap();
    let mut replies = BufReader::new(child.stdout.take().unwrap());
    let mut request = move |arch: &str| {
        writeln!(requests, "{arch} {} {PARITY_SIZE} 0", parity_classes(arch)).unwrap();
        requests.flush().unwrap();
    };
    // One request ahead: Python makes the next architecture's reference while this one is checked.
    request(ARCHS[0]);
    let mut results = Vec::new();
    for (i, &arch) in ARCHS.iter().enumerate() {
        if let Some(next) = ARCHS.get(i + 1) {
            request(next);
        }
        let mut reply = String::new();
        replies.read_line(&mut reply).unwrap();
        if reply.trim_end() != format!("ok {arch}") {
            panic!(
                "reference for {arch}: {reply:?}\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let p = check_parity(dir.path(), arch);
        eprintln!(
            "{:>20}: max |logit| {:7.3}, max diff {:.1e} (channels_last {:.1e}), checked in {:.2}s",
            p.arch, p.scale, p.diff, p.diff_channels_last, p.secs
        );
        results.push(p);
    }
    drop(request); // closes Python's stdin, so it exits
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "models_ref.py: {status}\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!(
        "parity checked for {} architectures in {:.1}s",
        results.len(),
        start.elapsed().as_secs_f64()
    );
    let bad: Vec<_> = results
        .iter()
        .filter(|p| !(p.diff <= 1e-4 && p.diff_channels_last <= 1e-4))
        .map(|p| p.arch)
        .collect();
    assert!(
        bad.is_empty(),
        "logits differ from torchvision's by more than 1e-4 for {bad:?}"
    );
    // The logits must carry signal, or equal logits would prove nothing.
    assert!(
        results.iter().all(|p| p.scale > 1e-3),
        "degenerate reference logits"
    );
}

fn export(python: &Path, args: &[&str]) -> std::process::Output {
    Command::new(python)
        .arg(crate_file("scripts/export_torchvision.py"))
        .args(args)
        .output()
        .unwrap()
}

/// The user-facing exporter: a 1000-class file that loads, `num_batches_tracked` ignored.
#[test]
fn export_script_writes_loadable_weights() {
    let Some(python) = ref_python() else { return };
    one_thread();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mnv3s.safetensors");
    let out = export(
        &python,
        &[
            "mobilenet_v3_small",
            file.to_str().unwrap(),
            "--random",
            "--seed",
            "3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mobilenet_v3_small"));
    let mut vs = VarStore::new(Device::Cpu);
    models::build("mobilenet_v3_small", &vs.root(), 1000).unwrap();
    let report = models::load_pretrained(&mut vs, &file).unwrap();
    assert_eq!(report.loaded, vs.len());
    // One counter per batch norm: each has weight, bias, running_mean and running_var.
    let norms = vs
        .variables()
        .keys()
        .filter(|n| n.ends_with("running_var"))
        .count();
    assert_eq!(report.ignored.len(), norms);
    assert!(
        report
            .ignored
            .iter()
            .all(|n| n.ends_with(".num_batches_tracked"))
    );
}

#[test]
fn export_script_rejects_bad_arguments() {
    let Some(python) = ref_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_path: PathBuf = dir.path().join("never-written.safetensors");
    let out = out_path.to_str().unwrap();
    for (args, expect) in [
        (
            vec!["resnet18", out],
            "one of the arguments --weights --random is required",
        ),
        (
            vec!["resnet18", out, "--weights", "DEFAULT", "--random"],
            "not allowed with argument",
        ),
        (
            vec!["resnet18", out, "--weights", "DEFAULT", "--random-bn"],
            "--random-bn needs --random",
        ),
        // These two import torch first.
        (
            vec!["resnet18", out, "--weights", "NO_SUCH_WEIGHTS"],
            "cannot build weights NO_SUCH_WEIGHTS of resnet18: KeyError",
        ),
        (
            vec!["resnet51", out, "--random"],
            "torchvision has no classification model 'resnet51'; known: alexnet",
        ),
    ] {
        let res = export(&python, &args);
        assert!(!res.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!out_path.exists(), "{args:?} wrote a file");
    }
}
