//! The model zoo: torchvision's classification architectures, with torchvision's names for the
//! architectures and for every variable, so a torchvision `state_dict` loads as it is.
//!
//! ```no_run
//! use tch::nn::{ModuleT, VarStore};
//! let mut vs = VarStore::new(tch::Device::Cpu);
//! let model = imgtrain::models::build("resnet50", &vs.root(), 1000)?;
//! imgtrain::models::load_pretrained(&mut vs, std::path::Path::new("resnet50.safetensors"))?;
//! let logits = model.forward_t(&tch::Tensor::zeros([1, 3, 224, 224], tch::kind::FLOAT_CPU), false);
//! # Ok::<(), imgtrain::models::ModelError>(())
//! ```
//!
//! Weights come from `trainer/scripts/export_torchvision.py`, which writes a torchvision model's
//! `state_dict` to a safetensors file. Models use only standard libtorch ops, so channels_last input and
//! autocast work as they do in PyTorch. Each family starts its weights the way torchvision's `__init__`
//! does, so training from scratch starts where torchvision's does.
//!
//! tch's `vision` module has most of these families, but none of them both matches torchvision's forward
//! pass for every input size and starts like torchvision; each family file says where tch differs.

mod alexnet;
mod densenet;
mod efficientnet;
mod layers;
mod mobilenet;
mod resnet;
mod vgg;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tch::nn::{self, ModuleT};
use tch::{Kind, TchError, Tensor};

/// Every architecture [`build`] knows, spelled as torchvision spells them.
pub const ARCHS: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
];

/// Errors building a model or loading weights into it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// `arch` is not one of [`ARCHS`].
    #[error("unknown architecture {arch:?}; known: {}", choices.join(", "))]
    UnknownArch {
        arch: String,
        choices: &'static [&'static str],
    },
    /// A dropout probability outside [0, 1), or for an architecture without classifier dropout.
    #[error("dropout {p} for {arch}: only alexnet and vgg* take one, in [0, 1)")]
    Dropout { arch: String, p: f64 },
    /// A classifier needs at least one class.
    #[error("invalid number of classes {num_classes}: must be at least 1")]
    NumClasses { num_classes: i64 },
    /// The weights file could not be read or is not a safetensors file.
    #[error("{}: cannot read as safetensors", path.display())]
    ReadWeights {
        path: PathBuf,
        #[source]
        source: TchError,
    },
    /// The file's tensors are not the model's variables: some are missing, unexpected or of another shape.
    #[error("{}: does not fit the model: {}", path.display(), describe_mismatch(missing, unexpected, mismatched))]
    WeightsMismatch {
        path: PathBuf,
        /// Model variables absent from the file, with the model's shape.
        missing: Vec<(String, Vec<i64>)>,
        /// File tensors the model does not have (`num_batches_tracked` aside), with the file's shape.
        unexpected: Vec<(String, Vec<i64>)>,
        /// Names in both whose shapes differ: the file's shape, then the model's.
        mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
    },
    /// A tensor the model needs is stored as integers or booleans.
    #[error("{}: tensor {name:?} has dtype {kind:?}; model variables need floating-point values", path.display())]
    WeightsDtype {
        path: PathBuf,
        name: String,
        kind: Kind,
    },
    /// libtorch failed copying a tensor into the model (e.g. out of device memory).
    #[error("{}: copying tensor {name:?} into the model", path.display())]
    CopyWeights {
        path: PathBuf,
        name: String,
        #[source]
        source: TchError,
    },
}

/// At most this many names of each kind go into a mismatch message; the count says how many there are.
const MAX_LISTED: usize = 8;

fn describe_mismatch(
    missing: &[(String, Vec<i64>)],
    unexpected: &[(String, Vec<i64>)],
    mismatched: &[(String, Vec<i64>, Vec<i64>)],
) -> String {
    let mut parts = Vec::new();
    let mut list = |what: &str, items: Vec<String>| {
        if items.is_empty() {
            return;
        }
        let mut s = format!("{} {what}: ", items.len());
        s += &items
            .iter()
            .take(MAX_LISTED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if items.len() > MAX_LISTED {
            let _ = write!(s, ", … ({} more)", items.len() - MAX_LISTED);
        }
        parts.push(s);
    };
    list(
        "missing from the file",
        missing.iter().map(|(n, s)| format!("{n} {s:?}")).collect(),
    );
    list(
        "not in the model",
        unexpected
            .iter()
            .map(|(n, s)| format!("{n} {s:?}"))
            .collect(),
    );
    list(
        "of another shape",
        mismatched
            .iter()
            .map(|(n, file, model)| format!("{n} (file {file:?}, model {model:?})"))
            .collect(),
    );
    let mut msg = parts.join("; ");
    if !mismatched.is_empty() && missing.is_empty() && unexpected.is_empty() {
        msg += " (a classifier of another size? the number of classes must match the file's)";
    }
    msg
}

/// A built network. Its variables live in the [`nn::VarStore`] whose path was given to [`build`].
#[derive(Debug)]
pub struct Model {
    arch: &'static str,
    net: Box<dyn ModuleT + Send>,
}

impl Model {
    /// The architecture's name, as in [`ARCHS`].
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// Logits `[N, num_classes]` for images `[N, 3, H, W]` (contiguous or channels_last, normalised like
    /// torchvision's inputs). `train` switches batch norm to batch statistics and turns on dropout and
    /// stochastic depth.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }
}

impl ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }
}

/// Creates architecture `arch` (torchvision's spelling, one of [`ARCHS`]) with its variables under `vs`,
/// named as torchvision's `state_dict` keys, and a classifier for `num_classes` classes.
pub fn build(arch: &str, vs: &nn::Path, num_classes: i64) -> Result<Model, ModelError> {
    build_with(arch, vs, num_classes, None)
}

/// The architectures whose classifier takes torchvision's `dropout` argument (see [`build_with`]).
pub fn has_classifier_dropout(arch: &str) -> bool {
    arch == "alexnet" || arch.starts_with("vgg")
}

/// [`build`], with the classifier's dropout probability of AlexNet and VGG (torchvision's `dropout`
/// argument; `None`: its default, 0.5). Other architectures refuse a `dropout`.
pub fn build_with(
    arch: &str,
    vs: &nn::Path,
    num_classes: i64,
    dropout: Option<f64>,
) -> Result<Model, ModelError> {
    if let Some(p) = dropout
        && !(has_classifier_dropout(arch) && (0.0..1.0).contains(&p))
    {
        return Err(ModelError::Dropout {
            arch: arch.to_owned(),
            p,
        });
    }
    let p_drop = dropout.unwrap_or(0.5);
    let Some(&name) = ARCHS.iter().find(|&&a| a == arch) else {
        return Err(ModelError::UnknownArch {
            arch: arch.to_owned(),
            choices: ARCHS,
        });
    };
    if num_classes < 1 {
        return Err(ModelError::NumClasses { num_classes });
    }
    let n = num_classes;
    use resnet::{Config as R, ResNet};
    let net: Box<dyn ModuleT + Send> = match name {
        "resnet18" => Box::new(ResNet::new(vs, R::basic([2, 2, 2, 2]), n)),
        "resnet34" => Box::new(ResNet::new(vs, R::basic([3, 4, 6, 3]), n)),
        "resnet50" => Box::new(ResNet::new(vs, R::bottleneck([3, 4, 6, 3], 1, 64), n)),
        "resnet101" => Box::new(ResNet::new(vs, R::bottleneck([3, 4, 23, 3], 1, 64), n)),
        "resnet152" => Box::new(ResNet::new(vs, R::bottleneck([3, 8, 36, 3], 1, 64), n)),
        "resnext50_32x4d" => Box::new(ResNet::new(vs, R::bottleneck([3, 4, 6, 3], 32, 4), n)),
        "resnext101_32x8d" => Box::new(ResNet::new(vs, R::bottleneck([3, 4, 23, 3], 32, 8), n)),
        "wide_resnet50_2" => Box::new(ResNet::new(vs, R::bottleneck([3, 4, 6, 3], 1, 128), n)),
        "wide_resnet101_2" => Box::new(ResNet::new(vs, R::bottleneck([3, 4, 23, 3], 1, 128), n)),
        "alexnet" => Box::new(alexnet::AlexNet::new(vs, n, p_drop)),
        vgg if vgg.starts_with("vgg") => {
            let bn = vgg.ends_with("_bn");
            let cfg = match &vgg[3..5] {
                "11" => vgg::A,
                "13" => vgg::B,
                "16" => vgg::D,
                _ => vgg::E,
            };
            Box::new(vgg::Vgg::new(vs, cfg, bn, n, p_drop))
        }
        "densenet121" => Box::new(densenet::DenseNet::new(
            vs,
            dense(32, [6, 12, 24, 16], 64),
            n,
        )),
        "densenet161" => Box::new(densenet::DenseNet::new(
            vs,
            dense(48, [6, 12, 36, 24], 96),
            n,
        )),
        "densenet169" => Box::new(densenet::DenseNet::new(
            vs,
            dense(32, [6, 12, 32, 32], 64),
            n,
        )),
        "densenet201" => Box::new(densenet::DenseNet::new(
            vs,
            dense(32, [6, 12, 48, 32], 64),
            n,
        )),
        eff if eff.starts_with("efficientnet_b") => {
            // torchvision's width_mult, depth_mult, dropout, and B5-B7's batch norm (eps 1e-3, momentum 0.01).
            let (width, depth, dropout, tf_norm) = match eff.as_bytes()[eff.len() - 1] - b'0' {
                0 => (1.0, 1.0, 0.2, false),
                1 => (1.0, 1.1, 0.2, false),
                2 => (1.1, 1.2, 0.3, false),
                3 => (1.2, 1.4, 0.3, false),
                4 => (1.4, 1.8, 0.4, false),
                5 => (1.6, 2.2, 0.4, true),
                6 => (1.8, 2.6, 0.5, true),
                _ => (2.0, 3.1, 0.5, true),
            };
            Box::new(efficientnet::EfficientNet::new(
                vs,
                efficientnet::Config {
                    width,
                    depth,
                    dropout,
                    tf_norm,
                },
                n,
            ))
        }
        "mobilenet_v2" => Box::new(mobilenet::MobileNet::v2(vs, n)),
        "mobilenet_v3_large" => Box::new(mobilenet::MobileNet::v3(vs, true, n)),
        "mobilenet_v3_small" => Box::new(mobilenet::MobileNet::v3(vs, false, n)),
        other => unreachable!("{other} is in ARCHS but has no constructor"),
    };
    Ok(Model { arch: name, net })
}

fn dense(growth: i64, blocks: [i64; 4], init_features: i64) -> densenet::Config {
    densenet::Config {
        growth,
        blocks,
        init_features,
    }
}

/// The smallest square input `arch` takes, torchvision's `min_size`: every pooling stage must keep at
/// least one pixel (AlexNet's unpadded max-pools need 63, VGG's five halvings 32, DenseNet's 29). `None`
/// for an unknown architecture.
pub fn min_image_size(arch: &str) -> Option<i64> {
    match arch {
        "alexnet" => Some(63),
        a if a.starts_with("vgg") => Some(32),
        a if a.starts_with("densenet") => Some(29),
        a if ARCHS.contains(&a) => Some(1),
        _ => None,
    }
}

/// What [`load_pretrained`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The file read.
    pub path: PathBuf,
    /// Variables copied into the model (all of its variables).
    pub loaded: usize,
    /// File tensors left alone: torchvision's `num_batches_tracked` counters, which only matter for
    /// batch norm with `momentum=None`, never used by these architectures.
    pub ignored: Vec<String>,
}

/// Suffix of the batch-norm counters torchvision's `state_dict` has and these models do not.
const IGNORED_SUFFIX: &str = "num_batches_tracked";

/// Copies the tensors of safetensors file `path` (a torchvision `state_dict`, as
/// `export_torchvision.py` writes it) into the variables of `vs`, converting dtype and device.
///
/// Every variable of the model must be in the file with its shape, and every tensor of the file must be
/// a variable of the model, except `*.num_batches_tracked`; otherwise nothing is copied and the error
/// lists the names at fault.
pub fn load_pretrained(vs: &mut nn::VarStore, path: &Path) -> Result<LoadReport, ModelError> {
    let tensors = Tensor::read_safetensors(path).map_err(|source| ModelError::ReadWeights {
        path: path.to_owned(),
        source,
    })?;
    let mut ignored = Vec::new();
    let mut file: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        if name.rsplit('.').next() == Some(IGNORED_SUFFIX) {
            ignored.push(name);
        } else {
            file.insert(name, tensor);
        }
    }
    ignored.sort();
    // Sorted, so messages list names in a stable order.
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, var) in &vars {
        match file.get(name) {
            None => missing.push((name.clone(), var.size())),
            Some(t) if t.size() != var.size() => {
                mismatched.push((name.clone(), t.size(), var.size()))
            }
            Some(t) if !t.is_floating_point() => {
                return Err(ModelError::WeightsDtype {
                    path: path.to_owned(),
                    name: name.clone(),
                    kind: t.kind(),
                });
            }
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<_> = file
        .iter()
        .filter(|(name, _)| !vars.contains_key(*name))
        .map(|(name, t)| (name.clone(), t.size()))
        .collect();
    unexpected.sort();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        return Err(ModelError::WeightsMismatch {
            path: path.to_owned(),
            missing,
            unexpected,
            mismatched,
        });
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            let mut var = var.shallow_clone();
            var.f_copy_(&file[name])
                .map_err(|source| ModelError::CopyWeights {
                    path: path.to_owned(),
                    name: name.clone(),
                    source,
                })?;
        }
        Ok(())
    })?;
    Ok(LoadReport {
        path: path.to_owned(),
        loaded: vars.len(),
        ignored,
    })
}
