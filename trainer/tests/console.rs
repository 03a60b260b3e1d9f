//! What a run prints (issue #13): `--quiet` keeps only the epoch summaries and the final summary,
//! `--verbose` adds debug details, and the default is `main.py`'s output, unchanged. The tests run
//! without a terminal, so there is never a progress bar here: the lines are the whole output.

use crate::train::train;
use crate::train::{stderr, stdout};

const SHORT: &[&str] = &["--epochs", "1", "--limit-train", "16", "--limit-val", "8"];

fn run(flag: Option<&str>) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = SHORT.to_vec();
    args.extend(flag);
    let out = train(dir.path(), &args);
    (stdout(&out), stderr(&out))
}

#[test]
fn quiet_keeps_only_the_summaries() {
    let (o, e) = run(Some("--quiet"));
    assert!(!o.contains("Epoch: [0]["), "{o}");
    assert!(!o.contains("Test: ["), "{o}");
    assert!(!o.contains("=> creating model"), "{o}");
    assert!(o.contains("Epoch: [0] done: 16 images"), "{o}");
    assert!(o.contains(" * Acc@1 "), "{o}");
    assert!(o.contains("== summary"), "{o}");
    assert!(o.contains("val Acc@1 "), "{o}");
    // No bar (no terminal) and nothing else on standard error.
    assert!(e.trim().is_empty(), "{e}");
}

#[test]
fn default_and_verbose_output() {
    let (o, e) = run(None);
    assert!(o.contains("Epoch: [0][1/2]\tTime "), "{o}");
    assert!(o.contains("Test: [1/1]\tTime "), "{o}");
    assert!(o.contains("=> creating model 'resnet18'"), "{o}");
    assert!(!o.contains("=> debug: "), "{o}");
    assert!(!e.contains('\r'), "a progress bar without a terminal:\n{e}");

    assert!(!e.contains("loader built"), "{e}");

    let (v, ve) = run(Some("--verbose"));
    // The loader's own events, through the tracing subscriber, on standard error.
    assert!(
        ve.contains("imgloader") && ve.contains("loader built"),
        "{ve}"
    );
    assert!(
        ve.contains("samples=16") && ve.contains("epoch started"),
        "{ve}"
    );
    assert!(v.contains("Epoch: [0][1/2]\tTime "), "{v}");
    assert!(v.contains("=> debug: plan: resnet18 on "), "{v}");
    assert!(
        v.contains("=> debug: train loader: 16 samples from "),
        "{v}"
    );
    assert!(v.contains("=> debug: val loader: 8 samples from "), "{v}");
    // Otherwise the same lines.
    let steps = |s: &str| s.lines().filter(|l| l.contains("]\tTime ")).count();
    assert_eq!(steps(&o), steps(&v));
    assert_eq!(steps(&o), 3);
}
