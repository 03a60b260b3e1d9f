//! Our SGD against `torch.optim.SGD` (run through `IMG_PYTHON`), on a problem whose gradients are known.

use std::process::Command;

use imgtrain::optim::Sgd;
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

fn reference(lr: f64, momentum: f64, wd: f64, steps: usize) -> serde_json::Value {
    let py = crate::support::ref_python().expect("checked by the caller");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ref/sgd_ref.py");
    let out = Command::new(py)
        .arg(script)
        .args([
            lr.to_string(),
            momentum.to_string(),
            wd.to_string(),
            steps.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        // Ours multiplies then adds where PyTorch fuses `add(alpha=)`: a few ulps apart at most.
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
            "{what}[{i}]: ours {a}, torch {b}"
        );
    }
}

fn check(lr: f64, momentum: f64, wd: f64) {
    if crate::support::ref_python().is_none() {
        return;
    }
    let steps = 4;
    let expected = reference(lr, momentum, wd, steps);
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = root.var("w", &[3, 4], Init::Const(0.0));
    let b = root.var("b", &[4], Init::Const(0.0));
    tch::no_grad(|| {
        w.shallow_clone()
            .copy_(&(Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]) / 10.0 - 0.5));
        b.shallow_clone()
            .copy_(&(Tensor::arange(4, (Kind::Float, Device::Cpu)) / 4.0));
    });
    let mut sgd = Sgd::new(&vs, momentum, wd);
    for (t, want) in expected.as_array().unwrap().iter().enumerate().take(steps) {
        let g =
            (Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]) - 5.0 + t as f64) / 7.0;
        let h = (Tensor::arange(4, (Kind::Float, Device::Cpu)) * (t as f64 + 1.0) - 1.0) / 3.0;
        sgd.zero_grad();
        ((&w * &g).sum(Kind::Float) + (&b * &h).sum(Kind::Float)).backward();
        sgd.step(lr).unwrap();
        assert_close(
            &values(&w),
            &floats(&want["w"]),
            &format!("w after step {t}"),
        );
        assert_close(
            &values(&b),
            &floats(&want["b"]),
            &format!("b after step {t}"),
        );
        let bufs: std::collections::HashMap<&str, Option<&Tensor>> =
            sgd.momentum_buffers().collect();
        if momentum != 0.0 {
            assert_close(
                &values(bufs["w"].unwrap()),
                &floats(&want["w_buf"]),
                "w momentum",
            );
            assert_close(
                &values(bufs["b"].unwrap()),
                &floats(&want["b_buf"]),
                "b momentum",
            );
        } else {
            assert!(bufs["w"].is_none());
        }
    }
}

#[test]
fn sgd_matches_torch_optim_sgd() {
    check(0.1, 0.9, 1e-4);
}

#[test]
fn sgd_without_momentum_or_decay_matches_torch() {
    check(0.5, 0.0, 0.0);
}

#[test]
fn momentum_buffers_round_trip_through_set() {
    let vs = VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[2], Init::Const(1.0));
    let mut sgd = Sgd::new(&vs, 0.9, 0.0);
    assert!(
        sgd.set_momentum_buffer("w", &Tensor::from_slice(&[0.5f32, -0.5]))
            .unwrap()
    );
    assert!(
        !sgd.set_momentum_buffer("w", &Tensor::from_slice(&[0.5f32]))
            .unwrap(),
        "shape checked"
    );
    assert!(
        !sgd.set_momentum_buffer("nope", &Tensor::from_slice(&[0.5f32, 1.0]))
            .unwrap()
    );
    sgd.zero_grad();
    w.sum(Kind::Float).backward();
    sgd.step(1.0).unwrap();
    // buf = 0.9 * [0.5, -0.5] + [1, 1]; w = 1 - buf.
    assert_close(&values(&w), &[1.0 - 1.45, 1.0 - 0.55], "w");
}
