//! SGD with momentum and weight decay, with PyTorch's `torch.optim.SGD` update rule, written over the
//! variables of a `VarStore` so that the momentum buffers are ours to checkpoint (tch's `nn::Sgd` keeps
//! them out of reach).
//!
//! For each trainable variable `p` whose gradient `g` is defined (dampening 0, like `main.py`):
//! `d = g + weight_decay * p`; `buf = d` on the first step, else `buf = momentum * buf + d`;
//! `p -= lr * buf` (with Nesterov, `p -= lr * (d + momentum * buf)`). Weight decay applies to every
//! parameter, batch-norm and biases included, as in `main.py`. Gradients are reset to undefined, not
//! zeroed, between steps (`zero_grad(set_to_none=True)`), so a variable the loss did not reach is left
//! alone, momentum buffer included, as torch does.
//!
//! The step is one call into the C++ bridge ([`crate::bridge::sgd_step`]), with one of three kernels:
//! - on CUDA, `at::_fused_sgd_`: one launch for all parameters instead of ~6 per parameter;
//! - on the CPU, the per-parameter path, which makes the same ATen calls in the same order as
//!   `torch.optim.SGD(foreach=False)` and so is bit-identical to it (`tests/train_optim.rs`). The
//!   `_foreach_` path is bit-identical too on the CPU (libtorch's CPU `_foreach_` ops are loops of the
//!   same per-tensor kernels) but gains nothing there; the fused CPU kernel rounds differently (it fuses
//!   multiply-adds) and is a few ulps off, hence not the CPU default although it is faster. Measured
//!   through `torch.optim.SGD` on the 2-core dev machine (2026-12-01, resnet50's 161 tensors, 25.6M
//!   values, momentum and weight decay, busy machine): per-parameter 105-126 ms a step, `foreach` 91-123,
//!   fused 34-48.

use std::collections::BTreeMap;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::bridge::{self, SgdKernel, SgdOptions};
use crate::error::{Result, TorchContext};

/// The optimizer: trainable variables by name, with their momentum buffers.
#[derive(Debug)]
pub struct Sgd {
    /// Variable names, in name order (so iteration order, hence rounding, is stable).
    names: Vec<String>,
    /// The variables, in the order of `names`.
    params: Vec<Tensor>,
    /// Undefined until the variable's first step, like PyTorch's lazily created buffers.
    buffers: Vec<Tensor>,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
    kernel: SgdKernel,
}

impl Sgd {
    /// An optimizer over the trainable variables of `vs` (batch-norm running statistics are not), with
    /// the kernel for `vs`'s device (see the module docs).
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Self {
        let params: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        let buffers = params.iter().map(|_| Tensor::new()).collect();
        let kernel = match vs.device() {
            Device::Cuda(_) => SgdKernel::Fused,
            _ => SgdKernel::PerParameter,
        };
        Sgd {
            names,
            params,
            buffers,
            momentum,
            weight_decay,
            nesterov: false,
            kernel,
        }
    }

    /// The kernel [`step`](Self::step) uses.
    pub fn kernel(&self) -> SgdKernel {
        self.kernel
    }

    /// Chooses the kernel [`step`](Self::step) uses (e.g. to cross-check them on the CPU).
    pub fn set_kernel(&mut self, kernel: SgdKernel) {
        self.kernel = kernel;
    }

    /// Nesterov momentum, as `torch.optim.SGD(nesterov=True)` (off by default, as in `main.py`).
    pub fn set_nesterov(&mut self, nesterov: bool) {
        self.nesterov = nesterov;
    }

    /// Makes the gradient of every variable undefined (PyTorch's `zero_grad(set_to_none=True)`): the
    /// next backward writes fresh gradients, and [`step`](Self::step) skips a variable it did not reach.
    ///
    /// # Panics
    /// If libtorch throws while resetting a gradient, which it does not (a pointer reset).
    pub fn zero_grad(&mut self) {
        if let Err(e) = bridge::grads_set_to_none(&self.params) {
            panic!("{e}");
        }
    }

    /// The gradients, in variable-name order (undefined for a variable the loss did not reach).
    pub fn grads(&self) -> impl Iterator<Item = Tensor> + '_ {
        self.params.iter().map(Tensor::grad)
    }

    fn options(&self, lr: f64) -> SgdOptions {
        SgdOptions {
            lr,
            momentum: self.momentum,
            dampening: 0.0,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        }
    }

    /// One update with learning rate `lr`. Variables without a gradient are left alone.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let opts = self.options(lr);
        bridge::sgd_step(&self.params, &mut self.buffers, &opts, self.kernel, None)
    }

    /// One update of fp16 loss-scaled gradients, with the fused kernel whatever [`kernel`](Self::kernel)
    /// says: the gradients are divided by `grad_scale` inside the kernel, and nothing changes where
    /// `found_inf` is nonzero, decided on the device (no host sync). Both are one-element f32 tensors on
    /// the variables' device, as `torch.amp.GradScaler` keeps them.
    pub fn step_scaled(&mut self, lr: f64, grad_scale: &Tensor, found_inf: &Tensor) -> Result<()> {
        let opts = self.options(lr);
        bridge::sgd_step(
            &self.params,
            &mut self.buffers,
            &opts,
            SgdKernel::Fused,
            Some((grad_scale, found_inf)),
        )
    }

    /// Momentum buffers by variable name; `None` for a variable that has not been stepped yet.
    pub fn momentum_buffers(&self) -> impl Iterator<Item = (&str, Option<&Tensor>)> {
        self.names
            .iter()
            .zip(&self.buffers)
            .map(|(name, b)| (name.as_str(), b.defined().then_some(b)))
    }

    /// The trainable variables by name, in the order of [`momentum_buffers`](Self::momentum_buffers).
    pub fn params(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.params)
    }

    /// Replaces the momentum buffer of variable `name` with a copy of `value` on the variable's device, in
    /// its dtype and memory layout.
    /// Returns false when `name` is not a trainable variable or the shapes differ.
    pub fn set_momentum_buffer(&mut self, name: &str, value: &Tensor) -> Result<bool> {
        let Some(i) = self.names.iter().position(|n| n == name) else {
            return Ok(false);
        };
        let p = &self.params[i];
        if value.size() != p.size() {
            return Ok(false);
        }
        let what = || format!("restoring the momentum buffer of {name}");
        // The variable's device, dtype and memory layout (channels_last weights): the fused kernel wants
        // parameters, gradients and buffers with the same strides.
        let mut b = p.f_empty_like().during(what)?;
        tch::no_grad(|| b.f_copy_(value)).during(what)?;
        self.buffers[i] = b;
        Ok(true)
    }
}
