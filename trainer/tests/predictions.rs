//! `imgtrain -e --dump-predictions FILE.csv` (issue #13): one row per validation image, each exactly once
//! on any number of ranks, whose top-1 and top-5 are the printed accuracies; a file that cannot be
//! written stops the run before the evaluation.

use std::path::Path;

use imgtrain::data::{self, LabelFiles, Subset};

use crate::dist::{RESNET, ranks, run};
use crate::train::{dataset, imgtrain, runs, stderr, stdout};

/// Classes in the shared dataset, so also in each row.
const TOP: usize = 4;

/// The split's names in its order, as the loader knows them: `--limit-val n` of the shared dataset.
fn split_names(n: usize) -> Vec<String> {
    let found = data::open_dataset(dataset(), &LabelFiles::default(), false).unwrap();
    let val = Subset::spread(found.val.source, n);
    (0..val.len()).map(|i| val.name(i)).collect()
}

/// The fields of one CSV line (RFC 4180 quoting).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// The rows of a predictions file, after checking its header: the top 4 classes, since the dataset has
/// only 4 (5 with more).
fn rows(file: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header = fields(lines.next().unwrap());
    let mut expected = ["name", "label", "class"].join(",");
    for k in 1..=TOP {
        expected += &format!(",top{k},top{k}_class,top{k}_prob");
    }
    assert_eq!(header.join(","), expected);
    lines
        .map(|l| {
            let f = fields(l);
            assert_eq!(f.len(), header.len(), "{l}");
            f
        })
        .collect()
}

/// Acc@1 and Acc@5 as the evaluation prints them (` * Acc@1 x Acc@5 y`).
fn printed(o: &str) -> (String, String) {
    let line = o
        .lines()
        .find(|l| l.starts_with(" * Acc@1 "))
        .unwrap_or_else(|| panic!("no accuracy line:\n{o}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[2].to_owned(), w[4].to_owned())
}

/// Acc@1 and Acc@5 recomputed from the rows, to the printed 3 decimals.
fn recomputed(rows: &[Vec<String>]) -> (String, String) {
    let (mut hit1, mut hit5) = (0, 0);
    for r in rows {
        let tops: Vec<&str> = (0..TOP).map(|k| r[3 + 3 * k].as_str()).collect();
        hit1 += usize::from(tops[0] == r[1]);
        hit5 += usize::from(tops.contains(&r[1].as_str()));
        // Probabilities: best first, and a share of 1 among them.
        let probs: Vec<f32> = (0..TOP).map(|k| r[5 + 3 * k].parse().unwrap()).collect();
        assert!(probs.windows(2).all(|p| p[0] >= p[1]), "{r:?}");
        // Every class is in the top: the probabilities add up to 1.
        let sum: f32 = probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{r:?}");
    }
    let pct = |h: usize| format!("{:.3}", 100.0 * h as f64 / rows.len() as f64);
    (pct(hit1), pct(hit5))
}

fn evaluate(file: &Path, world: usize) -> String {
    let checkpoint = runs().first_epoch.join("checkpoint.safetensors");
    let mut extra = vec![
        "--evaluate".to_owned(),
        "--resume".into(),
        checkpoint.display().to_string(),
        "--limit-val".into(),
        "7".into(),
        "--dump-predictions".into(),
        file.display().to_string(),
    ];
    if world > 1 {
        extra.extend(ranks(world));
    }
    stdout(&run(RESNET, &extra))
}

#[test]
fn predictions_hold_every_image_once_and_give_the_printed_accuracy() {
    let names = split_names(7);
    assert_eq!(names.len(), 7);
    let dir = tempfile::tempdir().unwrap();
    let mut first: Option<Vec<Vec<String>>> = None;
    for world in [1, 2, 3] {
        let file = dir.path().join(format!("p{world}.csv"));
        let o = evaluate(&file, world);
        let rows = rows(&file);
        assert!(
            o.contains(&format!("=> wrote 7 predictions to {}", file.display())),
            "{o}"
        );
        // Each image once, in the split's order; no part files or temporaries left.
        let got: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(got, names, "{world} rank(s)");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let expected: Vec<String> = (1..=world).map(|w| format!("p{w}.csv")).collect();
        assert_eq!(left, expected);
        assert_eq!(recomputed(&rows), printed(&o), "{world} rank(s):\n{o}");
        // The same labels and predictions whatever the number of ranks.
        match &first {
            None => first = Some(rows),
            Some(one) => {
                for (a, b) in one.iter().zip(&rows) {
                    assert_eq!(a[..5], b[..5], "{world} ranks");
                    let (pa, pb): (f32, f32) = (a[5].parse().unwrap(), b[5].parse().unwrap());
                    assert!((pa - pb).abs() < 1e-4, "{a:?} vs {b:?}");
                }
            }
        }
    }
}

#[test]
fn predictions_only_with_evaluate_and_to_a_writable_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.csv");
    let out = imgtrain()
        .arg(dataset())
        .args(["--epochs", "1", "--dump-predictions"])
        .arg(&file)
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("--dump-predictions: only with -e/--evaluate"),
        "{e}"
    );
    // A folder that does not exist, and a "folder" that is a file: refused before the evaluation, on
    // one rank and on two.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"").unwrap();
    for bad in [dir.path().join("missing/p.csv"), plain.join("p.csv")] {
        for world in [1, 2] {
            let mut cmd = imgtrain();
            cmd.arg(dataset())
                .args(RESNET)
                .args(["-e", "--limit-val", "7", "--dump-predictions"])
                .arg(&bad);
            if world > 1 {
                cmd.args(ranks(world)).env("OMP_NUM_THREADS", "1");
            }
            let out = cmd.output().unwrap();
            let (o, e) = (stdout(&out), stderr(&out));
            assert!(!out.status.success(), "{o}\n{e}");
            assert!(
                e.contains(&format!("--dump-predictions {}: ", bad.display())),
                "{e}"
            );
            assert!(!o.contains("Test: ["), "evaluated:\n{o}");
            assert!(!bad.exists());
        }
    }
}
