//! Issue 16: `imgtrain --data` on ImageNet exactly as downloaded (official tars + `LOC_val_solution.csv`,
//! the devkit's ground truth + `map_clsloc.txt`, Kaggle's folders), on miniatures of each made of the
//! images of the folder dataset the other tests train on: the same training, the same labels.

use std::path::{Path, PathBuf};

use imgfixtures::Download;
use imgtrain::checkpoint::Checkpoint;
use imgtrain::data::{LabelFiles, open_dataset};

use crate::train::{
    SMALL, assert_same_state, dataset, dataset_config, fails_before_training, imgtrain, runs,
    stderr, stdout,
};

/// A miniature download in a fresh folder (kept alive by the returned guard).
fn download(layout: Download) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("imagenet");
    imgfixtures::write_download(&dataset_config(), layout, &data).unwrap();
    (dir, data)
}

/// (file name, synset) of every sample of a split, in index order.
fn labelled(src: &dyn imgloader::Source) -> Vec<(String, String)> {
    (0..src.len())
        .map(|i| {
            let name = src.name(i);
            let base = name.rsplit(['/', ' ']).next().unwrap().to_owned();
            (base, src.classes()[src.label(i) as usize].clone())
        })
        .collect()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn issue_16_imagenet_as_downloaded_trains_and_validates_like_the_folders() {
    let folders = open_dataset(dataset(), &LabelFiles::default(), true).unwrap();
    let want_train = labelled(&*folders.train.unwrap().source);
    let want_val = labelled(&*folders.val.source);
    let folder_ck = Checkpoint::read(&runs().first_epoch.join("checkpoint.safetensors")).unwrap();
    let cases = [
        (
            Download::Official,
            "=> train: ILSVRC2012_img_train.tar (tar of 4 class tars, 24 images, index built)",
            "=> val: ILSVRC2012_img_val.tar + LOC_val_solution.csv (flat tar, 4 classes, 12 images, index built)",
        ),
        (
            Download::Devkit,
            "=> train: ILSVRC2012_img_train.tar (tar of 4 class tars, 24 images, index built)",
            "=> val: ILSVRC2012_img_val.tar + ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt \
             + map_clsloc.txt (flat tar, 4 classes, 12 images, index built)",
        ),
        (
            Download::Kaggle,
            "=> train: ILSVRC/Data/CLS-LOC/train (4 class folders, 24 images)",
            "=> val: ILSVRC/Data/CLS-LOC/val + LOC_val_solution.csv + LOC_synset_mapping.txt (flat folder, 4 \
             classes, 12 images)",
        ),
    ];
    for (layout, train_line, val_line) in cases {
        let (_guard, data) = download(layout);
        // The same samples with the same labels, in the same order, as the folder layout.
        let found = open_dataset(&data, &LabelFiles::default(), true).unwrap();
        assert_eq!(
            labelled(&*found.train.unwrap().source),
            want_train,
            "{layout:?}"
        );
        assert_eq!(labelled(&*found.val.source), want_val, "{layout:?}");
        // One epoch trains the very same model and validates to the same Acc@1.
        let out_dir = data.parent().unwrap().join("out");
        let out = imgtrain()
            .arg("--data")
            .arg(&data)
            .args(SMALL)
            .args(["--epochs", "1", "--output_dir"])
            .arg(&out_dir)
            .output()
            .unwrap();
        let o = stdout(&out);
        assert!(out.status.success(), "{layout:?}:\n{o}\n{}", stderr(&out));
        // The first open (by open_dataset above) built the indexes; imgtrain loaded them.
        let train_line = train_line.replace("index built", "index loaded");
        let val_line = val_line.replace("index built)", "index loaded, labels from the index)");
        assert!(o.contains(&train_line), "{layout:?}:\n{o}");
        assert!(o.contains(&val_line), "{layout:?}:\n{o}");
        let ck = Checkpoint::read(&out_dir.join("checkpoint.safetensors")).unwrap();
        assert_same_state(&folder_ck, &ck);
        // Validation (in the checkpoint) gave the folder's Acc@1; so does evaluating another model, from
        // labels the index kept once the CSV is gone.
        if layout == Download::Official {
            // The issue's first try: train.tar/val.tar links to the official tars, the CSV beside them.
            let links = data.parent().unwrap().join("links");
            std::fs::create_dir(&links).unwrap();
            for (link, target) in [
                ("train.tar", "ILSVRC2012_img_train.tar"),
                ("val.tar", "ILSVRC2012_img_val.tar"),
                ("LOC_val_solution.csv", "LOC_val_solution.csv"),
            ] {
                std::os::unix::fs::symlink(data.join(target), links.join(link)).unwrap();
            }
            let found = open_dataset(&links, &LabelFiles::default(), true).unwrap();
            assert_eq!(labelled(&*found.val.source), want_val);
            let lines = found.log_lines();
            assert!(
                lines[1].starts_with("val: val.tar + LOC_val_solution.csv (flat tar"),
                "{lines:?}"
            );
            std::fs::remove_file(data.join("LOC_val_solution.csv")).unwrap();
            let out = imgtrain()
                .arg(&data)
                .args(SMALL)
                .arg("-e")
                .arg("--resume")
                .arg(runs().straight.join("checkpoint.safetensors"))
                .output()
                .unwrap();
            let o = stdout(&out);
            let straight =
                Checkpoint::read(&runs().straight.join("checkpoint.safetensors")).unwrap();
            let want = format!(
                " * Acc@1 {:.3} Acc@5 {:.3}",
                straight.meta.acc1, straight.meta.acc5
            );
            assert!(o.contains(&want), "{o}\n{}", stderr(&out));
            assert!(o.contains("labels from the index"), "{o}");
        }
    }
}

#[test]
fn issue_16_explicit_label_files() {
    let (_guard, data) = download(Download::Devkit);
    // Moved away from where they are looked for: named with --val-labels and --synsets.
    let elsewhere = data.parent().unwrap();
    let gt = elsewhere.join("gt.txt");
    let map = elsewhere.join("map.txt");
    std::fs::rename(
        data.join("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"),
        &gt,
    )
    .unwrap();
    std::fs::rename(data.join("map_clsloc.txt"), &map).unwrap();
    let e = fails_before_training(&[data.as_os_str(), os("-e")]);
    for name in [
        "LOC_val_solution.csv",
        "ILSVRC2012_validation_ground_truth.txt",
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
        "--val-labels",
    ] {
        assert!(e.contains(name), "{name} not in {e}");
    }
    let labels = LabelFiles {
        val_labels: Some(gt.clone()),
        synsets: Some(map.clone()),
    };
    let found = open_dataset(&data, &labels, true).unwrap();
    let folders = open_dataset(dataset(), &LabelFiles::default(), true).unwrap();
    assert_eq!(labelled(&*found.val.source), labelled(&*folders.val.source));
    // The ground truth without its synset list names what to pass.
    let e = fails_before_training(&[
        data.as_os_str(),
        os("-e"),
        os("--val-labels"),
        gt.as_os_str(),
    ]);
    assert!(e.contains("gt.txt") && e.contains("--synsets"), "{e}");
    // Found beside the split without its list: the names looked for.
    std::fs::copy(&gt, data.join("ILSVRC2012_validation_ground_truth.txt")).unwrap();
    let e = fails_before_training(&[data.as_os_str(), os("-e")]);
    assert!(
        e.contains("map_clsloc.txt") && e.contains("ILSVRC2012_devkit_t12/data/map_clsloc.txt"),
        "{e}"
    );
}

/// Rewrites the first line of `path` that contains `find`, through `edit`.
fn edit_line(path: &Path, find: &str, edit: impl Fn(&str) -> Option<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut done = false;
    let out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            if !done && l.contains(find) {
                done = true;
                edit(l)
            } else {
                Some(l.to_owned())
            }
        })
        .collect();
    assert!(done, "{find} not in {}", path.display());
    std::fs::write(path, out.join("\n") + "\n").unwrap();
}

#[test]
fn issue_16_missing_and_contradictory_labels_name_the_file_and_entry() {
    // A val image without a row.
    let (_guard, data) = download(Download::Official);
    let csv = data.join("LOC_val_solution.csv");
    edit_line(&csv, "ILSVRC2012_val_00000005,", |_| None);
    let e = fails_before_training(&[data.as_os_str(), os("-e")]);
    assert!(
        e.contains("LOC_val_solution.csv")
            && e.contains("1 image(s) have no label")
            && e.contains("ILSVRC2012_val_00000005.JPEG"),
        "{e}"
    );
    // A row for a synset the train split does not have: the class lists differ, naming it.
    edit_line(&csv, "ILSVRC2012_val_00000004,", |_| None);
    std::fs::write(
        &csv,
        std::fs::read_to_string(&csv).unwrap()
            + "ILSVRC2012_val_00000005,n00000001 1 2 3 4\nILSVRC2012_val_00000004,n09999999 1 2 3 4\n",
    )
    .unwrap();
    let e = fails_before_training(&[data.as_os_str()]);
    assert!(
        e.contains("1 synset(s) only in val") && e.contains("n09999999"),
        "{e}"
    );
    assert!(!e.contains("only in train"), "{e}");

    // Kaggle: with a synset list, a row naming a synset the list lacks is an unknown entry.
    let (_guard, data) = download(Download::Kaggle);
    let csv = data.join("LOC_val_solution.csv");
    edit_line(&csv, "ILSVRC2012_val_00000007,", |l| {
        Some(l.replace("n00000002", "n09999999"))
    });
    let e = fails_before_training(&[data.as_os_str(), os("-e")]);
    assert!(
        e.contains("LOC_val_solution.csv") && e.contains("ILSVRC2012_val_00000007: n09999999"),
        "{e}"
    );
    // A malformed row: the file and its line.
    edit_line(&csv, "ILSVRC2012_val_00000007,", |_| {
        Some("ILSVRC2012_val_00000007".into())
    });
    let e = fails_before_training(&[data.as_os_str(), os("-e")]);
    assert!(
        e.contains("LOC_val_solution.csv:") && e.contains("ImageId,PredictionString"),
        "{e}"
    );

    // Devkit: an id the synset list lacks.
    let (_guard, data) = download(Download::Devkit);
    let gt = data.join("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt");
    let text = std::fs::read_to_string(&gt).unwrap();
    std::fs::write(&gt, text.replacen("4\n", "9\n", 1)).unwrap();
    let e = fails_before_training(&[data.as_os_str(), os("-e")]);
    assert!(
        e.contains("ILSVRC2012_validation_ground_truth.txt") && e.contains("id 9"),
        "{e}"
    );
}
