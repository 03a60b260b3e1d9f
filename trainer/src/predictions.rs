//! `imgtrain -e --dump-predictions FILE.csv`: what the model said about each validation image.
//!
//! One row per image evaluated, in the split's order: the image's name as the loader knows it (a path,
//! or `archive › member`), its label (class index and class name), then the top 5 classes (index, name
//! and probability: the softmax of the logits, f32), best first. The classes are ranked by the logits
//! exactly as Acc@1 and Acc@5 rank them, so top-1 and top-5 recomputed from the file are the printed
//! accuracies. A bad image that validation leaves out ([`imgloader::BadSamples::Omit`], named in
//! [`ValStats::left_out`](crate::trainer::ValStats::left_out)) has no row: it is not in the accuracy
//! either. The file is replaced atomically, so a reader never sees half of it.
//!
//! In a distributed run each rank evaluates its own part of the split, and the rows meet on rank 0
//! through the process group: an all-reduce (sum) of a table with one row per image of the split, each
//! rank filling only the rows of its images. Not through part files beside FILE, because then the ranks
//! need no file system in common (the nodes of a multi-node run may share none), nothing is left behind
//! when a rank dies halfway, and the sum itself proves that no image was evaluated twice (such a row
//! counts 2). The table costs `1 + 2 * 5` f64 per image: 4.4 MB for ImageNet's 50,000.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;

use imgloader::Source;
use tch::{Device, Kind, Tensor};

use crate::dist::{ProcessGroup, ReduceOp};
use crate::error::{Result, TorchContext, TrainError};

/// The flag, as errors name it.
pub const FLAG: &str = "--dump-predictions";
/// Classes kept per image (fewer when the model has fewer).
pub const TOP: usize = 5;

/// One evaluated image: its index in the split and its top classes, best first, with probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub top: Vec<(u32, f32)>,
}

fn error(path: &Path, reason: impl Into<String>, source: Option<std::io::Error>) -> TrainError {
    TrainError::Predictions {
        path: path.to_owned(),
        reason: reason.into(),
        source,
    }
}

/// The top classes of each row of `logits`, for the images `indices` of the split. Ranked by the logits
/// themselves (as the accuracy is), then given their softmax probabilities. Reads the result back to the
/// host: on CUDA one wait per batch, paid only when predictions are kept.
pub fn top_classes(logits: &Tensor, indices: &[usize]) -> Result<Vec<Prediction>> {
    let what = || "computing the predictions".to_owned();
    let k = logits.size()[1].min(TOP as i64);
    let (_, classes) = logits.f_topk(k, 1, true, true).during(what)?;
    let probs = logits
        .f_softmax(1, Kind::Float)
        .and_then(|p| p.f_gather(1, &classes, false))
        .and_then(|p| p.f_flatten(0, -1))
        .and_then(|p| p.f_to_device(Device::Cpu))
        .during(what)?;
    let classes = classes
        .f_flatten(0, -1)
        .and_then(|c| c.f_to_device(Device::Cpu))
        .during(what)?;
    let probs = Vec::<f32>::try_from(&probs).during(what)?;
    let classes = Vec::<i64>::try_from(&classes).during(what)?;
    let k = k as usize;
    Ok(indices
        .iter()
        .enumerate()
        .map(|(row, &index)| Prediction {
            index,
            top: (row * k..(row + 1) * k)
                .map(|j| (classes[j] as u32, probs[j]))
                .collect(),
        })
        .collect())
}

/// Fails unless a file can be written at `path`: its folder exists and takes a new file (a probe, removed
/// at once), and `path` is not a folder. Checked before the evaluation, so a typo costs nothing.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(error(
            path,
            "is a folder; name a file, e.g. predictions.csv",
            None,
        ));
    }
    let Some(name) = path.file_name() else {
        return Err(error(path, "names no file", None));
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(error(
            path,
            format!("folder {} does not exist", dir.display()),
            None,
        ));
    }
    let probe = dir.join(format!(
        ".{}.{}.probe",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| error(path, "not writable", Some(e)))
}

/// Before a distributed run's evaluation: rank 0 (the one that writes) checks `path`, and every rank
/// learns the outcome, so that none evaluates for a file that rank 0 has already given up on.
pub fn prepare(path: &Path, group: Option<&ProcessGroup>) -> Result<()> {
    let lead = group.is_none_or(|g| g.rank() == 0);
    let checked = if lead { check_writable(path) } else { Ok(()) };
    if let Some(g) = group {
        let ok = g.agree(u64::from(checked.is_ok()))?;
        if ok == 0 && !lead {
            return Err(error(path, "rank 0 cannot write it", None));
        }
    }
    checked
}

/// Collects the ranks' `local` predictions (all of them without a group) and, on rank 0, writes them to
/// `path` in the split's order; `evaluated` is the number of images the evaluation counted over every
/// rank, which must be the number of rows. Returns the rows written (on rank 0; `None` elsewhere).
pub fn dump(
    path: &Path,
    source: &dyn Source,
    local: &[Prediction],
    evaluated: u64,
    group: Option<&ProcessGroup>,
) -> Result<Option<usize>> {
    let n = source.len();
    let k = source.classes().len().min(TOP);
    let width = 1 + 2 * k;
    // Row i: how many ranks evaluated image i, then (class, probability) pairs.
    let mut table = vec![0.0; n * width];
    for p in local {
        let row = &mut table[p.index * width..][..width];
        row[0] += 1.0;
        for (j, &(class, prob)) in p.top.iter().enumerate().take(k) {
            row[1 + 2 * j] = f64::from(class);
            row[2 + 2 * j] = f64::from(prob);
        }
    }
    if let Some(g) = group {
        table = g
            .all_reduce(&table, ReduceOp::Sum)
            .map_err(|e| TrainError::Collective {
                rank: g.rank(),
                what: format!("gathering the predictions for {FLAG}"),
                message: e.to_string(),
            })?;
        if g.rank() != 0 {
            return Ok(None);
        }
    }
    let classes = source.classes();
    let mut csv = String::from("name,label,class");
    for j in 1..=k {
        let _ = write!(csv, ",top{j},top{j}_class,top{j}_prob");
    }
    csv.push('\n');
    let mut rows = 0;
    for (index, row) in table.chunks_exact(width).enumerate() {
        match row[0] as u64 {
            // Left out (a bad image), not evaluated.
            0 => continue,
            1 => {}
            times => {
                return Err(error(
                    path,
                    format!(
                        "image {} was evaluated {times} times (a bug: each rank should evaluate \
                         its own images)",
                        source.name(index)
                    ),
                    None,
                ));
            }
        }
        let label = source.label(index);
        let _ = write!(
            csv,
            "{},{label},{}",
            field(&source.name(index)),
            field(class_name(classes, label))
        );
        for pair in row[1..].chunks_exact(2) {
            let class = pair[0] as u32;
            // Exact: an f32 travelled as an f64.
            let prob = pair[1] as f32;
            let _ = write!(csv, ",{class},{},{prob}", field(class_name(classes, class)));
        }
        csv.push('\n');
        rows += 1;
    }
    if rows as u64 != evaluated {
        return Err(error(
            path,
            format!("{rows} images have predictions, but the evaluation counted {evaluated}"),
            None,
        ));
    }
    imgloader::atomic::write_file(path, csv.as_bytes())
        .map_err(|e| error(path, "not writable", Some(e)))?;
    Ok(Some(rows))
}

fn class_name(classes: &[String], class: u32) -> &str {
    classes.get(class as usize).map_or("", String::as_str)
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break, quotes doubled.
fn field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(field("val/n01/a.JPEG"), "val/n01/a.JPEG");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn top_classes_rank_by_logits_and_carry_softmax() {
        let logits = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 0.0, 0.0, 5.0]).view([2, 3]);
        let p = top_classes(&logits, &[7, 2]).unwrap();
        assert_eq!(p[0].index, 7);
        assert_eq!(p[0].top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        let e = [1f32.exp(), 3f32.exp(), 2f32.exp()];
        let sum: f32 = e.iter().sum();
        assert!((p[0].top[0].1 - e[1] / sum).abs() < 1e-6);
        assert_eq!(p[1].top[0].0, 2);
        assert!((p[1].top.iter().map(|t| t.1).sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_missing_folder_or_a_folder_as_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_writable(&dir.path().join("nope/p.csv")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(e.to_string().starts_with("--dump-predictions "), "{e}");
        let e = check_writable(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is a folder"), "{e}");
        check_writable(&dir.path().join("p.csv")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
