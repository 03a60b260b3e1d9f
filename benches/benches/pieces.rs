//! Criterion micro-benchmarks of the loader's pieces, one thread, on realistic ~500×375 q90 JPEGs held in
//! memory: decode, crop + resize (train and val transforms), and the whole per-image path through a
//! `Loader` (decode + augment + batch assembly), so that what batching adds is the difference.
//!
//! `cargo bench -p imgbench` (add `-- decode` etc. to pick a group).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imgbench::{MemorySource, realistic_jpegs};
use imgloader::augment::normalize_to_nchw_f32;
use imgloader::{
    Augmenter, DecodeOptions, Decoder, IMAGENET_MEAN, IMAGENET_STD, ImageView, Loader,
    TrainAugment, Transform, ValAugment, sample_rng,
};

/// Enough images to mix both orientations and content, few enough to generate in a second.
const IMAGES: usize = 16;

fn decoded(jpegs: &[Vec<u8>]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut decoder = Decoder::new(DecodeOptions::default());
    jpegs
        .iter()
        .map(|j| {
            let img = decoder.decode(j).expect("the generator's JPEGs decode");
            (img.width, img.height, img.pixels.to_vec())
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let jpegs = realistic_jpegs(IMAGES);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(jpegs.len() as u64));
    let mut decoder = Decoder::new(DecodeOptions::default());
    group.bench_function("jpeg_500x375_q90_to_rgb", |b| {
        b.iter(|| {
            for j in &jpegs {
                let img = decoder.decode(black_box(j)).expect("decodes");
                black_box(img.pixels[0]);
            }
        })
    });
    group.bench_function("probe_header_only", |b| {
        b.iter(|| {
            for j in &jpegs {
                black_box(imgloader::decode::probe(black_box(j)).expect("probes"));
            }
        })
    });
    group.finish();
}

fn crop_resize(c: &mut Criterion) {
    let images = decoded(&realistic_jpegs(IMAGES));
    let mut group = c.benchmark_group("crop_resize");
    group.throughput(Throughput::Elements(images.len() as u64));
    let mut augmenter =
        Augmenter::new(TrainAugment::default(), ValAugment::default()).expect("default settings");
    let mut out = vec![0u8; augmenter.train_output_len()];
    let mut epoch = 0u64;
    group.bench_function("train_random_resized_crop_224_flip", |b| {
        b.iter(|| {
            // A new epoch each iteration: new crops, as in training.
            epoch += 1;
            for (i, (w, h, px)) in images.iter().enumerate() {
                let view = ImageView {
                    width: *w,
                    height: *h,
                    pixels: px,
                };
                let mut rng = sample_rng(0, epoch, i as u64);
                augmenter.train(view, &mut rng, &mut out).expect("fits");
            }
            black_box(out[0]);
        })
    });
    let mut out = vec![0u8; augmenter.val_output_len()];
    group.bench_function("val_resize_256_center_crop_224", |b| {
        b.iter(|| {
            for (w, h, px) in &images {
                let view = ImageView {
                    width: *w,
                    height: *h,
                    pixels: px,
                };
                augmenter.val(view, &mut out).expect("fits");
            }
            black_box(out[0]);
        })
    });
    let hwc = vec![128u8; 224 * 224 * 3];
    let mut f32_out = vec![0f32; 224 * 224 * 3];
    group.throughput(Throughput::Elements(1));
    group.bench_function("normalize_224_u8_hwc_to_f32_chw", |b| {
        b.iter(|| {
            normalize_to_nchw_f32(
                black_box(&hwc),
                224,
                224,
                IMAGENET_MEAN,
                IMAGENET_STD,
                &mut f32_out,
            )
            .expect("sizes match");
            black_box(f32_out[0]);
        })
    });
    group.finish();
}

fn batch(c: &mut Criterion) {
    // 64 samples: one batch of 64, cycling through the generated images.
    let jpegs = realistic_jpegs(IMAGES);
    let samples: Vec<Vec<u8>> = (0..64).map(|i| jpegs[i % jpegs.len()].clone()).collect();
    let source = Arc::new(MemorySource::new(samples));
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(64));
    group.sample_size(20);
    for (name, transform) in [
        (
            "loader_train_1_thread_batch_64",
            Transform::Train(TrainAugment::default()),
        ),
        (
            "loader_val_1_thread_batch_64",
            Transform::Val(ValAugment::default()),
        ),
    ] {
        let loader = Loader::builder(source.clone())
            .batch_size(64)
            .threads(1)
            .transform(transform)
            .build()
            .expect("valid settings");
        let mut epoch = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                epoch += 1;
                for batch in loader.epoch(epoch) {
                    black_box(batch.expect("good samples").pixels()[0]);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, crop_resize, batch);
criterion_main!(benches);
