//! The fuzz targets' bodies (`loader/fuzz/src/lib.rs`) on stable Rust: each over its committed seed corpus,
//! every regression file, and a bounded number of deterministic random mutations of the seeds. The long,
//! coverage-guided form is `cargo fuzz` (see `loader/fuzz/README.md`).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod bodies;

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.expect("read a corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read a corpus file");
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// One random change of the kinds fuzzers make.
fn mutate(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    let len = input.len();
    match rng.random_range(0..7) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = *[0, 0xFF, 0x7F, 0x80, b'0', b'9', b'\n', rng.random()]
                .get(rng.random_range(0..8))
                .unwrap();
        }
        2 if len > 0 => input.truncate(rng.random_range(0..len)),
        3 if len > 0 => {
            // Duplicate a range somewhere else (tar headers, markers and lines get repeated).
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 600));
            let at = rng.random_range(0..=len);
            let chunk = input[a..b].to_vec();
            input.splice(at..at, chunk);
        }
        4 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 64));
            input.drain(a..b);
        }
        5 => {
            // Splice with another seed.
            let other = &seeds[rng.random_range(0..seeds.len())];
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..=other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=16);
            let noise: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            input.splice(at..at, noise);
        }
    }
}

fn run(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<Vec<u8>> = files(&root.join("fuzz/corpus").join(target))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    if target == "index" {
        // Today's format, whatever the committed seeds were written with.
        seeds.push(bodies::index_seed());
    }
    assert!(!seeds.is_empty(), "no seed corpus for {target}");
    for (path, bytes) in files(&root.join("tests/fuzz_regressions").join(target)) {
        eprintln!("{target}: regression {}", path.display());
        body(&bytes);
    }
    for s in &seeds {
        body(s);
    }
    let iters: usize = std::env::var("IMG_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed ^ target.len() as u64);
    for i in 0..iters {
        let mut input = seeds[i % seeds.len()].clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut rng, &seeds, &mut input);
        }
        let result = std::panic::catch_unwind(|| body(&input));
        if result.is_err() {
            let out = std::env::temp_dir().join(format!("imgloader-fuzz-{target}-crash-{i}"));
            std::fs::write(&out, &input).unwrap();
            panic!(
                "{target}: mutation {i} failed; input saved to {} (copy it to loader/tests/fuzz_regressions/{target}/)",
                out.display()
            );
        }
    }
}

#[test]
fn fuzz_decode() {
    run("decode", bodies::decode);
}

#[test]
fn fuzz_tar() {
    run("tar", bodies::tar);
}

#[test]
fn fuzz_index() {
    run("index", bodies::index);
}

#[test]
fn fuzz_labels() {
    run("labels", bodies::labels);
}
