//! STAND-IN for the model zoo, so that the trainer can be written and tested before the zoo lands; the
//! real `models` module replaces this file at merge. It has the zoo's API (`ARCHS`, `build`,
//! `load_pretrained`, `Model::forward_t`, `ModelError`) for two architectures, built with tch's `vision`
//! ResNets, whose variable names are torchvision's.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tch::nn::{self, ModuleT};
use tch::{TchError, Tensor};

/// Every architecture [`build`] knows, spelled as torchvision spells them.
pub const ARCHS: &[&str] = &["resnet18", "resnet50"];

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
    /// The file's tensors are not the model's variables.
    #[error("{}: does not fit the model: {reason}", path.display())]
    WeightsMismatch { path: PathBuf, reason: String },
}

/// A built network. Its variables live in the [`nn::VarStore`] whose path was given to [`build`].
pub struct Model {
    arch: &'static str,
    net: Box<dyn ModuleT + Send>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("arch", &self.arch).finish()
    }
}

impl Model {
    /// The architecture's name, as in [`ARCHS`].
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// Logits `[N, num_classes]` for images `[N, 3, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }
}

impl ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }
}

/// Creates architecture `arch` with its variables under `vs` and a classifier for `num_classes` classes.
pub fn build(arch: &str, vs: &nn::Path, num_classes: i64) -> Result<Model, ModelError> {
    let Some(&name) = ARCHS.iter().find(|&&a| a == arch) else {
        return Err(ModelError::UnknownArch {
            arch: arch.to_owned(),
            choices: ARCHS,
        });
    };
    if num_classes < 1 {
        return Err(ModelError::NumClasses { num_classes });
    }
    let net: Box<dyn ModuleT + Send> = match name {
        "resnet18" => Box::new(tch::vision::resnet::resnet18(vs, num_classes)),
        _ => Box::new(tch::vision::resnet::resnet50(vs, num_classes)),
    };
    Ok(Model { arch: name, net })
}

/// What [`load_pretrained`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// The file read.
    pub path: PathBuf,
    /// Variables copied into the model.
    pub loaded: usize,
    /// File tensors left alone (`num_batches_tracked`).
    pub ignored: Vec<String>,
}

/// Copies the tensors of safetensors file `path` (a torchvision `state_dict`) into the variables of `vs`.
pub fn load_pretrained(vs: &mut nn::VarStore, path: &Path) -> Result<LoadReport, ModelError> {
    let read = |source| ModelError::ReadWeights {
        path: path.to_owned(),
        source,
    };
    let mut file: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(read)?
        .into_iter()
        .collect();
    let ignored: Vec<String> = file
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .cloned()
        .collect();
    for k in &ignored {
        file.remove(k);
    }
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut problems = Vec::new();
    for (name, var) in &vars {
        match file.get(name) {
            None => problems.push(format!("{name} missing")),
            Some(t) if t.size() != var.size() => problems.push(format!(
                "{name} of shape {:?}, model {:?}",
                t.size(),
                var.size()
            )),
            Some(_) => {}
        }
    }
    problems.extend(
        file.keys()
            .filter(|k| !vars.contains_key(*k))
            .map(|k| format!("{k} not in the model")),
    );
    if !problems.is_empty() {
        return Err(ModelError::WeightsMismatch {
            path: path.to_owned(),
            reason: problems.join(", "),
        });
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            let mut var = var.shallow_clone();
            var.f_copy_(&file[name]).map_err(read)?;
        }
        Ok(())
    })?;
    Ok(LoadReport {
        path: path.to_owned(),
        loaded: vars.len(),
        ignored,
    })
}
