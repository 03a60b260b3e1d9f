//! Read a dataset with the loader alone (no libtorch): `cargo run --release -p imgloader --example load -- PATH`.
//!
//! PATH is a class-folder tree, a tar (train.tar, ILSVRC2012_img_train.tar) or a shard folder.

use std::time::Instant;

use imgloader::{Loader, OpenOptions, TrainAugment, Transform};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: load PATH")?;
    let source = imgloader::open(path.as_ref(), &OpenOptions::default())?;
    println!(
        "{path}: {} images, {} classes",
        source.len(),
        source.classes().len()
    );

    let loader = Loader::builder(source)
        .batch_size(64)
        .transform(Transform::Train(TrainAugment::default())) // RandomResizedCrop(224) + flip
        .seed(0)
        .build()?;
    let start = Instant::now();
    let mut images = 0;
    for batch in loader.epoch(0) {
        let batch = batch.map_err(|e| imgloader::error::chain(&e))?;
        // u8 NHWC pixels and class ids, ready for a device copy.
        let (pixels, labels) = (batch.pixels(), &batch.labels);
        assert_eq!(pixels.len(), labels.len() * 224 * 224 * 3);
        images += batch.len;
        for bad in &batch.bad {
            eprintln!("replaced a bad sample: {}", bad.error);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{images} images in {secs:.2}s ({:.0} img/s)",
        images as f64 / secs
    );
    Ok(())
}
