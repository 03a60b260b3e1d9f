//! SGD with momentum and weight decay, with PyTorch's `torch.optim.SGD` update rule, written over the
//! variables of a `VarStore` so that the momentum buffers are ours to checkpoint (tch's `nn::Sgd` keeps
//! them out of reach).
//!
//! For each trainable variable `p` with gradient `g` (dampening 0, no Nesterov, like `main.py`):
//! `d = g + weight_decay * p`; `buf = d` on the first step, else `buf = momentum * buf + d`;
//! `p -= lr * buf`. Weight decay applies to every parameter, batch-norm and biases included, as in
//! `main.py`. tch exposes no `_foreach_` kernels, so this is a loop of a few element-wise kernels per
//! variable.

use std::collections::BTreeMap;

use tch::Tensor;
use tch::nn::VarStore;

use crate::error::{Result, TorchContext};

/// The optimizer: trainable variables by name, with their momentum buffers.
#[derive(Debug)]
pub struct Sgd {
    /// Trainable variables in name order (so iteration order, hence rounding, is stable).
    params: Vec<(String, Tensor)>,
    /// `None` until the variable's first step, like PyTorch's lazily created buffers.
    buffers: Vec<Option<Tensor>>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// An optimizer over the trainable variables of `vs` (batch-norm running statistics are not).
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Self {
        let params: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let buffers = params.iter().map(|_| None).collect();
        Sgd {
            params: params.into_iter().collect(),
            buffers,
            momentum,
            weight_decay,
        }
    }

    /// Clears the gradients of every variable.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// The gradients, in variable-name order (undefined for a variable the loss did not reach).
    pub fn grads(&self) -> impl Iterator<Item = Tensor> + '_ {
        self.params.iter().map(|(_, p)| p.grad())
    }

    /// One update with learning rate `lr`. Variables without a gradient are left alone.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let (momentum, weight_decay) = (self.momentum, self.weight_decay);
        tch::no_grad(|| {
            for ((name, p), buf) in self.params.iter_mut().zip(&mut self.buffers) {
                let what = || format!("in the SGD step for {name}");
                let mut grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                if weight_decay != 0.0 {
                    // The gradient is reset before the next backward, so it can hold d in place.
                    let decay = p.f_mul_scalar(weight_decay).during(what)?;
                    let _ = grad.f_add_(&decay).during(what)?;
                }
                let update = if momentum != 0.0 {
                    match buf {
                        Some(b) => {
                            let _ = b.f_mul_scalar_(momentum).during(what)?;
                            let _ = b.f_add_(&grad).during(what)?;
                        }
                        None => *buf = Some(grad.f_detach_copy().during(what)?),
                    }
                    buf.as_ref().expect("set above").shallow_clone()
                } else {
                    grad
                };
                let step = update.f_mul_scalar(lr).during(what)?;
                let _ = p.f_sub_(&step).during(what)?;
            }
            Ok(())
        })
    }

    /// Momentum buffers by variable name; `None` for a variable that has not been stepped yet.
    pub fn momentum_buffers(&self) -> impl Iterator<Item = (&str, Option<&Tensor>)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .map(|((name, _), b)| (name.as_str(), b.as_ref()))
    }

    /// The trainable variables by name, in the order of [`momentum_buffers`](Self::momentum_buffers).
    pub fn params(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.params.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Replaces the momentum buffer of variable `name` with a copy of `value` on the variable's device.
    /// Returns false when `name` is not a trainable variable or the shapes differ.
    pub fn set_momentum_buffer(&mut self, name: &str, value: &Tensor) -> Result<bool> {
        let Some(i) = self.params.iter().position(|(n, _)| n == name) else {
            return Ok(false);
        };
        let p = &self.params[i].1;
        if value.size() != p.size() {
            return Ok(false);
        }
        let what = || format!("restoring the momentum buffer of {name}");
        let b = value
            .f_to_device_(p.device(), p.kind(), false, true)
            .during(what)?;
        self.buffers[i] = Some(b);
        Ok(true)
    }
}
