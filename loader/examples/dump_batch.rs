//! Writes a loader's batches to files, the reference the Python package's tests compare against
//! (python/tests): `cargo run -p imgloader --example dump_batch -- PATH OUT [key=value ...]`.
//!
//! Keys: batch_size, threads, seed, epoch, rank, world, transform (train|val), crop, resize, jpeg
//! (zune|turbo), batches (how many to write; default all). OUT gets the u8 NHWC pixels of every batch one
//! after the other; OUT.json gets one `{"len", "labels", "indices"}` object per batch.

use imgloader::decode::JpegBackend;
use imgloader::{DecodeOptions, Loader, OpenOptions, TrainAugment, Transform, ValAugment};
use std::collections::HashMap;
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, out, rest @ ..] = args.as_slice() else {
        return Err("usage: dump_batch PATH OUT [key=value ...]".into());
    };
    let kv: HashMap<&str, &str> = rest
        .iter()
        .map(|a| a.split_once('=').ok_or(format!("not key=value: {a}")))
        .collect::<Result<_, _>>()?;
    let num = |k: &str, default: u64| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(kv.get(k).map_or(Ok(default), |v| v.parse())?)
    };
    let crop = num("crop", 224)? as u32;
    let transform = match kv.get("transform").copied().unwrap_or("train") {
        "train" => Transform::Train(TrainAugment {
            size: (crop, crop),
            ..TrainAugment::default()
        }),
        "val" => Transform::Val(ValAugment {
            resize: num("resize", 256)? as u32,
            crop,
        }),
        other => return Err(format!("transform={other}").into()),
    };
    let jpeg = match kv.get("jpeg").copied() {
        None => JpegBackend::default(),
        Some("zune") => JpegBackend::Zune,
        Some("turbo") => JpegBackend::Turbo,
        Some(other) => return Err(format!("jpeg={other}").into()),
    };

    let source = imgloader::open(path.as_ref(), &OpenOptions::default())?;
    let loader = Loader::builder(source)
        .batch_size(num("batch_size", 256)? as usize)
        .threads(num("threads", 2)? as usize)
        .seed(num("seed", 0)?)
        .distributed(num("rank", 0)? as usize, num("world", 1)? as usize)
        .transform(transform)
        .decode_options(DecodeOptions {
            jpeg,
            ..DecodeOptions::default()
        })
        .build()?;
    let limit = num("batches", u64::MAX)? as usize;
    let mut pixels = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut meta = Vec::new();
    for batch in loader.epoch(num("epoch", 0)?).take(limit) {
        let batch = batch.map_err(|e| imgloader::error::chain(&e))?;
        pixels.write_all(batch.pixels())?;
        meta.push(serde_json::json!({
            "len": batch.len,
            "labels": batch.labels,
            "indices": batch.indices,
        }));
    }
    pixels.flush()?;
    std::fs::write(
        format!("{out}.json"),
        serde_json::to_string(&serde_json::json!({ "batches": meta }))?,
    )?;
    Ok(())
}
