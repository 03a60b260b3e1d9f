//! `imgtool plot`: charts from run folders, and clear errors for folders that hold none. (A chart of a
//! real `imgtrain` run is drawn in the trainer's tests, which can run training.)

use std::path::Path;

use crate::util::{fails, ok, s};

/// An `epoch` record as imgtrain writes it.
fn epoch_line(epoch: u64, top1: f64) -> String {
    format!(
        "{{\"kind\":\"epoch\",\"epoch\":{epoch},\"global_step\":{},\"lr\":0.1,\"train_loss\":{},\
         \"train_top1\":{top1},\"train_top5\":90.0,\"val_loss\":1.5,\"val_top1\":{top1},\"val_top5\":95.0,\
         \"val_images\":12,\"val_expected\":12,\"images_per_sec\":1000.0,\"data_wait\":0.1,\
         \"bad_samples\":0,\"seconds\":2.0}}\n",
        3 * (epoch + 1),
        2.0 - epoch as f64 * 0.1
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn plots_jsonl_and_timm_csv_runs_together() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("ours");
    let progress = "{\"kind\":\"train\",\"epoch\":0,\"step\":1,\"steps\":3,\"global_step\":1,\"lr\":0.1,\
                    \"loss\":2.0,\"top1\":10.0,\"top5\":50.0,\"images_per_sec\":900.0,\"data_wait\":0.1,\
                    \"bad_samples\":0}\n";
    // A last line cut short by a crash is skipped.
    let text = format!(
        "{progress}{}{}{{\"kind\":\"ep",
        epoch_line(0, 20.0),
        epoch_line(1, 40.0)
    );
    write(&a.join("metrics.jsonl"), &text);
    let b = dir.path().join("timm");
    write(
        &b.join("summary.csv"),
        "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n0,2.1,2.0,15.0,60.0,0.1\n1,1.9,1.8,30.0,70.0,0.1\n2,1.7,1.6,45.0,80.0,0.01\n",
    );
    for ext in ["png", "svg"] {
        let out = dir.path().join(format!("chart.{ext}"));
        let o = ok(&["plot", s(&a), s(&b), "--out", s(&out)]);
        assert!(o.contains("2 run(s), 5 epoch(s)"), "{o}");
        let bytes = std::fs::read(&out).unwrap();
        if ext == "png" {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            // IHDR: width and height, big-endian.
            assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1500);
            assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 900);
        } else {
            let svg = String::from_utf8(bytes).unwrap();
            for text in [
                "ours (2 epochs, top-1 40.00%)",
                "timm (3 epochs",
                "Loss",
                "Learning rate",
            ] {
                assert!(svg.contains(text), "{text} missing from the SVG");
            }
        }
    }
}

#[test]
fn broken_run_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chart.png");
    let plot = |run: &Path| fails(&["plot", s(run), "--out", s(&out)]).1;

    let missing = dir.path().join("nowhere");
    let e = plot(&missing);
    assert!(
        e.contains(&format!("run folder {}: no such folder", missing.display())),
        "{e}"
    );

    let empty_dir = dir.path().join("empty-dir");
    std::fs::create_dir(&empty_dir).unwrap();
    let e = plot(&empty_dir);
    assert!(e.contains("no metrics.jsonl or summary.csv"), "{e}");
    assert!(e.contains("empty-dir"), "{e}");

    let empty_file = dir.path().join("empty-file");
    write(&empty_file.join("metrics.jsonl"), "");
    let e = plot(&empty_file);
    assert!(
        e.contains("empty-file/metrics.jsonl: no epoch in it yet"),
        "{e}"
    );

    let malformed = dir.path().join("malformed");
    write(
        &malformed.join("metrics.jsonl"),
        &format!(
            "{}this is not json\n{}",
            epoch_line(0, 1.0),
            epoch_line(1, 2.0)
        ),
    );
    let e = plot(&malformed);
    assert!(
        e.contains("malformed/metrics.jsonl:2: not a JSON line"),
        "{e}"
    );

    let no_kind = dir.path().join("no-kind");
    write(&no_kind.join("metrics.jsonl"), "{\"epoch\":0}\n");
    assert!(plot(&no_kind).contains("no-kind/metrics.jsonl:1: not a metrics record"));

    let bad_field = dir.path().join("bad-field");
    write(
        &bad_field.join("metrics.jsonl"),
        "{\"kind\":\"epoch\",\"epoch\":\"zero\"}\n",
    );
    assert!(plot(&bad_field).contains("bad-field/metrics.jsonl:1: malformed epoch record"));

    let csv = dir.path().join("csv");
    write(&csv.join("summary.csv"), "epoch,eval_top1\n0,12.5\n1,abc\n");
    let e = plot(&csv);
    assert!(
        e.contains("csv/summary.csv:3: eval_top1 \"abc\" is not a number"),
        "{e}"
    );

    // One bad folder among good ones fails the whole chart, and writes nothing.
    assert!(!out.exists());
    let good = dir.path().join("good");
    write(&good.join("metrics.jsonl"), &epoch_line(0, 5.0));
    let e = fails(&["plot", s(&good), s(&malformed), "--out", s(&out)]).1;
    assert!(e.contains("malformed/metrics.jsonl:2"), "{e}");
    assert!(!out.exists());

    let e = fails(&["plot", s(&good), "--out", s(&dir.path().join("chart.jpg"))]).1;
    assert!(e.contains("name a .png or .svg file"), "{e}");
}
