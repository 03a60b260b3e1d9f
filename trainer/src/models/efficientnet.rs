//! EfficientNet B0-B7 (torchvision's `efficientnet.py`, V1 only).
//!
//! tch's `vision::efficientnet` follows the TensorFlow port: "same" padding computed per input, different
//! batch-norm settings, no dropout and no stochastic depth. This follows torchvision.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::layers::{
    Act, Cna, ConvNormAct, LinearInit, Norm, SqueezeExcitation, flatten, linear, make_divisible,
};

/// torchvision's `width_mult`, `depth_mult` and `dropout`, and whether the batch norms use eps 1e-3 and
/// momentum 0.01 (B5-B7) instead of PyTorch's defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub width: f64,
    pub depth: f64,
    pub dropout: f64,
    pub tf_norm: bool,
}

/// The B0 stages: expand ratio, kernel, stride, input channels, output channels, layers.
const STAGES: [(f64, i64, i64, i64, i64, i64); 7] = [
    (1., 3, 1, 32, 16, 1),
    (6., 3, 2, 16, 24, 2),
    (6., 5, 2, 24, 40, 2),
    (6., 3, 2, 40, 80, 3),
    (6., 5, 1, 80, 112, 3),
    (6., 5, 2, 112, 192, 4),
    (6., 3, 1, 192, 320, 1),
];

/// The stochastic depth probability of the last block; earlier blocks get a linear ramp from 0.
const STOCHASTIC_DEPTH: f64 = 0.2;

/// `block`: optional 1×1 expansion, depthwise k×k, squeeze-and-excitation, 1×1 projection; the shortcut
/// (with stochastic depth on the residual branch while training) when shape allows.
#[derive(Debug)]
struct MbConv {
    layers: Vec<Box<dyn ModuleT>>,
    residual: bool,
    drop_prob: f64,
}

impl MbConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: nn::Path,
        expand: f64,
        k: i64,
        stride: i64,
        c_in: i64,
        c_out: i64,
        norm: Norm,
        drop_prob: f64,
    ) -> Self {
        let p = &p / "block";
        let expanded = make_divisible(c_in as f64 * expand, 8);
        let mut layers: Vec<Box<dyn ModuleT>> = Vec::new();
        if expanded != c_in {
            layers.push(Box::new(ConvNormAct::new(
                &p / layers.len(),
                c_in,
                expanded,
                Cna::k(1),
                norm,
                Act::Silu,
            )));
        }
        let dw = Cna {
            k,
            stride,
            groups: expanded,
        };
        layers.push(Box::new(ConvNormAct::new(
            &p / layers.len(),
            expanded,
            expanded,
            dw,
            norm,
            Act::Silu,
        )));
        let squeeze = (c_in / 4).max(1);
        layers.push(Box::new(SqueezeExcitation::new(
            &p / layers.len(),
            expanded,
            squeeze,
            Act::Silu,
            Act::Sigmoid,
        )));
        layers.push(Box::new(ConvNormAct::new(
            &p / layers.len(),
            expanded,
            c_out,
            Cna::k(1),
            norm,
            Act::None,
        )));
        MbConv {
            layers,
            residual: stride == 1 && c_in == c_out,
            drop_prob,
        }
    }
}

impl ModuleT for MbConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for layer in &self.layers {
            ys = layer.forward_t(&ys, train);
        }
        if !self.residual {
            return ys;
        }
        stochastic_depth(ys, self.drop_prob, train) + xs
    }
}

/// torchvision's `stochastic_depth(mode="row")`: while training, drops each sample's residual branch with
/// probability `p` and scales the kept ones by 1/(1-p); the identity otherwise.
pub(crate) fn stochastic_depth(xs: Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return xs;
    }
    let survival = 1.0 - p;
    let mut shape = vec![1; xs.dim()];
    shape[0] = xs.size()[0];
    // The mask in the activations' dtype, as torchvision's `torch.empty(size, dtype=input.dtype)`.
    let mut noise = Tensor::empty(shape.as_slice(), (xs.kind(), xs.device()));
    let _ = noise.bernoulli_float_(survival);
    if survival > 0.0 {
        noise /= survival;
    }
    xs * noise
}

#[derive(Debug)]
pub(crate) struct EfficientNet {
    features: Vec<Box<dyn ModuleT>>,
    dropout: f64,
    classifier: nn::Linear,
}

impl EfficientNet {
    pub fn new(p: &nn::Path, cfg: Config, num_classes: i64) -> Self {
        let norm = if cfg.tf_norm {
            Norm {
                eps: 1e-3,
                momentum: 0.01,
            }
        } else {
            Norm::default()
        };
        let ch = |c: i64| make_divisible(c as f64 * cfg.width, 8);
        let depth = |n: i64| (n as f64 * cfg.depth).ceil() as i64;
        let f = p / "features";
        let mut features: Vec<Box<dyn ModuleT>> = Vec::new();
        let stem = Cna {
            k: 3,
            stride: 2,
            groups: 1,
        };
        features.push(Box::new(ConvNormAct::new(
            &f / 0,
            3,
            ch(STAGES[0].3),
            stem,
            norm,
            Act::Silu,
        )));
        let total: i64 = STAGES.iter().map(|s| depth(s.5)).sum();
        let mut block_id = 0;
        for (i, &(expand, k, stride, c_in, c_out, n)) in STAGES.iter().enumerate() {
            let sp = &f / (i + 1);
            let (c_in, c_out) = (ch(c_in), ch(c_out));
            let mut stage = nn::seq_t();
            for j in 0..depth(n) {
                let (c_in, stride) = if j == 0 { (c_in, stride) } else { (c_out, 1) };
                let drop_prob = STOCHASTIC_DEPTH * block_id as f64 / total as f64;
                stage = stage.add(MbConv::new(
                    &sp / j,
                    expand,
                    k,
                    stride,
                    c_in,
                    c_out,
                    norm,
                    drop_prob,
                ));
                block_id += 1;
            }
            features.push(Box::new(stage));
        }
        let last_in = ch(STAGES[STAGES.len() - 1].4);
        let last_out = 4 * last_in;
        features.push(Box::new(ConvNormAct::new(
            &f / (STAGES.len() + 1),
            last_in,
            last_out,
            Cna::k(1),
            norm,
            Act::Silu,
        )));
        let classifier = linear(
            p / "classifier" / 1,
            last_out,
            num_classes,
            LinearInit::UniformOut,
        );
        EfficientNet {
            features,
            dropout: cfg.dropout,
            classifier,
        }
    }
}

impl ModuleT for EfficientNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for layer in &self.features {
            xs = layer.forward_t(&xs, train);
        }
        flatten(xs.adaptive_avg_pool2d([1, 1]))
            .dropout(self.dropout, train)
            .apply(&self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn stochastic_depth_drops_whole_samples_and_rescales_the_rest() {
        tch::manual_seed(0);
        let xs = Tensor::ones([4000, 3, 2, 2], tch::kind::FLOAT_CPU);
        let ys = stochastic_depth(xs.shallow_clone(), 0.25, true);
        // Each sample is all 0 or all 1/0.75: one draw per sample ("row" mode), never per element.
        let per_sample = ys.view([4000, 12]);
        let (lo, hi) = (per_sample.amin(1, false), per_sample.amax(1, false));
        assert_eq!((&lo - &hi).abs().max().double_value(&[]), 0.0);
        let kept = lo.gt(0.0).to_kind(Kind::Float);
        let kept_fraction = kept.mean(Kind::Float).double_value(&[]);
        assert!((kept_fraction - 0.75).abs() < 0.03, "kept {kept_fraction}");
        let scaled = (&lo - 1.0 / 0.75).abs().to_kind(Kind::Float) * &kept;
        assert!(
            scaled.max().double_value(&[]) < 1e-6,
            "kept samples are scaled by 1/(1-p)"
        );
        // The identity in evaluation and when p is 0.
        assert!(stochastic_depth(xs.shallow_clone(), 0.25, false).equal(&xs));
        assert!(stochastic_depth(xs.shallow_clone(), 0.0, true).equal(&xs));
    }
}
