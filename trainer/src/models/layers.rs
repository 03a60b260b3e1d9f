//! Building blocks shared by the families: convolutions, batch norms and linear layers that start the way
//! the torchvision family's `__init__` starts them, `Conv2dNormActivation`, squeeze-and-excitation.

use tch::Tensor;
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init, ModuleT};

/// How a convolution starts. Each torchvision family's `__init__` picks one; the weights a run starts
/// from change how training from scratch goes, so they follow torchvision.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConvInit {
    /// PyTorch's `Conv2d.reset_parameters`: weight and bias uniform in ±1/sqrt(fan_in).
    TorchDefault,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, bias 0 (resnet, vgg, mobilenet, efficientnet).
    KaimingFanOut,
    /// `kaiming_normal_()`: fan_in, gain sqrt(2) (densenet; its convolutions have no bias).
    KaimingFanIn,
}

/// How a linear layer starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LinearInit {
    /// PyTorch's `Linear.reset_parameters`: weight and bias uniform in ±1/sqrt(in_features).
    TorchDefault,
    /// PyTorch's default weight, bias 0 (densenet).
    DefaultZeroBias,
    /// `normal_(0, 0.01)`, bias 0 (vgg, mobilenet).
    Normal001,
    /// Weight uniform in ±1/sqrt(out_features), bias 0 (efficientnet).
    UniformOut,
}

/// Convolution settings beyond the kernel size, torchvision's `Conv2d` arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv {
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    pub bias: bool,
}

impl Default for Conv {
    fn default() -> Self {
        Conv {
            stride: 1,
            padding: 0,
            groups: 1,
            bias: false,
        }
    }
}

/// A 2-D convolution named like torchvision's (`weight`, `bias`).
pub(crate) fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    c: Conv,
    init: ConvInit,
) -> nn::Conv2D {
    let (ws_init, bs_init) = match init {
        ConvInit::TorchDefault => {
            let bound = 1.0 / ((c_in / c.groups * k * k) as f64).sqrt();
            (
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )
        }
        ConvInit::KaimingFanOut => (kaiming_normal(FanInOut::FanOut), Init::Const(0.)),
        ConvInit::KaimingFanIn => (kaiming_normal(FanInOut::FanIn), Init::Const(0.)),
    };
    let cfg = nn::ConvConfig {
        stride: c.stride,
        padding: c.padding,
        groups: c.groups,
        bias: c.bias,
        ws_init,
        bs_init,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

fn kaiming_normal(fan: FanInOut) -> Init {
    Init::Kaiming {
        dist: NormalOrUniform::Normal,
        fan,
        non_linearity: NonLinearity::ReLU,
    }
}

/// Batch-norm settings: PyTorch's defaults, or efficientnet-b5+'s and mobilenet_v3's (eps 1e-3, momentum 0.01).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Norm {
    pub eps: f64,
    pub momentum: f64,
}

impl Default for Norm {
    fn default() -> Self {
        Norm {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// A `BatchNorm2d` with `weight`, `bias`, `running_mean` and `running_var`; weight 1 and bias 0 as in every
/// torchvision family (tch's default draws the weight from U(0, 1)).
pub(crate) fn batch_norm(p: nn::Path, c: i64, norm: Norm) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        eps: norm.eps,
        momentum: norm.momentum,
        ws_init: Init::Const(1.),
        bs_init: Init::Const(0.),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

/// A linear layer named like torchvision's (`weight`, `bias`).
pub(crate) fn linear(p: nn::Path, c_in: i64, c_out: i64, init: LinearInit) -> nn::Linear {
    let default_bound = 1.0 / (c_in as f64).sqrt();
    let default = Init::Uniform {
        lo: -default_bound,
        up: default_bound,
    };
    let (ws_init, bs_init) = match init {
        LinearInit::TorchDefault => (default, default),
        LinearInit::DefaultZeroBias => (default, Init::Const(0.)),
        LinearInit::Normal001 => (
            Init::Randn {
                mean: 0.,
                stdev: 0.01,
            },
            Init::Const(0.),
        ),
        LinearInit::UniformOut => {
            let bound = 1.0 / (c_out as f64).sqrt();
            (
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                Init::Const(0.),
            )
        }
    };
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init,
            bs_init: Some(bs_init),
            bias: true,
        },
    )
}

/// The activations torchvision's blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    None,
    Relu,
    Relu6,
    Silu,
    Hardswish,
    Sigmoid,
    Hardsigmoid,
}

impl Act {
    pub fn apply(self, xs: Tensor) -> Tensor {
        match self {
            Act::None => xs,
            Act::Relu => xs.relu(),
            Act::Relu6 => xs.relu6(),
            Act::Silu => xs.silu(),
            Act::Hardswish => xs.hardswish(),
            Act::Sigmoid => xs.sigmoid(),
            Act::Hardsigmoid => xs.hardsigmoid(),
        }
    }
}

/// torchvision's `Conv2dNormActivation`: `0` a bias-free convolution with "same" padding for odd kernels,
/// `1` a batch norm, then the activation (which has no parameters, so no name).
#[derive(Debug)]
pub(crate) struct ConvNormAct {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    act: Act,
}

/// Kernel size, stride and groups of a [`ConvNormAct`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cna {
    pub k: i64,
    pub stride: i64,
    pub groups: i64,
}

impl Cna {
    /// A `k`×`k` convolution with stride 1 and no groups.
    pub fn k(k: i64) -> Self {
        Cna {
            k,
            stride: 1,
            groups: 1,
        }
    }
}

impl ConvNormAct {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, cna: Cna, norm: Norm, act: Act) -> Self {
        let c = Conv {
            stride: cna.stride,
            padding: (cna.k - 1) / 2,
            groups: cna.groups,
            bias: false,
        };
        let conv = conv2d(&p / 0, c_in, c_out, cna.k, c, ConvInit::KaimingFanOut);
        let bn = batch_norm(&p / 1, c_out, norm);
        ConvNormAct { conv, bn, act }
    }
}

impl ModuleT for ConvNormAct {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.act
            .apply(xs.apply(&self.conv).apply_t(&self.bn, train))
    }
}

/// torchvision's `SqueezeExcitation`: global average, `fc1`, activation, `fc2`, gate, times the input.
#[derive(Debug)]
pub(crate) struct SqueezeExcitation {
    fc1: nn::Conv2D,
    fc2: nn::Conv2D,
    act: Act,
    gate: Act,
}

impl SqueezeExcitation {
    pub fn new(p: nn::Path, channels: i64, squeeze: i64, act: Act, gate: Act) -> Self {
        let c = Conv {
            bias: true,
            ..Default::default()
        };
        let fc1 = conv2d(&p / "fc1", channels, squeeze, 1, c, ConvInit::KaimingFanOut);
        let fc2 = conv2d(&p / "fc2", squeeze, channels, 1, c, ConvInit::KaimingFanOut);
        SqueezeExcitation {
            fc1,
            fc2,
            act,
            gate,
        }
    }
}

impl ModuleT for SqueezeExcitation {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let scale = self
            .act
            .apply(xs.adaptive_avg_pool2d([1, 1]).apply(&self.fc1))
            .apply(&self.fc2);
        self.gate.apply(scale) * xs
    }
}

/// torchvision's `_make_divisible`: `v` rounded to the nearest multiple of `divisor` (at least `divisor`),
/// but never more than 10% below `v`.
pub(crate) fn make_divisible(v: f64, divisor: i64) -> i64 {
    let d = divisor as f64;
    // Python's int() truncates; v is positive here.
    let mut new_v = divisor.max(((v + d / 2.0) as i64) / divisor * divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// `torch.flatten(x, 1)`: a reshape, so channels_last activations work too (tch's `flat_view` is a view).
pub(crate) fn flatten(xs: Tensor) -> Tensor {
    xs.flatten(1, -1)
}
