//! MobileNet V2 and V3 large/small (torchvision's `mobilenetv2.py`, `mobilenetv3.py`).
//!
//! tch's `vision::mobilenet::v2` names its variables like torchvision but starts batch-norm weights at
//! U(0, 1) and convolutions at kaiming-uniform; torchvision starts them at 1 and kaiming-normal (fan_out),
//! and its classifier at N(0, 0.01). tch has no V3.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::layers::{
    Act, Cna, Conv, ConvInit, ConvNormAct, LinearInit, Norm, SqueezeExcitation, batch_norm, conv2d,
    flatten, linear, make_divisible,
};

/// A sequence of sub-modules named `0`, `1`, …, with an optional shortcut around them.
#[derive(Debug)]
struct Residual {
    layers: Vec<Box<dyn ModuleT>>,
    shortcut: bool,
}

impl ModuleT for Residual {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for layer in &self.layers {
            ys = layer.forward_t(&ys, train);
        }
        if self.shortcut { ys + xs } else { ys }
    }
}

/// V2's projection: a bias-free 1×1 convolution and a batch norm, two entries (`i`, `i + 1`) of the block.
#[derive(Debug)]
struct Projection {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ModuleT for Projection {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

/// The shared tail: `features`, global average, `classifier`.
#[derive(Debug)]
pub(crate) struct MobileNet {
    features: Vec<Box<dyn ModuleT>>,
    classifier: Classifier,
}

#[derive(Debug)]
enum Classifier {
    /// V2: dropout, `classifier.1`.
    V2 { dropout: f64, fc: nn::Linear },
    /// V3: `classifier.0`, hardswish, dropout, `classifier.3`.
    V3 {
        fc0: nn::Linear,
        dropout: f64,
        fc3: nn::Linear,
    },
}

impl ModuleT for MobileNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for layer in &self.features {
            xs = layer.forward_t(&xs, train);
        }
        let xs = flatten(xs.adaptive_avg_pool2d([1, 1]));
        match &self.classifier {
            Classifier::V2 { dropout, fc } => xs.dropout(*dropout, train).apply(fc),
            Classifier::V3 { fc0, dropout, fc3 } => xs
                .apply(fc0)
                .hardswish()
                .dropout(*dropout, train)
                .apply(fc3),
        }
    }
}

/// V2's inverted residual settings: expand ratio, output channels, repeats, first stride.
const V2_SETTINGS: [(i64, i64, i64, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

impl MobileNet {
    pub fn v2(p: &nn::Path, num_classes: i64) -> Self {
        let norm = Norm::default();
        let f = p / "features";
        let mut c_in = 32;
        let last = 1280;
        let mut features: Vec<Box<dyn ModuleT>> = Vec::new();
        let stem = Cna {
            k: 3,
            stride: 2,
            groups: 1,
        };
        features.push(Box::new(ConvNormAct::new(
            &f / 0,
            3,
            c_in,
            stem,
            norm,
            Act::Relu6,
        )));
        for (t, c_out, n, s) in V2_SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let bp = &f / features.len() / "conv";
                let hidden = c_in * t;
                let mut layers: Vec<Box<dyn ModuleT>> = Vec::new();
                if t != 1 {
                    layers.push(Box::new(ConvNormAct::new(
                        &bp / 0,
                        c_in,
                        hidden,
                        Cna::k(1),
                        norm,
                        Act::Relu6,
                    )));
                }
                let dw = Cna {
                    k: 3,
                    stride,
                    groups: hidden,
                };
                layers.push(Box::new(ConvNormAct::new(
                    &bp / layers.len(),
                    hidden,
                    hidden,
                    dw,
                    norm,
                    Act::Relu6,
                )));
                let i = layers.len();
                let conv = conv2d(
                    &bp / i,
                    hidden,
                    c_out,
                    1,
                    Conv::default(),
                    ConvInit::KaimingFanOut,
                );
                layers.push(Box::new(Projection {
                    conv,
                    bn: batch_norm(&bp / (i + 1), c_out, norm),
                }));
                features.push(Box::new(Residual {
                    layers,
                    shortcut: stride == 1 && c_in == c_out,
                }));
                c_in = c_out;
            }
        }
        features.push(Box::new(ConvNormAct::new(
            &f / features.len(),
            c_in,
            last,
            Cna::k(1),
            norm,
            Act::Relu6,
        )));
        let fc = linear(
            p / "classifier" / 1,
            last,
            num_classes,
            LinearInit::Normal001,
        );
        MobileNet {
            features,
            classifier: Classifier::V2 { dropout: 0.2, fc },
        }
    }

    pub fn v3(p: &nn::Path, large: bool, num_classes: i64) -> Self {
        let norm = Norm {
            eps: 1e-3,
            momentum: 0.01,
        };
        let (settings, last): (&[V3Block], i64) = if large {
            (&V3_LARGE, 1280)
        } else {
            (&V3_SMALL, 1024)
        };
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
            settings[0].c_in,
            stem,
            norm,
            Act::Hardswish,
        )));
        for b in settings {
            let bp = &f / features.len() / "block";
            let act = if b.hardswish {
                Act::Hardswish
            } else {
                Act::Relu
            };
            let mut layers: Vec<Box<dyn ModuleT>> = Vec::new();
            if b.expanded != b.c_in {
                layers.push(Box::new(ConvNormAct::new(
                    &bp / 0,
                    b.c_in,
                    b.expanded,
                    Cna::k(1),
                    norm,
                    act,
                )));
            }
            let dw = Cna {
                k: b.k,
                stride: b.stride,
                groups: b.expanded,
            };
            layers.push(Box::new(ConvNormAct::new(
                &bp / layers.len(),
                b.expanded,
                b.expanded,
                dw,
                norm,
                act,
            )));
            if b.se {
                let squeeze = make_divisible((b.expanded / 4) as f64, 8);
                let se = SqueezeExcitation::new(
                    &bp / layers.len(),
                    b.expanded,
                    squeeze,
                    Act::Relu,
                    Act::Hardsigmoid,
                );
                layers.push(Box::new(se));
            }
            layers.push(Box::new(ConvNormAct::new(
                &bp / layers.len(),
                b.expanded,
                b.c_out,
                Cna::k(1),
                norm,
                Act::None,
            )));
            features.push(Box::new(Residual {
                layers,
                shortcut: b.stride == 1 && b.c_in == b.c_out,
            }));
        }
        let c_in = settings[settings.len() - 1].c_out;
        let c_out = 6 * c_in;
        features.push(Box::new(ConvNormAct::new(
            &f / features.len(),
            c_in,
            c_out,
            Cna::k(1),
            norm,
            Act::Hardswish,
        )));
        let c = p / "classifier";
        let fc0 = linear(&c / 0, c_out, last, LinearInit::Normal001);
        let fc3 = linear(&c / 3, last, num_classes, LinearInit::Normal001);
        MobileNet {
            features,
            classifier: Classifier::V3 {
                fc0,
                dropout: 0.2,
                fc3,
            },
        }
    }
}

/// One row of torchvision's `_mobilenet_v3_conf` (width 1.0, so channels are already multiples of 8).
#[derive(Debug, Clone, Copy)]
struct V3Block {
    c_in: i64,
    k: i64,
    expanded: i64,
    c_out: i64,
    se: bool,
    hardswish: bool,
    stride: i64,
}

const fn b(
    c_in: i64,
    k: i64,
    expanded: i64,
    c_out: i64,
    se: bool,
    hardswish: bool,
    stride: i64,
) -> V3Block {
    V3Block {
        c_in,
        k,
        expanded,
        c_out,
        se,
        hardswish,
        stride,
    }
}

const V3_LARGE: [V3Block; 15] = [
    b(16, 3, 16, 16, false, false, 1),
    b(16, 3, 64, 24, false, false, 2),
    b(24, 3, 72, 24, false, false, 1),
    b(24, 5, 72, 40, true, false, 2),
    b(40, 5, 120, 40, true, false, 1),
    b(40, 5, 120, 40, true, false, 1),
    b(40, 3, 240, 80, false, true, 2),
    b(80, 3, 200, 80, false, true, 1),
    b(80, 3, 184, 80, false, true, 1),
    b(80, 3, 184, 80, false, true, 1),
    b(80, 3, 480, 112, true, true, 1),
    b(112, 3, 672, 112, true, true, 1),
    b(112, 5, 672, 160, true, true, 2),
    b(160, 5, 960, 160, true, true, 1),
    b(160, 5, 960, 160, true, true, 1),
];

const V3_SMALL: [V3Block; 11] = [
    b(16, 3, 16, 16, true, false, 2),
    b(16, 3, 72, 24, false, false, 2),
    b(24, 3, 88, 24, false, false, 1),
    b(24, 5, 96, 40, true, true, 2),
    b(40, 5, 240, 40, true, true, 1),
    b(40, 5, 240, 40, true, true, 1),
    b(40, 5, 120, 48, true, true, 1),
    b(48, 5, 144, 48, true, true, 1),
    b(48, 5, 288, 96, true, true, 2),
    b(96, 5, 576, 96, true, true, 1),
    b(96, 5, 576, 96, true, true, 1),
];
