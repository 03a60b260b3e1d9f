//! DenseNet-BC 121/161/169/201 (torchvision's `densenet.py`).
//!
//! tch's `vision::densenet` ends with a fixed 7×7 average pool, so it only takes 224×224 input;
//! torchvision pools adaptively to 1×1.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::layers::{Conv, ConvInit, LinearInit, Norm, batch_norm, conv2d, flatten, linear};

/// torchvision's `growth_rate`, `block_config`, `num_init_features` (`bn_size` is 4 for all four).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub growth: i64,
    pub blocks: [i64; 4],
    pub init_features: i64,
}

const BN_SIZE: i64 = 4;

/// `norm1`, ReLU, 1×1 `conv1` to `BN_SIZE * growth`, `norm2`, ReLU, 3×3 `conv2` to `growth`.
#[derive(Debug)]
struct DenseLayer {
    norm1: nn::BatchNorm,
    conv1: nn::Conv2D,
    norm2: nn::BatchNorm,
    conv2: nn::Conv2D,
}

impl DenseLayer {
    fn new(p: nn::Path, c_in: i64, growth: i64) -> Self {
        let inter = BN_SIZE * growth;
        DenseLayer {
            norm1: batch_norm(&p / "norm1", c_in, Norm::default()),
            conv1: conv2d(
                &p / "conv1",
                c_in,
                inter,
                1,
                Conv::default(),
                ConvInit::KaimingFanIn,
            ),
            norm2: batch_norm(&p / "norm2", inter, Norm::default()),
            conv2: conv2d(
                &p / "conv2",
                inter,
                growth,
                3,
                Conv {
                    padding: 1,
                    ..Default::default()
                },
                ConvInit::KaimingFanIn,
            ),
        }
    }
}

impl ModuleT for DenseLayer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply_t(&self.norm1, train)
            .relu()
            .apply(&self.conv1)
            .apply_t(&self.norm2, train)
            .relu()
            .apply(&self.conv2)
    }
}

/// `denseblock{i}`, where each layer sees the concatenation of the block input and all earlier layers'
/// outputs, then (but after the last block) `transition{i}`: `norm`, ReLU, 1×1 `conv` halving the
/// channels, 2×2 average pool.
#[derive(Debug)]
struct Stage {
    layers: Vec<DenseLayer>,
    transition: Option<(nn::BatchNorm, nn::Conv2D)>,
}

#[derive(Debug)]
pub(crate) struct DenseNet {
    conv0: nn::Conv2D,
    norm0: nn::BatchNorm,
    stages: Vec<Stage>,
    norm5: nn::BatchNorm,
    classifier: nn::Linear,
}

impl DenseNet {
    pub fn new(p: &nn::Path, cfg: Config, num_classes: i64) -> Self {
        let f = p / "features";
        let stem = Conv {
            stride: 2,
            padding: 3,
            ..Default::default()
        };
        let conv0 = conv2d(
            &f / "conv0",
            3,
            cfg.init_features,
            7,
            stem,
            ConvInit::KaimingFanIn,
        );
        let norm0 = batch_norm(&f / "norm0", cfg.init_features, Norm::default());
        let mut c = cfg.init_features;
        let mut stages = Vec::new();
        for (i, &n) in cfg.blocks.iter().enumerate() {
            let bp = &f / format!("denseblock{}", i + 1);
            let layers = (0..n)
                .map(|j| {
                    DenseLayer::new(
                        &bp / format!("denselayer{}", j + 1),
                        c + j * cfg.growth,
                        cfg.growth,
                    )
                })
                .collect();
            c += n * cfg.growth;
            let transition = (i + 1 < cfg.blocks.len()).then(|| {
                let tp = &f / format!("transition{}", i + 1);
                let norm = batch_norm(&tp / "norm", c, Norm::default());
                let conv = conv2d(
                    &tp / "conv",
                    c,
                    c / 2,
                    1,
                    Conv::default(),
                    ConvInit::KaimingFanIn,
                );
                c /= 2;
                (norm, conv)
            });
            stages.push(Stage { layers, transition });
        }
        let norm5 = batch_norm(&f / "norm5", c, Norm::default());
        let classifier = linear(
            p / "classifier",
            c,
            num_classes,
            LinearInit::DefaultZeroBias,
        );
        DenseNet {
            conv0,
            norm0,
            stages,
            norm5,
            classifier,
        }
    }
}

impl ModuleT for DenseNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut xs = xs
            .apply(&self.conv0)
            .apply_t(&self.norm0, train)
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            // Appending each new output to the running concatenation gives every layer the same input as
            // torchvision's cat of the whole list.
            for layer in &stage.layers {
                let new = xs.apply_t(layer, train);
                xs = Tensor::cat(&[&xs, &new], 1);
            }
            if let Some((norm, conv)) = &stage.transition {
                xs = xs.apply_t(norm, train).relu().apply(conv).avg_pool2d(
                    [2, 2],
                    [2, 2],
                    [0, 0],
                    false,
                    true,
                    None::<i64>,
                );
            }
        }
        let xs = xs.apply_t(&self.norm5, train).relu();
        flatten(xs.adaptive_avg_pool2d([1, 1])).apply(&self.classifier)
    }
}
