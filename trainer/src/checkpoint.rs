//! Checkpoints: one safetensors file holding everything a resumed run needs.
//!
//! | tensor | what |
//! | --- | --- |
//! | `<name>` (torchvision's names: `conv1.weight`, `bn1.running_mean`, …) | every model variable |
//! | `__momentum__.<name>` | SGD momentum buffer of trainable variable `<name>` (absent before its first step) |
//!
//! The safetensors header's `__metadata__` holds one key, `imgtrain`, whose value is a JSON object:
//! format version, architecture, classes, epochs done, global step, best and last top-1/top-5, the run's
//! recipe ([`Recipe`]: base learning rate, momentum, weight decay, schedule, warm-up, label smoothing,
//! epochs), the last learning rate, seed, the fp16 loss scaler's state, the command line, and a CRC-32 of
//! every tensor's name and bytes in name order. A reader checks all of it ([`Checkpoint::read`]) before use.
//!
//! Random state is not saved: every random stream of a run is a pure function of the seed and the
//! epoch (the loader's per-sample draws; libtorch's generator is reseeded at each epoch's start), so a run
//! resumed at an epoch boundary draws exactly what the uninterrupted run would have.
//!
//! Writes go through [`imgloader::atomic::write_file`] (a synced temporary file renamed over `<name>`, then
//! the folder synced): a crash leaves the previous checkpoint or the new one, never a torn file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::amp::LossScaler;
use crate::config::Recipe;
use crate::error::{Result, TorchContext, TrainError};
use crate::optim::Sgd;

/// The `format` field of our metadata.
pub const FORMAT: &str = "imgtrain-checkpoint";
/// The version of the layout described in the module docs.
pub const VERSION: u64 = 2;
/// The `__metadata__` key holding our JSON.
const META_KEY: &str = "imgtrain";
/// Prefix of the momentum-buffer tensors.
pub const MOMENTUM_PREFIX: &str = "__momentum__.";

/// Everything in a checkpoint besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Architecture, as `--arch` names it.
    pub arch: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// The epoch a resumed run starts with: the epochs completed, or, with `position`, the epoch that was
    /// stopped part-way.
    pub epoch: u64,
    /// Optimizer steps taken so far.
    pub global_step: u64,
    /// Best validation top-1 so far (percent).
    pub best_acc1: f64,
    /// Validation top-1 and top-5 after the last completed epoch (percent).
    pub acc1: f64,
    pub acc5: f64,
    /// How the run optimises: base learning rate, momentum, weight decay, schedule, warm-up, label
    /// smoothing and epochs. `--resume` restores it; a flag given on the command line overrides it.
    pub recipe: Recipe,
    /// The learning rate of the last step taken.
    pub lr: f64,
    /// The run's seed (given or drawn).
    pub seed: u64,
    /// fp16 loss-scaler state; `None` when the run did not use fp16.
    pub scaler: Option<LossScaler>,
    /// The command line of the run that wrote the checkpoint.
    pub args: Vec<String>,
    /// Where in `epoch` the run stopped, for a checkpoint written mid-epoch (`--checkpoint-every`, or
    /// SIGTERM/SIGINT); `None` at an epoch's end.
    #[serde(default)]
    pub position: Option<Position>,
}

/// A place inside an epoch: how far its steps went, and what its meters held there, so that a resumed run
/// continues the epoch with the same remaining samples and reports it whole.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Samples of the epoch's global order read so far, by all ranks together.
    pub consumed: u64,
    /// Steps of the epoch taken.
    pub steps: u64,
    /// The global batch of those steps: the batch per rank times the ranks.
    pub global_batch: u64,
    /// The epoch's loss, top-1 and top-5 totals so far over `count` samples, all ranks together.
    pub loss_sum: f64,
    pub top1_sum: f64,
    pub top5_sum: f64,
    pub count: f64,
    /// Training images processed in the epoch so far (all ranks), the seconds it took, the seconds spent
    /// waiting for data (rank 0), and bad samples replaced (rank 0).
    pub images: u64,
    pub seconds: f64,
    pub waited: f64,
    pub bad: u64,
}

impl Meta {
    fn to_json(&self, crc: u32) -> Result<String> {
        let mut v = serde_json::to_value(self).map_err(|e| TrainError::Torch {
            what: "serialising checkpoint metadata".into(),
            source: tch::TchError::Convert(e.to_string()),
        })?;
        let obj = v.as_object_mut().expect("a struct serialises to an object");
        obj.insert("format".into(), FORMAT.into());
        obj.insert("version".into(), VERSION.into());
        obj.insert("crc32".into(), format!("{crc:08x}").into());
        Ok(v.to_string())
    }

    /// Parses our JSON; the error says which field is missing or wrong.
    fn from_json(json: &str) -> std::result::Result<(Meta, u32), String> {
        let v: Value =
            serde_json::from_str(json).map_err(|e| format!("metadata is not JSON: {e}"))?;
        let format = v.get("format").and_then(Value::as_str);
        if format != Some(FORMAT) {
            return Err(format!("metadata format is {format:?}, not {FORMAT:?}"));
        }
        match v.get("version").and_then(Value::as_u64) {
            Some(VERSION) => {}
            Some(1) => {
                return Err("checkpoint format version 1, written before checkpoints kept the run's \
                            recipe (momentum, weight decay, schedule): it cannot be resumed exactly; \
                            start from its weights with --pretrained instead"
                    .into());
            }
            other => {
                return Err(format!(
                    "checkpoint format version {other:?}; this imgtrain reads version {VERSION}"
                ));
            }
        }
        let crc = v
            .get("crc32")
            .and_then(Value::as_str)
            .ok_or("metadata lacks \"crc32\"")?;
        let crc =
            u32::from_str_radix(crc, 16).map_err(|e| format!("metadata crc32 is not hex: {e}"))?;
        let meta = Meta::deserialize(&v).map_err(|e| format!("metadata: {e}"))?;
        Ok((meta, crc))
    }
}

/// A tensor's bytes, copied to the host, for the safetensors writer.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        _ => return None,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        _ => return None,
    })
}

fn to_host(name: &str, t: &Tensor) -> Result<HostTensor> {
    let what = || format!("copying {name} for a checkpoint");
    let dtype = dtype_of(t.kind()).ok_or_else(|| TrainError::Torch {
        what: what(),
        source: tch::TchError::Convert(format!("unsupported kind {:?}", t.kind())),
    })?;
    let host = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .during(what)?;
    let numel = host.numel();
    let mut bytes = vec![0u8; numel * host.kind().elt_size_in_bytes()];
    host.f_copy_data_u8(&mut bytes, numel).during(what)?;
    Ok(HostTensor {
        dtype,
        shape: host.size().iter().map(|&d| d as usize).collect(),
        bytes,
    })
}

/// CRC-32 of every tensor's name and bytes, in name order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for (name, bytes) in tensors {
        crc.update(&(name.len() as u64).to_le_bytes());
        crc.update(name.as_bytes());
        crc.update(&(bytes.len() as u64).to_le_bytes());
        crc.update(bytes);
    }
    crc.finalize()
}

/// Serialises the model's variables, the optimizer's momentum buffers and `meta` into checkpoint bytes.
pub fn encode(vs: &VarStore, sgd: &Sgd, meta: &Meta) -> Result<Vec<u8>> {
    let mut tensors: BTreeMap<String, HostTensor> = BTreeMap::new();
    for (name, t) in vs.variables() {
        let host = to_host(&name, &t)?;
        tensors.insert(name, host);
    }
    for (name, buf) in sgd.momentum_buffers() {
        if let Some(buf) = buf {
            let key = format!("{MOMENTUM_PREFIX}{name}");
            let host = to_host(&key, buf)?;
            tensors.insert(key, host);
        }
    }
    let crc = checksum(
        tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.bytes.as_slice())),
    );
    let metadata = HashMap::from([(META_KEY.to_owned(), meta.to_json(crc)?)]);
    safetensors::tensor::serialize(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        &Some(metadata),
    )
    .map_err(|e| TrainError::Torch {
        what: "serialising a checkpoint".into(),
        source: tch::TchError::Convert(e.to_string()),
    })
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one
/// ([`imgloader::atomic::write_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    imgloader::atomic::write_file(path, bytes).map_err(|source| TrainError::CheckpointWrite {
        path: path.to_owned(),
        source,
    })
}

/// A checkpoint read from disk and checked.
#[derive(Debug)]
pub struct Checkpoint {
    /// The file it came from.
    pub path: PathBuf,
    /// Its metadata.
    pub meta: Meta,
    tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads `path` and checks it: a safetensors file, with our metadata, whose checksum matches.
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e:?})")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                bad(
                    "a safetensors file without imgtrain metadata: not an imgtrain checkpoint \
                     (for plain weights, such as an exported torchvision model, use --pretrained)"
                        .into(),
                )
            })?;
        let (meta, crc) = Meta::from_json(json).map_err(bad)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e:?})")))?;
        let mut views: Vec<_> = st.tensors();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let got = checksum(views.iter().map(|(n, v)| (n.as_str(), v.data())));
        if got != crc {
            return Err(bad(format!(
                "checksum mismatch (stored {crc:08x}, computed {got:08x}): the file is corrupt"
            )));
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in views {
            let kind = kind_of(view.dtype()).ok_or_else(|| {
                bad(format!(
                    "tensor {name} has unsupported dtype {:?}",
                    view.dtype()
                ))
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            tensors.insert(name, t);
        }
        Ok(Checkpoint {
            path: path.to_owned(),
            meta,
            tensors,
        })
    }

    /// Fails unless the checkpoint holds architecture `arch`.
    pub fn check_arch(&self, arch: &str) -> Result<()> {
        if self.meta.arch != arch {
            return Err(TrainError::CheckpointArch {
                path: self.path.clone(),
                found: self.meta.arch.clone(),
                expected: arch.to_owned(),
            });
        }
        Ok(())
    }

    /// A tensor by name (model variables by their torchvision names, momentum buffers under
    /// [`MOMENTUM_PREFIX`]).
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Copies the model variables into `vs` and the momentum buffers into `sgd` (when given), after
    /// checking that they are exactly the model's variables with the model's shapes. Nothing is copied
    /// when a check fails.
    pub fn restore(&self, vs: &VarStore, sgd: Option<&mut Sgd>) -> Result<()> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: self.path.clone(),
            reason,
        };
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let mut problems = Vec::new();
        for (name, var) in &vars {
            match self.tensors.get(name) {
                None => problems.push(format!("{name} is missing")),
                Some(t) if t.size() != var.size() => problems.push(format!(
                    "{name} has shape {:?}, the model {:?}",
                    t.size(),
                    var.size()
                )),
                Some(_) => {}
            }
        }
        for (name, t) in &self.tensors {
            match name.strip_prefix(MOMENTUM_PREFIX) {
                Some(var) => match vars.get(var) {
                    Some(v) if v.size() == t.size() && v.requires_grad() => {}
                    _ => {
                        problems.push(format!("{name} matches no trainable variable of the model"))
                    }
                },
                None if !vars.contains_key(name) => {
                    problems.push(format!("{name} is not a variable of the model"))
                }
                None => {}
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            problems.truncate(8);
            return Err(bad(format!(
                "does not fit the {} model ({n} problem(s)): {}",
                self.meta.arch,
                problems.join("; ")
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, var) in &vars {
                let mut var = var.shallow_clone();
                var.f_copy_(&self.tensors[name])
                    .during(|| format!("restoring {name} from {}", self.path.display()))?;
            }
            Ok(())
        })?;
        if let Some(sgd) = sgd {
            for (name, t) in &self.tensors {
                if let Some(var) = name.strip_prefix(MOMENTUM_PREFIX) {
                    // Checked above: the variable exists, is trainable and has this shape.
                    sgd.set_momentum_buffer(var, t)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            arch: "resnet18".into(),
            classes: vec!["a".into(), "b".into()],
            epoch: 1,
            global_step: 3,
            best_acc1: 50.0,
            acc1: 50.0,
            acc5: 100.0,
            recipe: Recipe::default(),
            lr: 0.1,
            seed: 7,
            scaler: None,
            args: vec!["imgtrain".into()],
            position: Some(Position {
                consumed: 16,
                steps: 2,
                global_batch: 8,
                loss_sum: 30.5,
                top1_sum: 4.0,
                top5_sum: 12.0,
                count: 16.0,
                images: 16,
                seconds: 1.25,
                waited: 0.5,
                bad: 0,
            }),
        }
    }

    #[test]
    fn metadata_round_trips_and_broken_metadata_is_named() {
        let json = meta().to_json(0xdead_beef).unwrap();
        assert_eq!(Meta::from_json(&json).unwrap(), (meta(), 0xdead_beef));
        let edit = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut v: Value = serde_json::from_str(&json).unwrap();
            f(v.as_object_mut().unwrap());
            Meta::from_json(&v.to_string()).unwrap_err()
        };
        let e = edit(&|m| {
            m.insert("version".into(), 1.into());
        });
        assert!(e.contains("version 1") && e.contains("--pretrained"), "{e}");
        let e = edit(&|m| {
            m.insert("version".into(), 99.into());
        });
        assert!(e.contains("version Some(99)"), "{e}");
        let e = edit(&|m| {
            m.remove("recipe");
        });
        assert!(e.contains("missing field `recipe`"), "{e}");
        let e = edit(&|m| {
            m.insert("crc32".into(), "xyz".into());
        });
        assert!(e.contains("crc32 is not hex"), "{e}");
        let e = edit(&|m| {
            m.insert("format".into(), "other".into());
        });
        assert!(e.contains("metadata format"), "{e}");
        assert!(Meta::from_json("{").unwrap_err().contains("not JSON"));
        let e = edit(&|m| {
            m["position"]["consumed"] = "sixteen".into();
        });
        assert!(e.starts_with("metadata: invalid type: string"), "{e}");
        // Written before positions existed (or at an epoch's end): no position.
        let mut v: Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("position");
        let (m, _) = Meta::from_json(&v.to_string()).unwrap();
        assert_eq!(m.position, None);
    }
}
