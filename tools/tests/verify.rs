//! `imgtool verify`: odd and bad files by full name, counts, exit status.

use crate::util::{dataset, fails, ok, s};

#[test]
fn odd_and_bad_files_are_listed_by_name() {
    let t = tempfile::tempdir().unwrap();
    let class = t.path().join("odd").join("n01");
    std::fs::create_dir_all(&class).unwrap();
    for f in imgfixtures::odd::all() {
        std::fs::write(class.join(f.name), &f.bytes).unwrap();
    }
    let root = t.path().join("odd");
    let (stdout, err) = fails(&["verify", s(&root), "-j", "2"]);
    assert!(err.contains("3 bad file(s)"), "{err}");
    let path = |name: &str| class.join(name).display().to_string();
    for line in [
        format!("cmyk: {}", path("cmyk.jpg")),
        format!("ycck: {}", path("ycck.jpg")),
        format!("grayscale: {}", path("gray.jpg")),
        format!("png-named-jpeg: {}", path("png_as.JPEG")),
        format!("truncated: {}: ", path("truncated.jpg")),
        format!("empty: {}: ", path("empty.JPEG")),
        format!("not-an-image: {}: ", path("not_an_image.JPEG")),
    ] {
        assert!(stdout.contains(&line), "{line} missing in\n{stdout}");
    }
    for good in ["rgb.jpg", "444.jpg", "progressive.jpg", "restart.jpg"] {
        assert!(!stdout.contains(&path(good)), "{good} listed:\n{stdout}");
    }

    let out = crate::util::imgtool(&["verify", s(&root), "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["images"], imgfixtures::odd::all().len());
    let bad: Vec<&str> = v["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(bad, ["empty", "not-an-image", "truncated"]);
    assert_eq!(v["odd"].as_array().unwrap().len(), 4);
}

#[test]
fn good_data_passes_and_counts_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 2);
    let stdout = ok(&["verify", s(&d.join("train.tar"))]);
    assert!(stdout.contains("decoded 6 images in 3 classes"), "{stdout}");
    assert!(
        !stdout.contains("bad files") && !stdout.contains("odd files"),
        "{stdout}"
    );
    let json = ok(&["verify", s(&d.join("val")), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["images"].as_u64()),
        (Some(true), Some(6))
    );

    let (stdout, err) = fails(&["verify", s(&d.join("train.tar")), "--expect", "imagenet"]);
    assert!(stdout.contains("counts: MISMATCH"), "{stdout}");
    assert!(
        err.contains(
            "expected 1281167 or 50000 images in 1000 classes, found 6 images in 3 classes"
        ),
        "{err}"
    );
    let (_, err) = fails(&["verify", s(&t.path().join("missing"))]);
    assert!(err.contains("missing"), "{err}");
}
