//! ResNet, ResNeXt and Wide ResNet (torchvision's `resnet.py`): one implementation for all nine.
//!
//! tch's `vision::resnet` names its variables like torchvision, but it has no grouped or widened
//! bottleneck (ResNeXt, Wide ResNet) and starts batch-norm weights at U(0, 1) and convolutions at
//! kaiming-uniform; torchvision starts them at 1 and kaiming-normal (fan_out). One implementation with
//! torchvision's start serves all nine.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::layers::{Conv, ConvInit, LinearInit, Norm, batch_norm, conv2d, flatten, linear};

/// Which residual block, and its width: torchvision's `block`, `groups`, `width_per_group`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub bottleneck: bool,
    pub layers: [i64; 4],
    pub groups: i64,
    pub width_per_group: i64,
}

impl Config {
    pub const fn basic(layers: [i64; 4]) -> Self {
        Config {
            bottleneck: false,
            layers,
            groups: 1,
            width_per_group: 64,
        }
    }
    pub const fn bottleneck(layers: [i64; 4], groups: i64, width_per_group: i64) -> Self {
        Config {
            bottleneck: true,
            layers,
            groups,
            width_per_group,
        }
    }
}

fn conv_bn(
    p: &nn::Path,
    i: usize,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
) -> (nn::Conv2D, nn::BatchNorm) {
    let c = Conv {
        stride,
        padding: (k - 1) / 2,
        groups,
        bias: false,
    };
    let conv = conv2d(
        p / format!("conv{i}"),
        c_in,
        c_out,
        k,
        c,
        ConvInit::KaimingFanOut,
    );
    (
        conv,
        batch_norm(p / format!("bn{i}"), c_out, Norm::default()),
    )
}

/// A `BasicBlock` (two 3×3 convolutions) or a `Bottleneck` (1×1, grouped 3×3 carrying the stride, 1×1):
/// `conv{i}`/`bn{i}` pairs with a ReLU between them, then the shortcut is added and a ReLU follows.
#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn new(p: nn::Path, cfg: &Config, c_in: i64, planes: i64, stride: i64) -> (Self, i64) {
        let (convs, c_out) = if cfg.bottleneck {
            let width = planes * cfg.width_per_group / 64 * cfg.groups;
            let c_out = planes * 4;
            let convs = vec![
                conv_bn(&p, 1, c_in, width, 1, 1, 1),
                conv_bn(&p, 2, width, width, 3, stride, cfg.groups),
                conv_bn(&p, 3, width, c_out, 1, 1, 1),
            ];
            (convs, c_out)
        } else {
            (
                vec![
                    conv_bn(&p, 1, c_in, planes, 3, stride, 1),
                    conv_bn(&p, 2, planes, planes, 3, 1, 1),
                ],
                planes,
            )
        };
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            let c = Conv {
                stride,
                ..Default::default()
            };
            (
                conv2d(&d / 0, c_in, c_out, 1, c, ConvInit::KaimingFanOut),
                batch_norm(&d / 1, c_out, Norm::default()),
            )
        });
        (Block { convs, downsample }, c_out)
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut ys = xs.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            ys = ys.apply(conv).apply_t(bn, train);
            if i < last {
                ys = ys.relu();
            }
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => xs.apply(conv).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (ys + identity).relu()
    }
}

/// The network: stem (`conv1`, `bn1`, max-pool), `layer1`..`layer4`, global average, `fc`.
#[derive(Debug)]
pub(crate) struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Block>,
    fc: nn::Linear,
}

impl ResNet {
    pub fn new(p: &nn::Path, cfg: Config, num_classes: i64) -> Self {
        let stem = Conv {
            stride: 2,
            padding: 3,
            ..Default::default()
        };
        let conv1 = conv2d(p / "conv1", 3, 64, 7, stem, ConvInit::KaimingFanOut);
        let bn1 = batch_norm(p / "bn1", 64, Norm::default());
        let mut layers = Vec::new();
        let mut c_in = 64;
        for (i, (&n, planes)) in cfg.layers.iter().zip([64, 128, 256, 512]).enumerate() {
            let lp = p / format!("layer{}", i + 1);
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let (block, c_out) = Block::new(&lp / j, &cfg, c_in, planes, stride);
                layers.push(block);
                c_in = c_out;
            }
        }
        let fc = linear(p / "fc", c_in, num_classes, LinearInit::TorchDefault);
        ResNet {
            conv1,
            bn1,
            layers,
            fc,
        }
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut xs = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.layers {
            xs = xs.apply_t(block, train);
        }
        flatten(xs.adaptive_avg_pool2d([1, 1])).apply(&self.fc)
    }
}
