//! The bodies of the loader's fuzz targets: every way bytes from outside get into the loader, with the
//! invariants that must hold whatever the bytes are. Each returns normally for any input; a panic, abort,
//! hang or broken invariant is a finding.
//!
//! Two drivers run them: cargo-fuzz (`fuzz_targets/`, coverage-guided, for minutes or hours; see
//! `loader/fuzz/README.md`) and the loader's own test binary (`loader/tests/fuzz.rs`, which includes this
//! file), which runs each body over the committed seed corpus and a bounded number of random mutations of
//! it, on stable Rust, in CI.
//!
//! Only the public API is used: what a fuzzer finds here, a user can reach.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use imgloader::augment::CropBox;
use imgloader::decode::{DecodeOptions, Decoder, JpegBackend, probe};
use imgloader::{IndexPolicy, OpenOptions, Source};

/// Small enough that no input makes a target allocate more than a few tens of MB.
const MAX_PIXELS: u64 = 1 << 22;

fn decoders() -> Vec<Decoder> {
    [JpegBackend::Zune, JpegBackend::Turbo]
        .into_iter()
        .filter(|b| b.is_available())
        .map(|jpeg| {
            Decoder::new(DecodeOptions {
                max_pixels: MAX_PIXELS,
                jpeg,
            })
        })
        .collect()
}

/// A crop box taken from the input's last bytes, so the fuzzer steers region decodes too.
fn box_from(data: &[u8]) -> impl Fn(u32, u32) -> CropBox + '_ {
    move |w, h| {
        let b = |i: usize| {
            u32::from(
                data.get(data.len().wrapping_sub(i + 1))
                    .copied()
                    .unwrap_or(0),
            )
        };
        let (left, top) = (b(0) * w / 256, b(1) * h / 256);
        CropBox {
            left,
            top,
            width: (b(2) * w / 256).max(1),
            height: (b(3) * h / 256).max(1),
        }
    }
}

/// JPEG/PNG bytes: probe, whole decode and region decode with every backend built. Decoded images have
/// exactly `width * height * 3` bytes, and a region covers the box asked for (clamped to the image).
pub fn decode(data: &[u8]) {
    let _ = probe(data);
    for mut d in decoders() {
        if let Ok(img) = d.decode(data) {
            assert_eq!(
                img.pixels.len(),
                img.width as usize * img.height as usize * 3
            );
            assert!(u64::from(img.width) * u64::from(img.height) <= MAX_PIXELS);
        }
        let pick = box_from(data);
        let mut asked = None;
        if let Ok(r) = d.decode_region(data, |w, h| {
            let b = pick(w, h);
            asked = Some((b, w, h));
            b
        }) {
            let (b, w, h) = asked.expect("pick is called for every decoded image");
            assert_eq!((r.full_width, r.full_height), (w, h));
            assert_eq!(
                r.image.pixels.len(),
                r.image.width as usize * r.image.height as usize * 3
            );
            let clamped = CropBox {
                left: b.left.min(w - 1),
                top: b.top.min(h - 1),
                width: b.width.min(w - b.left.min(w - 1)),
                height: b.height.min(h - b.top.min(h - 1)),
            };
            assert!(r.covers(clamped), "{r:?} does not cover {clamped:?}");
        }
    }
}

/// A scratch folder per thread, emptied for each input.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "imgloader-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the fuzz scratch folder");
    dir
}

/// Every sample of an opened source: names, labels in range, bytes readable or a clear error, decoded
/// (a bounded number, so one input stays fast).
fn walk(source: &dyn Source) {
    let classes = source.classes().len();
    let mut bytes = Vec::new();
    let mut decoders = decoders();
    for i in 0..source.len() {
        let _ = source.name(i);
        assert!((source.label(i) as usize) < classes, "label out of range");
        if i < 16
            && let Ok(b) = source.bytes(i, &mut bytes)
        {
            for d in &mut decoders {
                let _ = d.decode(b);
            }
        }
    }
}

/// The bytes as a tar file: opened with every index policy (the index is built from these bytes, saved,
/// and loaded again), then walked.
pub fn tar(data: &[u8]) {
    let dir = scratch();
    let path = dir.join("train.tar");
    std::fs::write(&path, data).expect("write the fuzz input");
    let opts = |index| OpenOptions {
        index,
        cache_dir: Some(dir.join("cache")),
        ..OpenOptions::default()
    };
    for policy in [IndexPolicy::Use, IndexPolicy::Use, IndexPolicy::ReadOnly] {
        if let Ok(source) = imgloader::open(&path, &opts(policy)) {
            walk(&*source);
        }
    }
    // The same bytes as a webdataset shard.
    let shard = dir.join("shard-000000.tar");
    std::fs::write(&shard, data).expect("write the fuzz input");
    if let Ok(source) = imgloader::open(&shard, &opts(IndexPolicy::ReadOnly)) {
        walk(&*source);
    }
}

/// A valid tar of class folders, written once: the tar the `index` and `labels` targets fuzz around.
fn fixture(name: &str, flat: bool) -> &'static Path {
    static DIRS: OnceLock<std::sync::Mutex<Vec<(String, &'static Path)>>> = OnceLock::new();
    let dirs = DIRS.get_or_init(Default::default);
    let mut dirs = dirs.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = dirs.iter().find(|(n, _)| n == name) {
        return p;
    }
    let dir: &'static Path = Box::leak(
        std::env::temp_dir()
            .join(format!(
                "imgloader-fuzz-fixture-{}-{name}",
                std::process::id()
            ))
            .into_boxed_path(),
    );
    std::fs::create_dir_all(dir).expect("create the fixture folder");
    let mut b = tar::Builder::new(Vec::new());
    // One tiny valid JPEG, under several names.
    let jpeg = {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&[90; 8 * 8 * 3], 8, 8, jpeg_encoder::ColorType::Rgb)
            .expect("encode the fixture JPEG");
        out
    };
    for i in 1..=6 {
        let member = if flat {
            format!("ILSVRC2012_val_{i:08}.JPEG")
        } else {
            format!("n0000000{}/n0000000{}_{i}.JPEG", i % 3, i % 3)
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(jpeg.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, member, &jpeg[..])
            .expect("append to the fixture tar");
    }
    let bytes = b.into_inner().expect("finish the fixture tar");
    std::fs::write(dir.join(name), bytes).expect("write the fixture tar");
    // A fixed modification time, so that a sidecar saved from one run is current for the next: the seed
    // corpus then holds sidecars that load, and mutations start from the whole parsing path.
    std::fs::File::options()
        .write(true)
        .open(dir.join(name))
        .and_then(|f| {
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        })
        .expect("set the fixture tar's mtime");
    dirs.push((name.to_owned(), dir));
    dir
}

/// The bytes as the index sidecar of a valid 6-image tar: whatever they are, the opened dataset is the
/// tar's (6 samples); a sidecar that is not the tar's own is never trusted.
///
/// Then the same bytes with their checksum made right (`INDEX_FORMAT.md`: the CRC-32 of bytes `0..172` and
/// `176..` stored at 172), so that mutations get past the checksum into the records behind it. Such a file
/// is a forgery, not damage: the checksum is what tells damage apart, and a forged sidecar that passes the
/// checks binding it to the tar may list other members than the tar's own. What must still hold: it opens
/// or is refused with an error, never panics, gives only labels of its classes, and every sample it lists
/// is read or refused with an error.
pub fn index(data: &[u8]) {
    let source = open_with_sidecar(data).expect("a valid tar opens whatever its sidecar holds");
    assert_eq!(source.len(), 6, "a damaged sidecar changed the dataset");
    assert_eq!(source.classes().len(), 3);
    walk(&*source);

    const CRC_AT: usize = 172;
    const HEADER: usize = 176;
    if data.len() >= HEADER {
        let mut forged = data.to_vec();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&forged[..CRC_AT]);
        crc.update(&forged[HEADER..]);
        forged[CRC_AT..HEADER].copy_from_slice(&crc.finalize().to_le_bytes());
        if forged != data
            && let Ok(source) = open_with_sidecar(&forged)
        {
            walk(&*source);
        }
    }
}

/// Opens the `index` target's tar with `bytes` as its sidecar (read, never rewritten).
fn open_with_sidecar(bytes: &[u8]) -> imgloader::Result<std::sync::Arc<dyn Source>> {
    let dir = fixture("train.tar", false);
    let path = dir.join("train.tar");
    let mut sidecar = path.clone().into_os_string();
    sidecar.push(".idx");
    std::fs::write(&sidecar, bytes).expect("write the fuzz input");
    let opts = OpenOptions {
        index: IndexPolicy::ReadOnly,
        cache_dir: Some(dir.join("cache")),
        ..OpenOptions::default()
    };
    imgloader::open(&path, &opts)
}

/// The bytes as the labels file of a flat tar of 6 validation images (`LOC_val_solution.csv`, devkit
/// ground truth, or `name synset` lines: the loader tells them apart by content): opened or refused with
/// an error, and when opened every label is a class of the list.
pub fn labels(data: &[u8]) {
    let dir = fixture("val.tar", true);
    let (label_bytes, synset_bytes) = match data.windows(2).position(|w| w == [0, 0]) {
        Some(at) => (&data[..at], Some(&data[at + 2..])),
        None => (data, None),
    };
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, label_bytes).expect("write the fuzz input");
    let synsets = synset_bytes.map(|b| {
        let path = dir.join("synsets.txt");
        std::fs::write(&path, b).expect("write the fuzz input");
        path
    });
    let opts = OpenOptions {
        labels: Some(labels),
        synsets,
        index: IndexPolicy::ReadOnly,
        cache_dir: Some(dir.join("cache")),
        ..OpenOptions::default()
    };
    if let Ok(source) = imgloader::open(&dir.join("val.tar"), &opts) {
        assert!(source.len() <= 6);
        walk(&*source);
    }
}

/// The sidecar the loader writes for the `index` target's tar: the seed that loads.
pub fn index_seed() -> Vec<u8> {
    let dir = fixture("train.tar", false);
    let path = dir.join("train.tar");
    let opts = OpenOptions {
        index: IndexPolicy::Rebuild,
        cache_dir: Some(dir.join("cache")),
        ..OpenOptions::default()
    };
    imgloader::open(&path, &opts).expect("open the fixture tar");
    let mut sidecar = path.into_os_string();
    sidecar.push(".idx");
    std::fs::read(sidecar).expect("the loader saves a sidecar next to a writable tar")
}
