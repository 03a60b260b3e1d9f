//! End to end across crates: the fixtures generator feeds the loader, the way users' data will.

use std::collections::BTreeMap;
use std::path::Path;

use imgfixtures::odd::{self, OddKind};
use imgloader::{BadSamples, Decoder, Loader, OpenOptions, Transform, ValAugment};

/// Every committed odd file through the decoder: the valid ones decode at their declared size (the PNG
/// under a `.JPEG` name included, as ImageNet needs), the broken ones fail with an error saying why.
#[test]
fn odd_fixtures_decode_or_fail_as_declared() {
    let mut decoder = Decoder::default();
    for fixture in odd::all() {
        let bytes = std::fs::read(fixture.path()).unwrap();
        let result = decoder.decode(&bytes).map(|img| (img.width, img.height));
        match fixture.kind {
            OddKind::Jpeg(info) => assert_eq!(
                result.unwrap(),
                (info.width, info.height),
                "{}",
                fixture.name
            ),
            OddKind::Png { width, height } => {
                assert_eq!(result.unwrap(), (width, height), "{}", fixture.name)
            }
            OddKind::Broken(_) => {
                let err = result.expect_err(fixture.name);
                assert!(!err.to_string().is_empty());
            }
            _ => panic!(
                "a new kind of odd fixture ({}) needs a case here",
                fixture.name
            ),
        }
    }
}

/// A class-folder dataset made of the odd files: the loader delivers every good one, replaces each broken
/// one and names it, and the same run twice gives the same batches.
#[test]
fn odd_files_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let mut broken = Vec::new();
    for (i, fixture) in odd::all().iter().enumerate() {
        let class = dir.path().join(format!("class{}", i % 3));
        std::fs::create_dir_all(&class).unwrap();
        // Every member gets an image extension, as it would in ImageNet, whatever it holds.
        let name = format!("{}.JPEG", fixture.name.replace('.', "_"));
        std::fs::copy(fixture.path(), class.join(&name)).unwrap();
        if matches!(fixture.kind, OddKind::Broken(_)) {
            broken.push(name);
        }
    }
    let run = || {
        let source = imgloader::open(dir.path(), &OpenOptions::default()).unwrap();
        let loader = Loader::builder(source)
            .batch_size(4)
            .threads(2)
            .transform(Transform::Val(ValAugment {
                resize: 36,
                crop: 32,
            }))
            .build()
            .unwrap();
        let mut bad = Vec::new();
        let mut pixels = Vec::new();
        for batch in loader.epoch(0) {
            let batch = batch.unwrap();
            bad.extend(batch.bad.iter().map(|b| b.error.clone()));
            pixels.extend_from_slice(batch.pixels());
        }
        (bad, pixels)
    };
    let (bad, pixels) = run();
    assert_eq!(bad.len(), broken.len(), "{bad:?}");
    for name in &broken {
        assert!(
            bad.iter().any(|b| b.contains(name.as_str())),
            "{name} not reported in {bad:?}"
        );
    }
    assert_eq!(pixels.len(), odd::all().len() * 32 * 32 * 3);
    assert_eq!(run().1, pixels);

    let source = imgloader::open(dir.path(), &OpenOptions::default()).unwrap();
    let strict = Loader::builder(source)
        .bad_samples(BadSamples::Fail)
        .threads(1)
        .batch_size(64)
        .build()
        .unwrap();
    let err = strict
        .epoch(0)
        .find_map(Result::err)
        .expect("the fail policy stops at a broken file");
    let msg = imgloader::error::chain(&err);
    assert!(broken.iter().any(|n| msg.contains(n.as_str())), "{msg}");
}

/// The generated data is learnable through the loader: the mean colour of the val crops the loader
/// produces classifies val samples by nearest train centroid far above chance.
#[test]
fn the_demo_data_is_learnable_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = imgfixtures::SynthConfig {
        classes: 6,
        train_per_class: 12,
        val_per_class: 6,
        min_side: 96,
        max_side: 160,
        seed: 11,
        ..Default::default()
    };
    imgfixtures::write_dataset(&cfg, dir.path()).unwrap();
    let features = |path: &Path| {
        let source = imgloader::open(path, &OpenOptions::default()).unwrap();
        let loader = Loader::builder(source)
            .batch_size(8)
            .threads(2)
            .transform(Transform::Val(ValAugment {
                resize: 64,
                crop: 56,
            }))
            .build()
            .unwrap();
        let mut out = Vec::new();
        for batch in loader.epoch(0) {
            let batch = batch.unwrap();
            for (img, &label) in batch.pixels().chunks(56 * 56 * 3).zip(&batch.labels) {
                out.push((colour_signature(img), label));
            }
        }
        out
    };
    let train = features(&dir.path().join("train.tar"));
    let val = features(&dir.path().join("val"));
    assert_eq!((train.len(), val.len()), (72, 36));

    let mut sums: BTreeMap<u32, ([f64; 3], f64)> = BTreeMap::new();
    for (f, label) in &train {
        let e = sums.entry(*label).or_default();
        (0..3).for_each(|c| e.0[c] += f[c]);
        e.1 += 1.0;
    }
    let centroids: Vec<(u32, [f64; 3])> = sums
        .into_iter()
        .map(|(l, (s, n))| (l, [s[0] / n, s[1] / n, s[2] / n]))
        .collect();
    let correct = val
        .iter()
        .filter(|(f, label)| {
            let dist = |c: &[f64; 3]| (0..3).map(|i| (f[i] - c[i]).powi(2)).sum::<f64>();
            let best = centroids
                .iter()
                .min_by(|a, b| dist(&a.1).total_cmp(&dist(&b.1)))
                .unwrap();
            best.0 == *label
        })
        .count();
    let accuracy = correct as f64 / val.len() as f64;
    // Chance is 1/6 (0.17).
    assert!(accuracy >= 0.4, "nearest-centroid accuracy {accuracy:.2}");
}

/// Mean colour of the saturated pixels (the class object), which the random background rarely has.
fn colour_signature(rgb: &[u8]) -> [f64; 3] {
    let mut sum = [0.0; 3];
    let mut n = 0.0;
    for p in rgb.chunks(3) {
        let (max, min) = (p.iter().max().unwrap(), p.iter().min().unwrap());
        if max - min > 60 {
            (0..3).for_each(|c| sum[c] += p[c] as f64);
            n += 1.0;
        }
    }
    if n == 0.0 {
        [0.0; 3]
    } else {
        [sum[0] / n, sum[1] / n, sum[2] / n]
    }
}
