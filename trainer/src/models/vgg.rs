//! VGG 11/13/16/19, with and without batch norm (torchvision's `vgg.py`).
//!
//! tch's `vision::vgg` has no adaptive average pool before the classifier, so it only takes 224×224
//! input; torchvision pools to 7×7 first.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::layers::{Conv, ConvInit, LinearInit, Norm, batch_norm, conv2d, flatten, linear};

/// Output channels of the 3×3 convolutions, `0` standing for a 2×2 max-pool (torchvision's `"M"`).
pub(crate) const A: &[i64] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
pub(crate) const B: &[i64] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
];
pub(crate) const D: &[i64] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];
pub(crate) const E: &[i64] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0,
];

/// A 3×3 convolution (with its batch norm in the `_bn` variants) and ReLU, maybe followed by a max-pool.
#[derive(Debug)]
struct Layer {
    conv: nn::Conv2D,
    bn: Option<nn::BatchNorm>,
    pool: bool,
}

#[derive(Debug)]
pub(crate) struct Vgg {
    features: Vec<Layer>,
    fcs: Vec<nn::Linear>,
    /// The classifier's dropout probability (torchvision's `dropout`, 0.5).
    dropout: f64,
}

impl Vgg {
    pub fn new(p: &nn::Path, cfg: &[i64], with_bn: bool, num_classes: i64, dropout: f64) -> Self {
        let f = p / "features";
        // `features` is one nn.Sequential: every conv, batch norm, ReLU and pool takes an index.
        let mut index = 0;
        let mut c_in = 3;
        let mut features: Vec<Layer> = Vec::with_capacity(cfg.len());
        for &c_out in cfg {
            if c_out == 0 {
                // Every pool follows a convolution.
                features
                    .last_mut()
                    .expect("a VGG configuration starts with a convolution")
                    .pool = true;
                index += 1;
                continue;
            }
            let c = Conv {
                padding: 1,
                bias: true,
                ..Default::default()
            };
            let conv = conv2d(&f / index, c_in, c_out, 3, c, ConvInit::KaimingFanOut);
            let bn = with_bn.then(|| batch_norm(&f / (index + 1), c_out, Norm::default()));
            index += if with_bn { 3 } else { 2 };
            features.push(Layer {
                conv,
                bn,
                pool: false,
            });
            c_in = c_out;
        }
        let c = p / "classifier";
        let fcs = vec![
            linear(&c / 0, 512 * 7 * 7, 4096, LinearInit::Normal001),
            linear(&c / 3, 4096, 4096, LinearInit::Normal001),
            linear(&c / 6, 4096, num_classes, LinearInit::Normal001),
        ];
        Vgg {
            features,
            fcs,
            dropout,
        }
    }
}

impl ModuleT for Vgg {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for layer in &self.features {
            xs = xs.apply(&layer.conv);
            if let Some(bn) = &layer.bn {
                xs = xs.apply_t(bn, train);
            }
            xs = xs.relu();
            if layer.pool {
                xs = xs.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        let xs = flatten(xs.adaptive_avg_pool2d([7, 7]));
        let xs = xs.apply(&self.fcs[0]).relu().dropout(self.dropout, train);
        let xs = xs.apply(&self.fcs[1]).relu().dropout(self.dropout, train);
        xs.apply(&self.fcs[2])
    }
}
