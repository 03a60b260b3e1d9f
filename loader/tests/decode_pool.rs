//! `DecodePool`: every sample decoded once, the same pixels as a lone `Decoder`, bad samples named and
//! counted without stopping the others, bad settings refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use imgloader::{DecodeOptions, DecodePool, Decoder, Error, OpenOptions, Source, open};

fn dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = imgfixtures::SynthConfig {
            classes: 3,
            train_per_class: 5,
            val_per_class: 1,
            min_side: 48,
            max_side: 120,
            seed: 11,
            ..Default::default()
        };
        imgfixtures::write_dataset(&cfg, dir.path()).unwrap();
        dir
    })
    .path()
}

/// (width, height, FNV-1a of the pixels) of every sample, as one lone decoder sees them.
fn reference(source: &dyn Source) -> Vec<(u32, u32, u64)> {
    let mut decoder = Decoder::new(DecodeOptions::default());
    let mut scratch = Vec::new();
    (0..source.len())
        .map(|i| {
            let img = decoder
                .decode(source.bytes(i, &mut scratch).unwrap())
                .unwrap();
            (img.width, img.height, fnv(img.pixels))
        })
        .collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn decodes_every_sample_once_with_the_same_pixels_on_1_and_3_threads() {
    let source = open(&dataset().join("train.tar"), &OpenOptions::default()).unwrap();
    let want = reference(source.as_ref());
    for threads in [1, 3] {
        let pool = DecodePool::new(source.clone(), threads, DecodeOptions::default()).unwrap();
        assert_eq!(pool.threads(), threads);
        let seen = Mutex::new(HashMap::new());
        // Every index twice, in reverse: the visitor must see each occurrence.
        let order: Vec<usize> = (0..source.len()).rev().chain(0..source.len()).collect();
        let summary = pool
            .decode(&order, |i, outcome| {
                let img = outcome.unwrap();
                let got = (img.width, img.height, fnv(img.pixels));
                let mut seen = seen.lock().unwrap();
                let entry = seen.entry(i).or_insert((got, 0));
                assert_eq!(entry.0, got, "sample {i} decoded two ways");
                entry.1 += 1;
            })
            .unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), source.len());
        for (i, w) in want.iter().enumerate() {
            assert_eq!(seen[&i], (*w, 2), "sample {i} on {threads} threads");
        }
        assert_eq!(summary.images, 2 * source.len());
        assert_eq!(summary.bad, 0);
        let pixels: u64 = want.iter().map(|w| u64::from(w.0) * u64::from(w.1)).sum();
        assert_eq!(summary.pixels, 2 * pixels);
        let mut scratch = Vec::new();
        let bytes: usize = (0..source.len())
            .map(|i| source.bytes(i, &mut scratch).unwrap().len())
            .sum();
        assert_eq!(summary.encoded_bytes, 2 * bytes as u64);
    }
}

#[test]
fn bad_samples_are_named_and_counted_and_the_rest_decode() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("cls");
    std::fs::create_dir_all(&class).unwrap();
    let odd = imgfixtures::odd::odd_dir();
    for (name, fixture) in [
        ("a_good.jpg", "rgb.jpg"),
        ("b_truncated.JPEG", "truncated.jpg"),
        ("c_empty.JPEG", "empty.JPEG"),
        ("d_text.JPEG", "not_an_image.JPEG"),
        ("e_good.jpg", "gray.jpg"),
    ] {
        std::fs::copy(odd.join(fixture), class.join(name)).unwrap();
    }
    let source = open(dir.path(), &OpenOptions::default()).unwrap();
    let pool = DecodePool::new(source.clone(), 2, DecodeOptions::default()).unwrap();
    let errors = Mutex::new(Vec::new());
    let all: Vec<usize> = (0..source.len()).collect();
    let summary = pool
        .decode(&all, |i, outcome| {
            if let Err(e) = outcome {
                assert!(matches!(e, Error::Decode { .. }), "{e:?}");
                errors.lock().unwrap().push((i, e.to_string()));
            }
        })
        .unwrap();
    let mut errors = errors.into_inner().unwrap();
    errors.sort();
    assert_eq!((summary.images, summary.bad), (2, 3));
    let names: Vec<&str> = errors.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(names[0].ends_with("b_truncated.JPEG"), "{names:?}");
    assert!(names[1].ends_with("c_empty.JPEG"), "{names:?}");
    assert!(names[2].ends_with("d_text.JPEG"), "{names:?}");
}

#[test]
fn out_of_range_indices_and_zero_threads_are_refused() {
    let source: Arc<dyn Source> = open(&dataset().join("train"), &OpenOptions::default()).unwrap();
    let pool = DecodePool::new(source.clone(), 1, DecodeOptions::default()).unwrap();
    let called = Mutex::new(0);
    let err = pool
        .decode(&[0, source.len()], |_, _| *called.lock().unwrap() += 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                what: "sample index",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&source.len().to_string()), "{err}");
    assert_eq!(
        *called.lock().unwrap(),
        0,
        "nothing decoded before the check"
    );
    let err = DecodePool::new(source, 0, DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                what: "threads",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn the_pixel_cap_applies() {
    let source = open(&dataset().join("train"), &OpenOptions::default()).unwrap();
    let pool = DecodePool::new(
        source.clone(),
        2,
        DecodeOptions {
            max_pixels: 16,
            ..DecodeOptions::default()
        },
    )
    .unwrap();
    let all: Vec<usize> = (0..source.len()).collect();
    let summary = pool
        .decode(&all, |_, outcome| assert!(outcome.is_err()))
        .unwrap();
    assert_eq!((summary.images, summary.bad), (0, source.len()));
}

#[test]
fn a_decoder_missing_from_the_build_is_refused_up_front() {
    use imgloader::decode::JpegBackend;
    let source = open(&dataset().join("train"), &OpenOptions::default()).unwrap();
    for jpeg in [JpegBackend::Zune, JpegBackend::Turbo] {
        let pool = DecodePool::new(
            source.clone(),
            1,
            DecodeOptions {
                jpeg,
                ..DecodeOptions::default()
            },
        );
        if jpeg.is_available() {
            assert!(pool.is_ok());
        } else {
            let Err(err) = pool else {
                panic!("{jpeg} is not built, yet the pool was");
            };
            let err = err.to_string();
            assert!(
                err.contains("JPEG decoder") && err.contains("`turbojpeg` feature"),
                "{err}"
            );
        }
    }
}
