//! Our SGD against `torch.optim.SGD(foreach=False)` (run through `IMG_PYTHON`), on a problem whose
//! gradients are known, and our three SGD kernels against each other.

use std::collections::HashMap;
use std::process::Command;

use imgtrain::bridge::SgdKernel;
use imgtrain::optim::Sgd;
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

fn reference(lr: f64, momentum: f64, wd: f64, nesterov: bool, steps: usize) -> serde_json::Value {
    let py = crate::support::ref_python().expect("checked by the caller");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ref/sgd_ref.py");
    let out = Command::new(py)
        .arg(script)
        .args([
            lr.to_string(),
            momentum.to_string(),
            wd.to_string(),
            steps.to_string(),
            u8::from(nesterov).to_string(),
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

/// JSON numbers from Python's `tolist()` are the f32 values widened to f64 and printed exactly, so the
/// round trip through f64 gives back the very f32.
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

fn assert_bits(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{what}[{i}]: ours {a}, torch {b}");
    }
}

/// Within `ulps` units in the last place of the tensor's largest magnitude, for the fused kernel: it
/// computes `g + wd * p`, `m * buf + d` and `p - lr * buf` with fused multiply-adds (one rounding where
/// torch's separate kernels round twice), so each of the three differs by at most about one ulp of its
/// operands per step, and the momentum carries those differences into later steps. Measured in ulps of
/// the result each value could be far off where `p - lr * buf` nearly cancels; of the tensor's largest
/// magnitude, they stay small. Returns the largest difference seen, in those ulps.
fn assert_ulps(ours: &[f32], theirs: &[f32], ulps: f32, what: &str) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    let scale = ours
        .iter()
        .chain(theirs)
        .fold(f32::MIN_POSITIVE, |m, x| m.max(x.abs()));
    let ulp = f32::EPSILON * scale;
    let mut worst = 0.0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let off = (a - b).abs() / ulp;
        assert!(
            off <= ulps,
            "{what}[{i}]: {a} vs {b}, {off} ulps of {scale} apart"
        );
        worst = worst.max(off);
    }
    worst
}

/// The reference problem's variables (see sgd_ref.py): w [3, 4], b [4], c [2].
fn problem() -> (VarStore, Tensor, Tensor, Tensor) {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = root.var("w", &[3, 4], Init::Const(0.0));
    let b = root.var("b", &[4], Init::Const(0.0));
    let c = root.var("c", &[2], Init::Const(0.0));
    tch::no_grad(|| {
        w.shallow_clone()
            .copy_(&(Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]) / 10.0 - 0.5));
        b.shallow_clone()
            .copy_(&(Tensor::arange(4, (Kind::Float, Device::Cpu)) / 4.0));
        c.shallow_clone()
            .copy_(&Tensor::from_slice(&[0.3f32, -0.7]));
    });
    (vs, w, b, c)
}

/// Step `t`'s loss: its gradients are exactly G_t, H_t and (from step 2 on) K_t; c gets no gradient
/// before step 2.
fn backward(t: usize, w: &Tensor, b: &Tensor, c: &Tensor) {
    let g = (Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]) - 5.0 + t as f64) / 7.0;
    let h = (Tensor::arange(4, (Kind::Float, Device::Cpu)) * (t as f64 + 1.0) - 1.0) / 3.0;
    let k = Tensor::from_slice(&[1.0 + t as f32, -0.5 * t as f32]) / 9.0;
    let mut loss = (w * g).sum(Kind::Float) + (b * h).sum(Kind::Float);
    if t >= 2 {
        loss += (c * k).sum(Kind::Float);
    }
    loss.backward();
}

fn check(lr: f64, momentum: f64, wd: f64, nesterov: bool, kernel: SgdKernel) {
    if crate::support::ref_python().is_none() {
        return;
    }
    let steps = 4;
    let expected = reference(lr, momentum, wd, nesterov, steps);
    let (vs, w, b, c) = problem();
    let mut sgd = Sgd::new(&vs, momentum, wd);
    assert_eq!(sgd.kernel(), SgdKernel::PerParameter, "the CPU default");
    sgd.set_kernel(kernel);
    sgd.set_nesterov(nesterov);
    // Fused: three roundings per step that may differ by an ulp each (see assert_ulps).
    let fused_ulps = 3.0 * steps as f32;
    let mut worst = 0.0f32;
    let mut same = |ours: &[f32], theirs: &[f32], what: &str| match kernel {
        SgdKernel::Fused => worst = worst.max(assert_ulps(ours, theirs, fused_ulps, what)),
        _ => assert_bits(ours, theirs, what),
    };
    for (t, want) in expected.as_array().unwrap().iter().enumerate().take(steps) {
        sgd.zero_grad();
        backward(t, &w, &b, &c);
        sgd.step(lr).unwrap();
        for (name, var) in [("w", &w), ("b", &b), ("c", &c)] {
            let what = format!("{kernel:?}: {name} after step {t}");
            same(&values(var), &floats(&want[name]), &what);
            let bufs: HashMap<&str, Option<&Tensor>> = sgd.momentum_buffers().collect();
            let want_buf = &want[format!("{name}_buf")];
            match bufs[name] {
                Some(buf) => same(
                    &values(buf),
                    &floats(want_buf),
                    &format!("{what}: momentum"),
                ),
                None => assert!(want_buf.is_null(), "{what}: torch has a momentum buffer"),
            }
        }
    }
    if kernel == SgdKernel::Fused {
        eprintln!(
            "fused vs torch, lr {lr} momentum {momentum} wd {wd} nesterov {nesterov}: {worst} ulps"
        );
    }
}

#[test]
fn sgd_matches_torch_optim_sgd() {
    check(0.1, 0.9, 1e-4, false, SgdKernel::PerParameter);
}

#[test]
fn sgd_without_momentum_or_decay_matches_torch() {
    check(0.5, 0.0, 0.0, false, SgdKernel::PerParameter);
}

#[test]
fn nesterov_sgd_matches_torch() {
    check(0.1, 0.9, 1e-4, true, SgdKernel::PerParameter);
}

/// libtorch's CPU `_foreach_` ops loop over the same per-tensor kernels, so the multi-tensor path is
/// bit-identical to torch's single-tensor SGD on the CPU too.
#[test]
fn foreach_sgd_matches_torch_bit_for_bit_on_the_cpu() {
    check(0.1, 0.9, 1e-4, false, SgdKernel::Foreach);
    check(0.1, 0.9, 1e-4, true, SgdKernel::Foreach);
    check(0.5, 0.0, 0.0, false, SgdKernel::Foreach);
}

#[test]
fn fused_sgd_matches_torch_within_a_few_ulps() {
    check(0.1, 0.9, 1e-4, false, SgdKernel::Fused);
    check(0.1, 0.9, 1e-4, true, SgdKernel::Fused);
    check(0.5, 0.0, 0.0, false, SgdKernel::Fused);
}

/// Ten steps of a model whose variables get gradients on some steps only (one never): every kernel from
/// the same start, the multi-tensor ones against the per-parameter one.
#[test]
fn multi_tensor_kernels_agree_with_the_per_parameter_path() {
    type Run = (Vec<Vec<f32>>, Vec<Option<Vec<f32>>>);
    let steps = 10i64;
    // Fused: three roundings per step that may differ by an ulp each (see assert_ulps).
    let fused_ulps = 3.0 * steps as f32;
    let mut worst = 0.0f32;
    let run = |kernel: SgdKernel, nesterov: bool| -> Run {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        // Deterministic starting values without the global RNG, which tests running beside this one use.
        let vars: Vec<Tensor> = (0..5i64)
            .map(|i| {
                let v = root.var(&format!("v{i}"), &[17 + i, 3], Init::Const(0.0));
                let start = (Tensor::arange(3 * (17 + i), (Kind::Float, Device::Cpu)) * 0.37
                    + i as f64)
                    .sin()
                    .reshape([17 + i, 3]);
                tch::no_grad(|| v.shallow_clone().copy_(&start));
                v
            })
            .collect();
        let untouched = values(&vars[4]);
        let mut sgd = Sgd::new(&vs, 0.9, 5e-4);
        sgd.set_kernel(kernel);
        sgd.set_nesterov(nesterov);
        for t in 0..steps {
            sgd.zero_grad();
            // v4 never takes part; v3 from step 3 on; v2 on even steps only.
            let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for (i, v) in vars.iter().enumerate().take(4) {
                let used = match i {
                    3 => t >= 3,
                    2 => t % 2 == 0,
                    _ => true,
                };
                if used {
                    // Gradients that do not depend on the variables, so that a rounding difference in
                    // one step does not change the next step's gradient: this compares the kernels,
                    // not how the problem amplifies their differences.
                    let n = 3 * (17 + i as i64);
                    let g = (Tensor::arange(n, (Kind::Float, Device::Cpu))
                        * (0.11 * (t + 1) as f64)
                        + i as f64)
                        .cos()
                        .reshape([17 + i as i64, 3]);
                    loss += (v * g).sum(Kind::Float);
                }
            }
            loss.backward();
            sgd.step(0.01 + 0.001 * t as f64).unwrap();
        }
        assert_eq!(
            values(&vars[4]),
            untouched,
            "{kernel:?}: v4 had no gradient"
        );
        let bufs = sgd.momentum_buffers().map(|(_, b)| b.map(values)).collect();
        (vars.iter().map(values).collect(), bufs)
    };
    for nesterov in [false, true] {
        let (base, base_bufs) = run(SgdKernel::PerParameter, nesterov);
        assert!(
            base_bufs[4].is_none(),
            "a variable without gradients gets no buffer"
        );
        assert!(base_bufs[..4].iter().all(Option::is_some));
        for kernel in [SgdKernel::Foreach, SgdKernel::Fused] {
            let (vars, bufs) = run(kernel, nesterov);
            for (i, (ours, theirs)) in vars.iter().zip(&base).enumerate() {
                let what = format!("{kernel:?}, nesterov {nesterov}: v{i}");
                match kernel {
                    SgdKernel::Fused => {
                        worst = worst.max(assert_ulps(ours, theirs, fused_ulps, &what))
                    }
                    _ => assert_bits(ours, theirs, &what),
                }
            }
            for (i, (ours, theirs)) in bufs.iter().zip(&base_bufs).enumerate() {
                let what = format!("{kernel:?}, nesterov {nesterov}: v{i} momentum");
                match (ours, theirs) {
                    (Some(a), Some(b)) if kernel == SgdKernel::Fused => {
                        worst = worst.max(assert_ulps(a, b, fused_ulps, &what));
                    }
                    (Some(a), Some(b)) => assert_bits(a, b, &what),
                    (None, None) => {}
                    _ => panic!("{what}: one has a buffer, the other not"),
                }
            }
        }
    }
    eprintln!("fused vs per-parameter over {steps} steps: {worst} ulps");
}

#[test]
fn zero_grad_makes_gradients_undefined() {
    let (vs, w, b, c) = problem();
    let mut sgd = Sgd::new(&vs, 0.9, 0.0);
    backward(2, &w, &b, &c);
    assert!(sgd.grads().all(|g| g.defined()));
    sgd.zero_grad();
    assert!(sgd.grads().all(|g| !g.defined()));
    // A step without gradients changes nothing and creates no buffer.
    let before = values(&w);
    sgd.step(0.1).unwrap();
    assert_eq!(values(&w), before);
    assert!(sgd.momentum_buffers().all(|(_, b)| b.is_none()));
}

/// The fp16 step: gradients divided by the scale inside the fused kernel, no update on an overflow.
#[test]
fn scaled_step_unscales_and_skips_on_found_inf() {
    let scale = Tensor::from_slice(&[1024.0f32]);
    let (vs, w, b, c) = problem();
    let mut plain = Sgd::new(&vs, 0.9, 1e-4);
    plain.set_kernel(SgdKernel::Fused);
    let (vs2, w2, b2, c2) = problem();
    let mut scaled = Sgd::new(&vs2, 0.9, 1e-4);
    for t in 0..3 {
        plain.zero_grad();
        backward(t, &w, &b, &c);
        plain.step(0.1).unwrap();
        scaled.zero_grad();
        backward(t, &w2, &b2, &c2);
        for mut g in scaled.grads().filter(Tensor::defined) {
            let _ = g.f_mul_(&scale).unwrap();
        }
        let before = values(&w2);
        scaled
            .step_scaled(0.1, &scale, &Tensor::from_slice(&[1.0f32]))
            .unwrap();
        assert_eq!(values(&w2), before, "found_inf: no update");
        scaled
            .step_scaled(0.1, &scale, &Tensor::from_slice(&[0.0f32]))
            .unwrap();
        // Scaling by a power of two is exact, so the two agree bit for bit.
        for (x, y) in [(&w, &w2), (&b, &b2), (&c, &c2)] {
            assert_bits(&values(y), &values(x), &format!("step {t}"));
        }
    }
}

/// A restored buffer takes its variable's memory layout, as the fused kernel wants (channels_last
/// weights with buffers from a contiguous checkpoint tensor).
#[test]
fn restored_buffers_take_the_variables_layout() {
    let vs = VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[2, 3, 2, 2], Init::Const(0.5));
    tch::no_grad(|| {
        // NHWC storage seen as NCHW: PyTorch's channels_last.
        let cl = w.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        w.shallow_clone().set_data(&cl);
    });
    assert_ne!(w.stride(), [12, 4, 2, 1]);
    let mut sgd = Sgd::new(&vs, 0.9, 0.0);
    let saved = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([2, 3, 2, 2]);
    assert!(sgd.set_momentum_buffer("w", &saved).unwrap());
    let buf = sgd.momentum_buffers().next().unwrap().1.unwrap();
    assert_eq!(buf.stride(), w.stride());
    assert_eq!(values(buf), values(&saved));
    sgd.set_kernel(SgdKernel::Fused);
    sgd.zero_grad();
    w.sum(Kind::Float).backward();
    sgd.step(0.1).unwrap();
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
    assert_ulps(&values(&w), &[1.0 - 1.45, 1.0 - 0.55], 2.0, "w");
}
