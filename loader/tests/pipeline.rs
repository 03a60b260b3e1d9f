//! The batching pipeline: determinism across thread counts and layouts, bad samples, cancellation,
//! worker panics, memory reuse, distributed shares.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use imgloader::decode::JpegBackend;
use imgloader::{
    Augmenter, BadSamples, DecodeOptions, Error, Loader, OpenOptions, Output, Source, TrainAugment,
    Transform, ValAugment, open, sample_rng,
};

use crate::support::{backends, decoder};

/// A small learnable dataset (folders and tars), generated once per test binary.
fn dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = imgfixtures::SynthConfig {
            classes: 4,
            train_per_class: 9,
            val_per_class: 3,
            min_side: 64,
            max_side: 160,
            seed: 7,
            ..Default::default()
        };
        imgfixtures::write_dataset(&cfg, dir.path()).unwrap();
        dir
    })
    .path()
}

fn small_train() -> Transform {
    Transform::Train(TrainAugment {
        size: (48, 40),
        ..Default::default()
    })
}

type Epoch = Vec<(Vec<u8>, Vec<u32>, Vec<usize>)>;

fn collect(source: Arc<dyn Source>, threads: usize, transform: Transform, epoch: u64) -> Epoch {
    let loader = Loader::builder(source)
        .batch_size(5)
        .threads(threads)
        .transform(transform)
        .seed(3)
        .build()
        .unwrap();
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            (b.pixels().to_vec(), b.labels.clone(), b.indices.clone())
        })
        .collect()
}

#[test]
fn same_batches_for_1_2_and_8_threads() {
    let source = open(&dataset().join("train"), &OpenOptions::default()).unwrap();
    let one = collect(source.clone(), 1, small_train(), 0);
    assert_eq!(one.len(), 36usize.div_ceil(5));
    assert_eq!(one.iter().map(|b| b.1.len()).sum::<usize>(), 36);
    for threads in [2, 8] {
        assert!(
            one == collect(source.clone(), threads, small_train(), 0),
            "{threads} threads differ from 1"
        );
    }
    // Another epoch reshuffles and re-draws the crops.
    assert!(one != collect(source, 2, small_train(), 1));
}

#[test]
fn folder_and_tar_give_the_same_batches() {
    for (split, transform) in [
        ("train", small_train()),
        (
            "val",
            Transform::Val(ValAugment {
                resize: 40,
                crop: 32,
            }),
        ),
    ] {
        let folder = open(&dataset().join(split), &OpenOptions::default()).unwrap();
        let tar = open(
            &dataset().join(format!("{split}.tar")),
            &OpenOptions::default(),
        )
        .unwrap();
        assert_eq!(folder.classes(), tar.classes());
        assert!(
            collect(folder, 2, transform.clone(), 4) == collect(tar, 2, transform, 4),
            "{split}"
        );
    }
}

#[test]
fn labels_follow_the_samples() {
    let source = open(&dataset().join("train.tar"), &OpenOptions::default()).unwrap();
    for (_, labels, indices) in collect(source.clone(), 2, small_train(), 0) {
        for (label, index) in labels.iter().zip(&indices) {
            assert_eq!(*label, source.label(*index));
            let class = &source.classes()[*label as usize];
            assert!(
                source.name(*index).contains(class.as_str()),
                "{} not in {class}",
                source.name(*index)
            );
        }
    }
}

#[test]
fn val_visits_every_sample_once_in_order_across_ranks() {
    let path = dataset().join("val.tar");
    let mut seen = Vec::new();
    for rank in 0..3 {
        let source = open(&path, &OpenOptions::default()).unwrap();
        let loader = Loader::builder(source)
            .batch_size(4)
            .threads(2)
            .transform(Transform::Val(ValAugment {
                resize: 40,
                crop: 32,
            }))
            .distributed(rank, 3)
            .build()
            .unwrap();
        for b in loader.epoch(0) {
            seen.extend(b.unwrap().indices.clone());
        }
    }
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
}

#[test]
fn train_ranks_split_one_permutation() {
    let path = dataset().join("train.tar");
    let mut all = Vec::new();
    let mut counts = Vec::new();
    for rank in 0..4 {
        let source = open(&path, &OpenOptions::default()).unwrap();
        let loader = Loader::builder(source)
            .batch_size(4)
            .threads(1)
            .transform(small_train())
            .distributed(rank, 4)
            .build()
            .unwrap();
        let mine: Vec<usize> = loader
            .epoch(2)
            .flat_map(|b| b.unwrap().indices.clone())
            .collect();
        counts.push(mine.len());
        all.extend(mine);
    }
    assert_eq!(counts, vec![9; 4]);
    all.sort_unstable();
    assert_eq!(
        all,
        (0..36).collect::<Vec<_>>(),
        "36 samples over 4 ranks: disjoint and complete"
    );
}

#[test]
fn f32_output_is_the_normalised_u8_output() {
    let source = open(&dataset().join("val"), &OpenOptions::default()).unwrap();
    let val = Transform::Val(ValAugment {
        resize: 40,
        crop: 32,
    });
    let build = |output| {
        Loader::builder(source.clone())
            .batch_size(6)
            .threads(2)
            .transform(val.clone())
            .output(output)
            .build()
            .unwrap()
    };
    let (mean, std) = (imgloader::IMAGENET_MEAN, imgloader::IMAGENET_STD);
    let u8s = build(Output::U8Nhwc);
    let f32s = build(Output::F32Nchw { mean, std });
    for (a, b) in u8s.epoch(0).zip(f32s.epoch(0)) {
        let (a, b) = (a.unwrap(), b.unwrap());
        let (hwc, chw) = (a.pixels(), b.pixels_f32().unwrap());
        assert_eq!(chw.len(), hwc.len());
        let plane = 32 * 32;
        for n in 0..a.len {
            for p in 0..plane {
                for c in 0..3 {
                    let want = (hwc[(n * plane + p) * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
                    let got = chw[n * plane * 3 + c * plane + p];
                    assert!(
                        (want - got).abs() < 1e-5,
                        "sample {n} pixel {p} channel {c}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// A copy of the train folders with some files replaced by broken ones.
fn with_bad_files(bad: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&dataset().join("train"), dir.path());
    for (class_file, fixture) in bad {
        std::fs::copy(
            imgfixtures::odd::odd_dir().join(fixture),
            dir.path().join(class_file),
        )
        .unwrap();
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target: PathBuf = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn bad_samples_are_substituted_deterministically_and_named() {
    let dir = with_bad_files(&[
        ("n00000001/zz_broken.JPEG", "truncated.jpg"),
        ("n00000002/zz_empty.JPEG", "empty.JPEG"),
    ]);
    let run = |threads| {
        let source = open(dir.path(), &OpenOptions::default()).unwrap();
        let loader = Loader::builder(source)
            .batch_size(8)
            .threads(threads)
            .transform(small_train())
            .seed(1)
            .build()
            .unwrap();
        let mut bad = Vec::new();
        let mut batches = Vec::new();
        for b in loader.epoch(0) {
            let b = b.unwrap();
            bad.extend(b.bad.iter().map(|s| s.error.clone()));
            batches.push((b.pixels().to_vec(), b.labels.clone(), b.indices.clone()));
        }
        // Substitutes are random: one may be a bad file too, and counts.
        assert!(loader.bad_samples() >= 2, "{bad:?}");
        (bad, batches, loader.bad_samples())
    };
    let (mut bad, batches, count) = run(1);
    bad.sort();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("zz_broken.JPEG") && bad[0].contains("truncated"),
        "{}",
        bad[0]
    );
    assert!(
        bad[1].contains("zz_empty.JPEG") && bad[1].contains("empty"),
        "{}",
        bad[1]
    );
    // Every rank still gets full batches: 38 samples in 5 batches.
    assert_eq!(batches.iter().map(|b| b.1.len()).sum::<usize>(), 38);
    let (_, batches3, count3) = run(3);
    assert!(
        batches == batches3,
        "substitution must not depend on threads"
    );
    assert_eq!(count, count3);
}

/// Pixels and label of each sample, by name.
type ByName = std::collections::BTreeMap<String, (Vec<u8>, u32)>;

/// Per sample name, the u8 pixels and label of a val-transform epoch over `source` with `policy`, and the
/// bad samples reported.
fn val_by_name(source: Arc<dyn Source>, policy: BadSamples) -> (ByName, Vec<String>) {
    let loader = Loader::builder(source.clone())
        .batch_size(7)
        .threads(2)
        .transform(Transform::Val(ValAugment {
            resize: 40,
            crop: 32,
        }))
        .bad_samples(policy)
        .build()
        .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    let mut bad = Vec::new();
    for b in loader.epoch(0) {
        let b = b.unwrap();
        assert_eq!(b.labels.len(), b.len);
        assert_eq!(b.pixels().len(), b.len * 32 * 32 * 3);
        bad.extend(b.bad.iter().map(|s| source.name(s.index)));
        for (k, (&index, &label)) in b.indices.iter().zip(&b.labels).enumerate() {
            let px = b.pixels()[k * 32 * 32 * 3..(k + 1) * 32 * 32 * 3].to_vec();
            let old = seen.insert(source.name(index), (px, label));
            assert!(old.is_none(), "{} came twice", source.name(index));
        }
    }
    (seen, bad)
}

#[test]
fn omit_policy_leaves_bad_samples_out_and_counts_every_other_once() {
    let dir = with_bad_files(&[
        ("n00000001/zz_broken.JPEG", "truncated.jpg"),
        ("n00000002/zz_empty.JPEG", "empty.JPEG"),
        ("n00000002/zz_text.JPEG", "not_an_image.JPEG"),
    ]);
    let source = open(dir.path(), &OpenOptions::default()).unwrap();
    let clean = open(&dataset().join("train"), &OpenOptions::default()).unwrap();
    let policy = BadSamples::Omit { max_total: 10 };
    let (got, bad) = val_by_name(source.clone(), policy);
    let (want, none) = val_by_name(clean.clone(), policy);
    assert!(none.is_empty());
    assert_eq!(got.len(), source.len() - 3);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad.iter().all(|n| n.contains("zz_")), "{bad:?}");
    // Every good sample is there once, with its own pixels and label, packed in its batch: nothing moved
    // into a bad one's slot.
    let strip = |m: &ByName, root: &Path| {
        m.iter()
            .map(|(k, v)| (k.replace(&*root.to_string_lossy(), ""), v.clone()))
            .collect::<Vec<_>>()
    };
    assert!(strip(&got, dir.path()) == strip(&want, &dataset().join("train")));
    let loader = Loader::builder(source)
        .batch_size(7)
        .threads(2)
        .transform(small_train())
        .bad_samples(BadSamples::Omit { max_total: 2 })
        .build()
        .unwrap();
    let err = loader
        .epoch(0)
        .find_map(Result::err)
        .expect("the third left-out sample is over the cap");
    assert!(matches!(err, Error::TooManyBadSamples { .. }), "{err}");
}

#[test]
fn fail_policy_stops_at_the_first_bad_sample_and_names_it() {
    let dir = with_bad_files(&[("n00000003/zz_text.JPEG", "not_an_image.JPEG")]);
    let source = open(dir.path(), &OpenOptions::default()).unwrap();
    let loader = Loader::builder(source)
        .batch_size(40)
        .threads(2)
        .transform(small_train())
        .bad_samples(BadSamples::Fail)
        .build()
        .unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 1);
    let err = results.into_iter().next().unwrap().unwrap_err();
    let msg = imgloader::error::chain(&err);
    assert!(matches!(err, Error::Decode { .. }), "{msg}");
    assert!(
        msg.contains("n00000003/zz_text.JPEG") && msg.contains("not an image"),
        "{msg}"
    );
}

#[test]
fn too_many_bad_samples_fail_the_run() {
    let dir = with_bad_files(&[
        ("n00000000/zz_a.JPEG", "truncated.jpg"),
        ("n00000001/zz_b.JPEG", "truncated.jpg"),
        ("n00000002/zz_c.JPEG", "empty.JPEG"),
    ]);
    let source = open(dir.path(), &OpenOptions::default()).unwrap();
    let loader = Loader::builder(source)
        .batch_size(13)
        .threads(2)
        .transform(small_train())
        .bad_samples(BadSamples::Skip {
            max_total: 2,
            max_consecutive: 4,
        })
        .build()
        .unwrap();
    let err = loader
        .epoch(0)
        .find_map(Result::err)
        .expect("the third bad sample must fail the epoch");
    assert!(matches!(err, Error::TooManyBadSamples { .. }), "{err}");
    assert!(
        err.to_string().contains("zz_"),
        "the message names a culprit: {err}"
    );
}

/// A source whose samples panic or block, to exercise the pipeline's failure paths.
#[derive(Debug)]
struct Hostile {
    inner: Arc<dyn Source>,
    panic_at: Option<usize>,
    slow: Duration,
    calls: AtomicUsize,
}

impl Source for Hostile {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> u32 {
        self.inner.label(index)
    }
    fn bytes<'a>(&'a self, index: usize, scratch: &'a mut Vec<u8>) -> imgloader::Result<&'a [u8]> {
        if self.panic_at == Some(index) {
            panic!("hostile sample {index}");
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.slow);
        self.inner.bytes(index, scratch)
    }
    fn name(&self, index: usize) -> String {
        self.inner.name(index)
    }
}

#[test]
fn a_panicking_worker_is_an_error_not_a_hang() {
    let inner = open(&dataset().join("val"), &OpenOptions::default()).unwrap();
    let source = Arc::new(Hostile {
        inner,
        panic_at: Some(5),
        slow: Duration::ZERO,
        calls: AtomicUsize::new(0),
    });
    let loader = Loader::builder(source)
        .batch_size(4)
        .threads(2)
        .transform(Transform::Val(ValAugment {
            resize: 40,
            crop: 32,
        }))
        .build()
        .unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert!(results[0].is_ok());
    match &results[1] {
        Err(Error::WorkerPanic { batch: 1, message }) => {
            assert!(message.contains("hostile sample 5"), "{message}")
        }
        other => panic!("expected a worker panic in batch 1, got {other:?}"),
    }
    assert_eq!(results.len(), 2, "the epoch ends after the failure");
}

#[test]
fn dropping_an_epoch_stops_promptly() {
    let inner = open(&dataset().join("train"), &OpenOptions::default()).unwrap();
    let source = Arc::new(Hostile {
        inner,
        panic_at: None,
        slow: Duration::from_millis(20),
        calls: AtomicUsize::new(0),
    });
    let loader = Loader::builder(source.clone())
        .batch_size(8)
        .threads(2)
        .prefetch(4)
        .transform(small_train())
        .build()
        .unwrap();
    {
        let mut epoch = loader.epoch(0);
        epoch.next().unwrap().unwrap();
        // 4 more batches (32 samples) are queued now; dropping the epoch must abandon those not started.
    }
    let at_drop = source.calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let settled = source.calls.load(Ordering::SeqCst);
    assert!(
        settled <= at_drop + 2,
        "{at_drop} samples read at the drop, {settled} after: work went on"
    );
    assert!(settled < 36, "the whole epoch was read ({settled} samples)");
    // A new epoch afterwards works and reuses the buffers.
    let first: Vec<_> = loader.epoch(1).take(1).map(Result::unwrap).collect();
    assert_eq!(first.len(), 1);
}

#[test]
fn buffers_are_reused_across_epochs_even_when_batches_are_kept() {
    let source = open(&dataset().join("val"), &OpenOptions::default()).unwrap();
    let loader = Loader::builder(source)
        .batch_size(2)
        .threads(2)
        .prefetch(2)
        .transform(Transform::Val(ValAugment {
            resize: 40,
            crop: 32,
        }))
        .build()
        .unwrap();
    for epoch in 0..3 {
        for b in loader.epoch(epoch) {
            b.unwrap();
        }
    }
    let after_streaming = loader.buffers_allocated();
    assert!(
        after_streaming <= 3,
        "{after_streaming} buffers for a prefetch of 2"
    );
    // Holding every batch of an epoch must not deadlock; it needs more buffers, which then come back.
    let kept: Vec<_> = loader.epoch(3).map(Result::unwrap).collect();
    assert_eq!(kept.len(), 6);
    drop(kept);
    let allocated = loader.buffers_allocated();
    for b in loader.epoch(4) {
        b.unwrap();
    }
    assert_eq!(
        loader.buffers_allocated(),
        allocated,
        "no new buffers once enough exist"
    );
}

/// The loader decides each crop from the header and decodes only what it needs (libjpeg-turbo); the
/// batches must equal the augmenter run on whole decoded images, for train and val, on every backend.
#[test]
fn partial_decodes_give_the_whole_image_results() {
    let source = open(&dataset().join("train"), &OpenOptions::default()).unwrap();
    let train = TrainAugment {
        size: (48, 40),
        ..Default::default()
    };
    let val = ValAugment {
        resize: 56,
        crop: 48,
    };
    for backend in backends() {
        for transform in [Transform::Train(train), Transform::Val(val)] {
            let loader = Loader::builder(source.clone())
                .batch_size(5)
                .threads(2)
                .transform(transform.clone())
                .decode_options(DecodeOptions {
                    jpeg: backend,
                    ..DecodeOptions::default()
                })
                .seed(3)
                .build()
                .unwrap();
            let mut decoder = decoder(backend);
            let mut aug = Augmenter::new(train, val).unwrap();
            let mut bytes = Vec::new();
            for batch in loader.epoch(2) {
                let batch = batch.unwrap();
                let slot = batch.pixels().len() / batch.len;
                let mut want = vec![0u8; slot];
                for (i, &index) in batch.indices.iter().enumerate() {
                    let img = decoder
                        .decode(source.bytes(index, &mut bytes).unwrap())
                        .unwrap();
                    match &transform {
                        Transform::Train(_) => {
                            let mut rng = sample_rng(3, 2, index as u64);
                            aug.train(img, &mut rng, &mut want).unwrap();
                        }
                        Transform::Val(_) => {
                            aug.val(img, &mut want).unwrap();
                        }
                    }
                    assert!(
                        batch.pixels()[i * slot..][..slot] == want[..],
                        "{backend} {transform:?}: sample {index} differs"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_settings_are_refused_by_name() {
    let source = open(&dataset().join("val"), &OpenOptions::default()).unwrap();
    let err = |b: &mut imgloader::LoaderBuilder| b.build().unwrap_err().to_string();
    assert!(err(Loader::builder(source.clone()).batch_size(0)).contains("batch size"));
    assert!(err(Loader::builder(source.clone()).threads(0)).contains("threads"));
    assert!(err(Loader::builder(source.clone()).distributed(2, 2)).contains("rank"));
    let zero = Transform::Train(TrainAugment {
        size: (0, 224),
        ..Default::default()
    });
    assert!(!err(Loader::builder(source.clone()).transform(zero)).is_empty());
    if !JpegBackend::Turbo.is_available() {
        let turbo = DecodeOptions {
            jpeg: JpegBackend::Turbo,
            ..DecodeOptions::default()
        };
        assert!(err(Loader::builder(source).decode_options(turbo)).contains("turbojpeg"));
    }
}

/// Issue 12: a damaged JPEG must never put another image's pixels in its slot. Every slot of every batch
/// holds exactly what a fresh decoder makes of the sample the batch names for it (the substitute, when the
/// slot's own sample was refused), whatever the worker decoded before.
#[test]
fn damaged_samples_never_leave_stale_pixels() {
    let good = imgfixtures::odd::all()
        .into_iter()
        .find(|f| f.name == "rgb.jpg")
        .unwrap()
        .bytes;
    let dir = with_bad_files(&[]);
    for (i, v) in imgfixtures::corrupt::variants(&good, 9).iter().enumerate() {
        let class = format!("n0000000{}", i % 4);
        std::fs::write(
            dir.path().join(class).join(format!("zz_{}.JPEG", v.name)),
            &v.bytes,
        )
        .unwrap();
    }
    let source = open(dir.path(), &OpenOptions::default()).unwrap();
    let val = ValAugment {
        resize: 56,
        crop: 48,
    };
    for backend in backends() {
        let loader = Loader::builder(source.clone())
            .batch_size(7)
            .threads(2)
            .transform(Transform::Val(val))
            .decode_options(DecodeOptions {
                jpeg: backend,
                ..DecodeOptions::default()
            })
            .bad_samples(BadSamples::Skip {
                max_total: 10_000,
                max_consecutive: 64,
            })
            .seed(5)
            .build()
            .unwrap();
        let mut aug = Augmenter::new(TrainAugment::default(), val).unwrap();
        let mut bytes = Vec::new();
        let (mut slots, mut substituted) = (0, 0);
        for batch in loader.epoch(0) {
            let batch = batch.unwrap();
            substituted += batch.bad.len();
            let slot = batch.pixels().len() / batch.len;
            let mut want = vec![0u8; slot];
            for (i, &index) in batch.indices.iter().enumerate() {
                // A fresh decoder: nothing it could hand back but this sample's pixels.
                let mut fresh = decoder(backend);
                let img = fresh
                    .decode(source.bytes(index, &mut bytes).unwrap())
                    .unwrap();
                aug.val(img, &mut want).unwrap();
                assert!(
                    batch.pixels()[i * slot..][..slot] == want[..],
                    "{backend}: slot {i} does not hold sample {index} ({})",
                    source.name(index)
                );
                slots += 1;
            }
        }
        assert_eq!(slots, source.len());
        assert!(substituted > 0, "{backend}: no damaged file was refused");
        eprintln!(
            "{backend}: {slots} slots, {substituted} substituted, {} decoded with libjpeg warnings",
            loader.warned_samples()
        );
    }
}

/// Open file descriptors and resident memory of this process (Linux).
fn fds_and_rss_kib() -> (usize, u64) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

/// Many epochs over a small dataset (tar and folders, with bad files among them) keep open files and
/// memory flat. Measured in a process of its own (see below): other tests of this binary open files and
/// allocate concurrently.
#[test]
fn resources_stay_flat_over_many_epochs() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pipeline::resources_stay_flat_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IMG_RESOURCE_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("resources flat"),
        "the child ran no check:\n{text}"
    );
}

#[test]
#[ignore = "run by resources_stay_flat_over_many_epochs in a process of its own"]
fn resources_stay_flat_child() {
    if std::env::var_os("IMG_RESOURCE_CHILD").is_none() {
        return;
    }
    let dir = with_bad_files(&[
        ("n00000001/zz_broken.JPEG", "truncated.jpg"),
        ("n00000002/zz_empty.JPEG", "empty.JPEG"),
    ]);
    let sources = [
        open(dir.path(), &OpenOptions::default()).unwrap(),
        open(&dataset().join("train.tar"), &OpenOptions::default()).unwrap(),
    ];
    let loaders: Vec<_> = sources
        .iter()
        .map(|s| {
            Loader::builder(s.clone())
                .batch_size(8)
                .threads(2)
                .transform(small_train())
                .seed(1)
                .build()
                .unwrap()
        })
        .collect();
    let run = |epochs: std::ops::Range<u64>| {
        for e in epochs {
            for l in &loaders {
                for b in l.epoch(e) {
                    b.unwrap();
                }
            }
        }
    };
    run(0..5);
    let (fds, rss) = fds_and_rss_kib();
    run(5..60);
    let (fds_after, rss_after) = fds_and_rss_kib();
    eprintln!("fds {fds} -> {fds_after}, RSS {rss} -> {rss_after} KiB over 55 more epochs");
    assert_eq!(fds, fds_after, "open files grew");
    // Allocator noise is a few hundred KiB; a leak of one buffer or image per batch would be megabytes.
    assert!(
        rss_after < rss + 4096,
        "RSS grew from {rss} to {rss_after} KiB"
    );
    eprintln!("resources flat");
}
