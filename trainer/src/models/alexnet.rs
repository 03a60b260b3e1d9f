//! AlexNet (torchvision's `alexnet.py`, the one-GPU variant of "One weird trick").
//!
//! tch's `vision::alexnet` has the same names but flattens with `flat_view`, a view that fails on
//! channels_last activations; torchvision flattens with a reshape.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::layers::{Conv, ConvInit, LinearInit, conv2d, flatten, linear};

#[derive(Debug)]
pub(crate) struct AlexNet {
    convs: Vec<nn::Conv2D>,
    fcs: Vec<nn::Linear>,
    /// The classifier's dropout probability (torchvision's `dropout`, 0.5).
    dropout: f64,
}

/// `(features index, c_in, c_out, kernel, stride, padding, max-pool after)`.
const FEATURES: [(i64, i64, i64, i64, i64, i64, bool); 5] = [
    (0, 3, 64, 11, 4, 2, true),
    (3, 64, 192, 5, 1, 2, true),
    (6, 192, 384, 3, 1, 1, false),
    (8, 384, 256, 3, 1, 1, false),
    (10, 256, 256, 3, 1, 1, true),
];

impl AlexNet {
    pub fn new(p: &nn::Path, num_classes: i64, dropout: f64) -> Self {
        let f = p / "features";
        let convs = FEATURES
            .iter()
            .map(|&(i, c_in, c_out, k, stride, padding, _)| {
                let c = Conv {
                    stride,
                    padding,
                    bias: true,
                    ..Default::default()
                };
                conv2d(&f / i, c_in, c_out, k, c, ConvInit::TorchDefault)
            })
            .collect();
        let c = p / "classifier";
        let fcs = vec![
            linear(&c / 1, 256 * 6 * 6, 4096, LinearInit::TorchDefault),
            linear(&c / 4, 4096, 4096, LinearInit::TorchDefault),
            linear(&c / 6, 4096, num_classes, LinearInit::TorchDefault),
        ];
        AlexNet {
            convs,
            fcs,
            dropout,
        }
    }
}

impl ModuleT for AlexNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for (conv, &(.., pool)) in self.convs.iter().zip(&FEATURES) {
            xs = xs.apply(conv).relu();
            if pool {
                xs = xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
            }
        }
        let xs = flatten(xs.adaptive_avg_pool2d([6, 6]));
        let xs = xs.dropout(self.dropout, train).apply(&self.fcs[0]).relu();
        let xs = xs.dropout(self.dropout, train).apply(&self.fcs[1]).relu();
        xs.apply(&self.fcs[2])
    }
}
