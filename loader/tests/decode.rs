//! Decoder tests: a generated JPEG/PNG corpus checked against PIL (`Image.open(f).convert("RGB")`,
//! via `IMG_PYTHON` and tests/ref/pil_decode.py), bad input of every kind, the size cap, every
//! prefix and a few hundred bit flips of small files, and buffer reuse.
//!
//! The throughput measurement is `#[ignore]`d; run it with
//! `cargo test --release -p imgloader --test decode -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use imgloader::augment::CropBox;
use imgloader::decode::{
    ColorSpace, DecodeError, DecodeOptions, Decoder, ImageFormat, ImageInfo, JpegBackend, probe,
};

use crate::support::{backends, decoder};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------
// Allocation accounting, per thread (tests run in parallel threads).

struct CountingAllocator;

thread_local! {
    static ALLOC_COUNT: Cell<u64> = const { Cell::new(0) };
    static ALLOC_BYTES: Cell<u64> = const { Cell::new(0) };
    static ALLOC_LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // try_with: the allocator also runs while thread-locals are torn down.
    let _ = ALLOC_COUNT.try_with(|c| c.set(c.get() + 1));
    let _ = ALLOC_BYTES.try_with(|c| c.set(c.get() + size as u64));
    let _ = ALLOC_LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: every method forwards its arguments unchanged to the system allocator, so the caller's
// guarantees carry over; the bookkeeping touches only allocation-free thread-local cells.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[derive(Debug, Clone, Copy)]
struct Allocs {
    count: u64,
    bytes: u64,
    largest: usize,
}

/// Runs `f` and reports what this thread allocated meanwhile.
fn allocs_during<T>(f: impl FnOnce() -> T) -> (T, Allocs) {
    let before = (ALLOC_COUNT.get(), ALLOC_BYTES.get());
    ALLOC_LARGEST.set(0);
    let out = f();
    let allocs = Allocs {
        count: ALLOC_COUNT.get() - before.0,
        bytes: ALLOC_BYTES.get() - before.1,
        largest: ALLOC_LARGEST.get(),
    };
    (out, allocs)
}

// ---------------------------------------------------------------------------------------------
// Reference interpreter.

/// PIL's result for one file: `Ok((w, h, rgb))` or `Err(PIL's message)`.
type PilDecoded = Result<(u32, u32, Vec<u8>), String>;

/// Decodes `files` with PIL.
fn pil_decode(python: &Path, files: &[PathBuf]) -> Vec<PilDecoded> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ref/pil_decode.py");
    let out = Command::new(python)
        .arg(script)
        .args(files)
        .output()
        .expect("run IMG_PYTHON");
    assert!(
        out.status.success(),
        "pil_decode.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), files.len(), "pil_decode.py output: {stdout}");
    files
        .iter()
        .zip(lines)
        .map(|(file, line)| {
            if let Some(msg) = line.strip_prefix("error ") {
                return Err(msg.to_string());
            }
            let mut it = line.split(' ').map(|v| v.parse::<u32>().unwrap());
            let (w, h) = (it.next().unwrap(), it.next().unwrap());
            let mut rgb_path = file.clone().into_os_string();
            rgb_path.push(".rgb");
            Ok((w, h, std::fs::read(rgb_path).unwrap()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Generated content.

/// Photo-like RGB: smooth colour fields, a few hard-edged discs, and sensor-like noise. With
/// `noise` 8 a 500x375 q90 4:2:0 JPEG comes out near the ~80 KB of an ImageNet photo.
fn photo(w: usize, h: usize, seed: u64, noise: i32) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let waves: Vec<[f32; 6]> = (0..5)
        .map(|_| {
            let tau = std::f32::consts::TAU;
            [
                rng.random_range(0.3..5.0) * tau / w as f32,
                rng.random_range(0.3..5.0) * tau / h as f32,
                rng.random_range(0.0..tau),
                rng.random_range(10.0..40.0),
                rng.random_range(10.0..40.0),
                rng.random_range(10.0..40.0),
            ]
        })
        .collect();
    let discs: Vec<(f32, f32, f32, [f32; 3])> = (0..4)
        .map(|_| {
            (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
                rng.random_range(0.05..0.3) * (w.min(h) as f32),
                [
                    rng.random_range(0.0..255.0),
                    rng.random_range(0.0..255.0),
                    rng.random_range(0.0..255.0),
                ],
            )
        })
        .collect();
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f32, y as f32);
            let mut px = [128.0f32; 3];
            for wv in &waves {
                let s = (wv[0] * xf + wv[1] * yf + wv[2]).sin();
                for c in 0..3 {
                    px[c] += wv[3 + c] * s;
                }
            }
            for (cx, cy, r, color) in &discs {
                if (xf - cx).powi(2) + (yf - cy).powi(2) < r * r {
                    for c in 0..3 {
                        px[c] = 0.3 * px[c] + 0.7 * color[c];
                    }
                }
            }
            for v in px {
                let n = if noise > 0 {
                    rng.random_range(-noise..=noise) + rng.random_range(-noise..=noise)
                } else {
                    0
                };
                out.push((v as i32 + n / 2).clamp(0, 255) as u8);
            }
        }
    }
    out
}

struct Jpeg {
    quality: u8,
    sampling: SamplingFactor,
    progressive: bool,
    restart: Option<u16>,
    optimize: bool,
}

impl Default for Jpeg {
    fn default() -> Self {
        Jpeg {
            quality: 90,
            sampling: SamplingFactor::R_4_2_0,
            progressive: false,
            restart: None,
            optimize: false,
        }
    }
}

impl Jpeg {
    fn encode(&self, data: &[u8], w: usize, h: usize, color: ColorType) -> Vec<u8> {
        self.encode_with(data, w, h, color, &[])
    }

    fn encode_with(
        &self,
        data: &[u8],
        w: usize,
        h: usize,
        color: ColorType,
        app: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out, self.quality);
        enc.set_sampling_factor(self.sampling);
        enc.set_progressive(self.progressive);
        if let Some(r) = self.restart {
            enc.set_restart_interval(r);
        }
        enc.set_optimized_huffman_tables(self.optimize);
        for (nr, data) in app {
            enc.add_app_segment(*nr, data.to_vec()).unwrap();
        }
        enc.encode(data, w as u16, h as u16, color).unwrap();
        out
    }
}

/// Removes the first segment with marker `FF <marker>` (before the first scan).
fn strip_segment(jpeg: &[u8], marker: u8) -> Vec<u8> {
    let mut pos = 2;
    while pos + 4 <= jpeg.len() && jpeg[pos + 1] != 0xDA {
        assert_eq!(jpeg[pos], 0xFF);
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        if jpeg[pos + 1] == marker {
            return [&jpeg[..pos], &jpeg[pos + 2 + len..]].concat();
        }
        pos += 2 + len;
    }
    panic!("no FF{marker:02X} segment");
}

fn to_cmyk(rgb: &[u8], w: usize, seed: u64) -> Vec<u8> {
    // Ink = complement of RGB with some of the common part moved to K, varying across the image
    // so that every K level meets every C/M/Y level somewhere.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let gcr: f32 = rng.random_range(0.3..0.8);
    rgb.chunks_exact(3)
        .enumerate()
        .flat_map(|(i, p)| {
            let ramp = (i % w) as f32 / w as f32;
            let (c, m, y) = (255 - p[0], 255 - p[1], 255 - p[2]);
            let k = (f32::from(c.min(m).min(y)) * gcr * (0.5 + ramp)).min(255.0) as u8;
            [c - k.min(c), m - k.min(m), y - k.min(y), k]
        })
        .collect()
}

fn png_bytes(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
    trns: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        if let Some(t) = trns {
            enc.set_trns(t.to_vec());
        }
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }
    out
}

/// Packs `samples` (each < 2^bits) into PNG rows of `w` samples.
fn pack(samples: &[u8], w: usize, bits: usize) -> Vec<u8> {
    let row_bytes = (w * bits).div_ceil(8);
    let mut out = Vec::new();
    for row in samples.chunks(w) {
        let mut packed = vec![0u8; row_bytes];
        for (x, &s) in row.iter().enumerate() {
            let bit = x * bits;
            packed[bit / 8] |= s << (8 - bits - bit % 8);
        }
        out.extend(packed);
    }
    out
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Largest allowed per-sample difference from PIL; 0 for PNG.
    max_diff: u8,
}

fn case(name: &str, bytes: Vec<u8>, max_diff: u8) -> Case {
    Case {
        name: name.to_string(),
        bytes,
        max_diff,
    }
}

/// Chroma upsampling and IDCT rounding differ a little between zune and libjpeg-turbo: measured
/// max 4 (4:2:0), 3 (4:2:2, 4:4:0, YCCK), 2 (4:4:4, CMYK), 1 (gray); mean below 0.25 everywhere.
const JPEG_MAX_DIFF: u8 = 5;

fn jpeg_corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let big = photo(500, 375, 1, 8);
    let odd = photo(333, 257, 2, 6);
    let rgb = ColorType::Rgb;
    let with = |sampling| Jpeg {
        sampling,
        ..Jpeg::default()
    };
    for (name, s) in [
        ("420", SamplingFactor::R_4_2_0),
        ("444", SamplingFactor::R_4_4_4),
        ("422", SamplingFactor::R_4_2_2),
    ] {
        cases.push(case(
            &format!("{name}_500x375_q90"),
            with(s).encode(&big, 500, 375, rgb),
            JPEG_MAX_DIFF,
        ));
    }
    for (name, s) in [
        ("420", SamplingFactor::R_4_2_0),
        ("422", SamplingFactor::R_4_2_2),
        ("444", SamplingFactor::R_4_4_4),
        ("440", SamplingFactor::R_4_4_0),
    ] {
        cases.push(case(
            &format!("{name}_333x257"),
            with(s).encode(&odd, 333, 257, rgb),
            JPEG_MAX_DIFF,
        ));
    }
    for (w, h, s) in [
        (1, 1, SamplingFactor::R_4_2_0),
        (7, 5, SamplingFactor::R_4_2_0),
        (17, 9, SamplingFactor::R_4_2_2),
        (3, 250, SamplingFactor::R_4_4_4),
        (641, 16, SamplingFactor::R_4_2_0),
    ] {
        let p = photo(w, h, (w * h) as u64, 6);
        cases.push(case(
            &format!("tiny_{w}x{h}"),
            with(s).encode(&p, w, h, rgb),
            JPEG_MAX_DIFF,
        ));
    }
    let prog = |sampling| Jpeg {
        sampling,
        progressive: true,
        ..Jpeg::default()
    };
    cases.push(case(
        "progressive_420_333x257",
        prog(SamplingFactor::R_4_2_0).encode(&odd, 333, 257, rgb),
        JPEG_MAX_DIFF,
    ));
    cases.push(case(
        "progressive_444_333x257",
        prog(SamplingFactor::R_4_4_4).encode(&odd, 333, 257, rgb),
        JPEG_MAX_DIFF,
    ));
    let rst = |restart, sampling| Jpeg {
        restart: Some(restart),
        sampling,
        ..Jpeg::default()
    };
    cases.push(case(
        "restart1_420_333x257",
        rst(1, SamplingFactor::R_4_2_0).encode(&odd, 333, 257, rgb),
        JPEG_MAX_DIFF,
    ));
    cases.push(case(
        "restart7_444_333x257",
        rst(7, SamplingFactor::R_4_4_4).encode(&odd, 333, 257, rgb),
        JPEG_MAX_DIFF,
    ));
    let q = |quality, sampling, optimize| Jpeg {
        quality,
        sampling,
        optimize,
        ..Jpeg::default()
    };
    cases.push(case(
        "q50_420_333x257",
        q(50, SamplingFactor::R_4_2_0, false).encode(&odd, 333, 257, rgb),
        JPEG_MAX_DIFF,
    ));
    cases.push(case(
        "q100_444_optimized_333x257",
        q(100, SamplingFactor::R_4_4_4, true).encode(&odd, 333, 257, rgb),
        JPEG_MAX_DIFF,
    ));
    // Grayscale.
    let gray: Vec<u8> = odd.chunks_exact(3).map(|p| p[1]).collect();
    cases.push(case(
        "gray_333x257",
        Jpeg::default().encode(&gray, 333, 257, ColorType::Luma),
        JPEG_MAX_DIFF,
    ));
    cases.push(case(
        "gray_progressive_333x257",
        prog(SamplingFactor::R_4_4_4).encode(&gray, 333, 257, ColorType::Luma),
        JPEG_MAX_DIFF,
    ));
    // Four components: Adobe CMYK (transform 0), the same without the APP14 segment, and YCCK.
    let cmyk = to_cmyk(&odd, 333, 3);
    let cmyk_jpeg = with(SamplingFactor::R_4_4_4).encode(&cmyk, 333, 257, ColorType::Cmyk);
    cases.push(case(
        "cmyk_noapp14_333x257",
        strip_segment(&cmyk_jpeg, 0xEE),
        JPEG_MAX_DIFF,
    ));
    cases.push(case("cmyk_adobe_333x257", cmyk_jpeg, JPEG_MAX_DIFF));
    cases.push(case(
        "cmyk_progressive_333x257",
        prog(SamplingFactor::R_4_4_4).encode(&cmyk, 333, 257, ColorType::Cmyk),
        JPEG_MAX_DIFF,
    ));
    cases.push(case(
        "ycck_444_333x257",
        with(SamplingFactor::R_4_4_4).encode(&cmyk, 333, 257, ColorType::CmykAsYcck),
        JPEG_MAX_DIFF,
    ));
    cases.push(case(
        "ycck_420_333x257",
        with(SamplingFactor::R_4_2_0).encode(&cmyk, 333, 257, ColorType::CmykAsYcck),
        JPEG_MAX_DIFF,
    ));
    // Three components stored as RGB (Adobe transform 0, no JFIF): libjpeg and zune agree on RGB.
    let adobe0: &[u8] = b"Adobe\0\x64\0\0\0\0\0";
    let stored_rgb = with(SamplingFactor::R_4_4_4).encode_with(
        &odd,
        333,
        257,
        ColorType::Ycbcr,
        &[(14, adobe0)],
    );
    cases.push(case(
        "adobe_rgb_no_jfif_333x257",
        strip_segment(&stored_rgb, 0xE0),
        JPEG_MAX_DIFF,
    ));
    // JFIF and Adobe transform 0 on YCbCr data: libjpeg (so PIL) says YCbCr, zune says RGB.
    let both = with(SamplingFactor::R_4_2_0).encode_with(&odd, 333, 257, rgb, &[(14, adobe0)]);
    cases.push(case("jfif_and_adobe0_333x257", both, JPEG_MAX_DIFF));
    cases
}

fn png_corpus() -> Vec<Case> {
    use png::{BitDepth as D, ColorType as C};
    let (w, h) = (37usize, 23usize);
    let rgb = photo(w, h, 4, 6);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let alpha: Vec<u8> = (0..w * h).map(|_| rng.random()).collect();
    let wide: Vec<u16> = (0..w * h * 4)
        .map(|i| {
            if i % 7 == 0 {
                rng.random_range(0..300)
            } else {
                rng.random()
            }
        })
        .collect();
    let be16 = |v: &[u16]| v.iter().flat_map(|s| s.to_be_bytes()).collect::<Vec<u8>>();
    let gray: Vec<u8> = rgb.chunks_exact(3).map(|p| p[0]).collect();
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .zip(&alpha)
        .flat_map(|(p, a)| [p[0], p[1], p[2], *a])
        .collect();
    let ga: Vec<u8> = gray
        .iter()
        .zip(&alpha)
        .flat_map(|(g, a)| [*g, *a])
        .collect();
    let (wu, hu) = (w as u32, h as u32);
    let mut cases = vec![
        case(
            "rgb8",
            png_bytes(wu, hu, C::Rgb, D::Eight, &rgb, None, None),
            0,
        ),
        case(
            "rgb8_trns",
            png_bytes(
                wu,
                hu,
                C::Rgb,
                D::Eight,
                &rgb,
                None,
                Some(&[0, rgb[0], 0, rgb[1], 0, rgb[2]]),
            ),
            0,
        ),
        case(
            "rgba8",
            png_bytes(wu, hu, C::Rgba, D::Eight, &rgba, None, None),
            0,
        ),
        case(
            "gray8",
            png_bytes(wu, hu, C::Grayscale, D::Eight, &gray, None, None),
            0,
        ),
        case(
            "gray8_trns",
            png_bytes(
                wu,
                hu,
                C::Grayscale,
                D::Eight,
                &gray,
                None,
                Some(&[0, gray[0]]),
            ),
            0,
        ),
        case(
            "ga8",
            png_bytes(wu, hu, C::GrayscaleAlpha, D::Eight, &ga, None, None),
            0,
        ),
        case(
            "gray16",
            png_bytes(
                wu,
                hu,
                C::Grayscale,
                D::Sixteen,
                &be16(&wide[..w * h]),
                None,
                None,
            ),
            0,
        ),
        case(
            "ga16",
            png_bytes(
                wu,
                hu,
                C::GrayscaleAlpha,
                D::Sixteen,
                &be16(&wide[..w * h * 2]),
                None,
                None,
            ),
            0,
        ),
        case(
            "rgb16",
            png_bytes(
                wu,
                hu,
                C::Rgb,
                D::Sixteen,
                &be16(&wide[..w * h * 3]),
                None,
                None,
            ),
            0,
        ),
        case(
            "rgba16",
            png_bytes(wu, hu, C::Rgba, D::Sixteen, &be16(&wide), None, None),
            0,
        ),
    ];
    for bits in [1usize, 2, 4] {
        let samples: Vec<u8> = gray.iter().map(|g| g >> (8 - bits)).collect();
        let depth = D::from_u8(bits as u8).unwrap();
        cases.push(case(
            &format!("gray{bits}"),
            png_bytes(
                wu,
                hu,
                C::Grayscale,
                depth,
                &pack(&samples, w, bits),
                None,
                None,
            ),
            0,
        ));
        // A palette shorter than the index range: PIL shows the missing entries as black.
        let entries = (1usize << bits).div_ceil(2).max(2) - 1;
        let palette: Vec<u8> = (0..entries * 3).map(|_| rng.random()).collect();
        cases.push(case(
            &format!("palette{bits}_short_trns"),
            png_bytes(
                wu,
                hu,
                C::Indexed,
                depth,
                &pack(&samples, w, bits),
                Some(&palette),
                Some(&[0]),
            ),
            0,
        ));
    }
    let palette: Vec<u8> = (0..200 * 3).map(|_| rng.random()).collect();
    cases.push(case(
        "palette8_200_entries",
        png_bytes(wu, hu, C::Indexed, D::Eight, &gray, Some(&palette), None),
        0,
    ));
    cases
}

fn diff_stats(ours: &[u8], reference: &[u8]) -> (f64, u8) {
    assert_eq!(ours.len(), reference.len());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (a, b) in ours.iter().zip(reference) {
        let d = a.abs_diff(*b);
        sum += u64::from(d);
        max = max.max(d);
    }
    (sum as f64 / ours.len() as f64, max)
}

#[test]
fn corpus_matches_pil() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = jpeg_corpus();
    cases.extend(png_corpus());
    // ImageNet's famous PNG-named-.JPEG: the name must not matter.
    let png_named_jpeg = png_corpus().into_iter().next().unwrap().bytes;
    cases.push(case("png_named.JPEG", png_named_jpeg, 0));

    let mut paths = Vec::new();
    for c in &cases {
        let name = if c.name.contains('.') {
            c.name.clone()
        } else if c.max_diff == 0 {
            format!("{}.png", c.name)
        } else {
            format!("{}.jpg", c.name)
        };
        let path = dir.path().join(name);
        std::fs::write(&path, &c.bytes).unwrap();
        paths.push(path);
    }
    // Each backend's result for each case.
    let mut ours = Vec::new();
    for backend in backends() {
        let mut decoder = decoder(backend);
        let mut results = Vec::new();
        for (c, path) in cases.iter().zip(&paths) {
            let bytes = std::fs::read(path).unwrap();
            let img = decoder
                .decode(&bytes)
                .unwrap_or_else(|e| panic!("{backend}: {}: {e}", c.name));
            assert_eq!(
                img.pixels.len(),
                img.width as usize * img.height as usize * 3
            );
            let info = probe(&bytes).unwrap();
            assert_eq!(
                (info.width, info.height),
                (img.width, img.height),
                "{}",
                c.name
            );
            results.push((img.width, img.height, img.pixels.to_vec()));
        }
        ours.push((backend, results));
    }
    let Some(python) = crate::support::ref_python() else {
        return;
    };
    let reference = pil_decode(&python, &paths);
    let mut failures = Vec::new();
    for (backend, results) in &ours {
        for ((c, (w, h, px)), r) in cases.iter().zip(results).zip(&reference) {
            let (rw, rh, rpx) = r
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: PIL failed: {e}", c.name));
            assert_eq!((*w, *h), (*rw, *rh), "{}: size", c.name);
            let (mean, max) = diff_stats(px, rpx);
            eprintln!(
                "{backend:<13} {:<32} {w:>4}x{h:<4} mean |diff| {mean:.4}  max {max}",
                c.name
            );
            // libjpeg-turbo is PIL's own decoder: nothing short of identical will do.
            let allowed = match backend {
                JpegBackend::Turbo => 0,
                _ => c.max_diff,
            };
            if mean >= 1.0 || max > allowed || (allowed == 0 && max != 0) {
                failures.push(format!(
                    "{backend}: {}: mean {mean:.3}, max {max} (allowed {allowed})",
                    c.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "differences from PIL:\n{}",
        failures.join("\n")
    );
}

/// Region decode gives, inside the box asked for, exactly the pixels of a whole decode, for every
/// subsampling, colour layout and coding the corpus has, and for boxes at every edge.
#[test]
fn regions_match_whole_decodes() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    // The corpus plus the widest chroma subsamplings, whose upsampling reaches furthest.
    let mut cases = jpeg_corpus();
    let odd = photo(333, 257, 5, 6);
    for (name, sampling) in [
        ("411", SamplingFactor::F_4_1),
        ("4x2", SamplingFactor::F_4_2),
        ("2x4", SamplingFactor::F_2_4),
    ] {
        let jpeg = Jpeg {
            sampling,
            ..Jpeg::default()
        };
        cases.push(case(name, jpeg.encode(&odd, 333, 257, ColorType::Rgb), 0));
    }
    cases.extend(png_corpus().into_iter().take(3));
    for backend in backends() {
        let mut whole = decoder(backend);
        let mut part = decoder(backend);
        for c in &cases {
            let full = whole.decode(&c.bytes).unwrap();
            let (w, h) = (full.width, full.height);
            let mut boxes = vec![
                CropBox {
                    top: 0,
                    left: 0,
                    height: h,
                    width: w,
                },
                CropBox {
                    top: 0,
                    left: 0,
                    height: 1,
                    width: 1,
                },
                CropBox {
                    top: h - 1,
                    left: w - 1,
                    height: 1,
                    width: 1,
                },
                CropBox {
                    top: h / 3,
                    left: w / 3,
                    height: h / 3,
                    width: w / 3,
                },
                CropBox {
                    top: 7,
                    left: 17,
                    height: h.saturating_sub(7).max(1),
                    width: w.saturating_sub(17).max(1),
                },
                // Larger than the image: clamped.
                CropBox {
                    top: 5,
                    left: 9,
                    height: 2 * h,
                    width: 2 * w,
                },
            ];
            for _ in 0..12 {
                let (bw, bh) = (rng.random_range(1..=w), rng.random_range(1..=h));
                boxes.push(CropBox {
                    top: rng.random_range(0..=h - bh),
                    left: rng.random_range(0..=w - bw),
                    height: bh,
                    width: bw,
                });
            }
            for want in boxes {
                let mut seen = None;
                let r = part
                    .decode_region(&c.bytes, |fw, fh| {
                        seen = Some((fw, fh));
                        want
                    })
                    .unwrap_or_else(|e| panic!("{backend} {}: {want:?}: {e}", c.name));
                assert_eq!(seen, Some((w, h)));
                assert_eq!((r.full_width, r.full_height), (w, h));
                // What the decoder makes of boxes reaching past the image.
                let want = CropBox {
                    top: want.top.min(h - 1),
                    left: want.left.min(w - 1),
                    ..want
                };
                let bottom = (want.top + want.height).min(h);
                let right = (want.left + want.width).min(w);
                assert!(
                    r.covers(CropBox {
                        width: right - want.left,
                        height: bottom - want.top,
                        ..want
                    }),
                    "{backend} {}: {want:?} not covered by {}x{} at ({}, {})",
                    c.name,
                    r.image.width,
                    r.image.height,
                    r.left,
                    r.top
                );
                let stride = r.image.width as usize * 3;
                for y in want.top..bottom {
                    let ours = &r.image.pixels[(y - r.top) as usize * stride..][..stride]
                        [(want.left - r.left) as usize * 3..(right - r.left) as usize * 3];
                    let theirs = &full.pixels[y as usize * w as usize * 3..]
                        [want.left as usize * 3..right as usize * 3];
                    assert!(
                        ours == theirs,
                        "{backend} {}: {want:?}: row {y} differs",
                        c.name
                    );
                }
            }
        }
    }
}

/// Where a backend cannot skip work it decodes everything; libjpeg-turbo does skip (it decodes fewer
/// pixels than the image has for a small box in the middle).
#[test]
fn region_decode_skips_work_where_it_can() {
    let jpeg = Jpeg::default().encode(&photo(500, 375, 3, 8), 500, 375, ColorType::Rgb);
    let want = CropBox {
        top: 100,
        left: 150,
        height: 80,
        width: 60,
    };
    for backend in backends() {
        let r = decoder(backend)
            .decode_region(&jpeg, |_, _| want)
            .map(|r| (r.left, r.top, r.image.width, r.image.height))
            .unwrap();
        match backend {
            // The box, a few pixels of margin, and the left edge moved back to a 16-pixel block boundary.
            JpegBackend::Turbo => {
                let (left, top, w, h) = r;
                assert!(left <= 150 && left % 16 == 0 && top <= 100, "{r:?}");
                assert!(left + w >= 210 && top + h >= 180, "{r:?}");
                assert!(w <= 60 + 2 * 16 && h <= 80 + 2 * 16, "{r:?}");
            }
            _ => assert_eq!(r, (0, 0, 500, 375)),
        }
    }
}

#[test]
fn turbo_backend_missing_is_a_clear_error() {
    let jpeg = Jpeg::default().encode(&photo(16, 16, 3, 8), 16, 16, ColorType::Rgb);
    let r = decoder(JpegBackend::Turbo).decode(&jpeg).map(|i| i.width);
    if JpegBackend::Turbo.is_available() {
        assert_eq!(r.unwrap(), 16);
    } else {
        let e = r.unwrap_err();
        assert!(matches!(e, DecodeError::BackendUnavailable));
        assert!(e.to_string().contains("`turbojpeg` feature"), "{e}");
    }
}

#[test]
fn probe_reads_headers() {
    let odd = photo(333, 257, 2, 6);
    let prog = Jpeg {
        progressive: true,
        ..Jpeg::default()
    }
    .encode(&odd, 333, 257, ColorType::Rgb);
    let info = probe(&prog).unwrap();
    assert_eq!(
        info,
        ImageInfo {
            format: ImageFormat::Jpeg,
            width: 333,
            height: 257,
            components: 3,
            color: ColorSpace::YCbCr,
            bit_depth: 8,
            progressive: true
        }
    );
    let cmyk = Jpeg::default().encode(&to_cmyk(&odd, 333, 3), 333, 257, ColorType::Cmyk);
    assert_eq!(probe(&cmyk).unwrap().color, ColorSpace::Cmyk);
    let ycck = Jpeg::default().encode(&to_cmyk(&odd, 333, 3), 333, 257, ColorType::CmykAsYcck);
    assert_eq!(
        (
            probe(&ycck).unwrap().color,
            probe(&ycck).unwrap().components
        ),
        (ColorSpace::Ycck, 4)
    );
    let gray: Vec<u8> = odd.chunks_exact(3).map(|p| p[1]).collect();
    let g = Jpeg::default().encode(&gray, 333, 257, ColorType::Luma);
    assert_eq!(
        (probe(&g).unwrap().color, probe(&g).unwrap().components),
        (ColorSpace::Gray, 1)
    );
    let p = png_bytes(
        5,
        3,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Sixteen,
        &[0; 60],
        None,
        None,
    );
    assert_eq!(
        probe(&p).unwrap(),
        ImageInfo {
            format: ImageFormat::Png,
            width: 5,
            height: 3,
            components: 2,
            color: ColorSpace::GrayAlpha,
            bit_depth: 16,
            progressive: false
        }
    );
    // probe allocates nothing.
    let (_, allocs) = allocs_during(|| probe(&prog).unwrap());
    assert_eq!(allocs.count, 0);
}

#[test]
fn not_images_get_clear_errors() {
    let mut d = Decoder::default();
    assert!(matches!(d.decode(b""), Err(DecodeError::Empty)));
    assert!(matches!(probe(b""), Err(DecodeError::Empty)));

    let garbage: Vec<u8> = (0..1000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    match d.decode(&garbage) {
        Err(DecodeError::UnknownFormat { magic }) => assert_eq!(magic, &garbage[..16]),
        other => panic!("garbage: {other:?}"),
    }
    let html = b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>";
    let e = d.decode(html).unwrap_err();
    assert!(matches!(e, DecodeError::UnknownFormat { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("looks like text: \"<!DOCTYPE html> \""),
        "{e}"
    );

    let gif = b"GIF89a\x01\0\x01\0\x80\0\0\xff\xff\xff\0\0\0!\xf9\x04\0\0\0\0\0,\0\0\0\0\x01\0\x01\0\0\x02\x02D\x01\0;";
    match d.decode(gif) {
        Err(DecodeError::UnsupportedFormat { format }) => assert_eq!(format, "GIF"),
        other => panic!("gif: {other:?}"),
    }
    let e = d.decode(b"RIFF\x24\0\0\0WEBPVP8 ").unwrap_err();
    assert_eq!(e.to_string(), "WebP image: only JPEG and PNG are supported");

    // Only a JPEG signature, or only a PNG one.
    assert!(matches!(
        d.decode(&[0xFF, 0xD8]),
        Err(DecodeError::Truncated {
            format: ImageFormat::Jpeg
        })
    ));
    assert!(matches!(
        d.decode(b"\x89PNG\r\n\x1a\n"),
        Err(DecodeError::Truncated {
            format: ImageFormat::Png
        })
    ));
    // A 12-bit JPEG (PIL refuses those too) and a 2-component one.
    let mut twelve = Jpeg::default().encode(&photo(16, 16, 9, 0), 16, 16, ColorType::Rgb);
    let sof = twelve.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    twelve[sof + 4] = 12;
    assert!(matches!(
        d.decode(&twelve),
        Err(DecodeError::Unsupported {
            format: ImageFormat::Jpeg,
            ..
        })
    ));
}

#[test]
fn error_names_the_sample() {
    let e = imgloader::Error::Decode {
        sample: "train.tar › n01440764.tar › n01440764_10026.JPEG".into(),
        source: DecodeError::Truncated {
            format: ImageFormat::Jpeg,
        },
    };
    // The variant names the culprit; the cause comes through source(), so a chain prints each once.
    assert_eq!(
        e.to_string(),
        "train.tar › n01440764.tar › n01440764_10026.JPEG"
    );
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(
        imgloader::error::chain(&e),
        "train.tar › n01440764.tar › n01440764_10026.JPEG: truncated JPEG file: the data ends before the image does"
    );
}

#[test]
fn truncated_files_are_errors_not_grey() {
    for backend in backends() {
        truncated_files_are_errors_with(decoder(backend));
    }
}

fn truncated_files_are_errors_with(mut d: Decoder) {
    let odd = photo(333, 257, 2, 6);
    for (name, jpeg) in [
        (
            "baseline",
            Jpeg::default().encode(&odd, 333, 257, ColorType::Rgb),
        ),
        (
            "progressive",
            Jpeg {
                progressive: true,
                ..Jpeg::default()
            }
            .encode(&odd, 333, 257, ColorType::Rgb),
        ),
        (
            "restart",
            Jpeg {
                restart: Some(3),
                ..Jpeg::default()
            }
            .encode(&odd, 333, 257, ColorType::Rgb),
        ),
    ] {
        d.decode(&jpeg).unwrap();
        let n = jpeg.len();
        // From mid-header to just the EOI's last byte; n - 40 is inside the last MCU row, which
        // zune on its own pads with grey and calls a success.
        for cut in [30, n / 3, n / 2, n - 200, n - 40, n - 3, n - 2, n - 1] {
            match d.decode(&jpeg[..cut]) {
                Err(DecodeError::Truncated {
                    format: ImageFormat::Jpeg,
                }) => {}
                other => panic!(
                    "{name} cut at {cut}/{n}: {:?}",
                    other.map(|i| (i.width, i.height))
                ),
            }
        }
    }
    let p = png_corpus().swap_remove(0).bytes;
    let idat_end = p.len() - 12; // IEND is the last 12 bytes
    for cut in [20, 40, p.len() / 2, idat_end - 5] {
        match d.decode(&p[..cut]) {
            Err(DecodeError::Truncated {
                format: ImageFormat::Png,
            }) => {}
            other => panic!(
                "png cut at {cut}/{}: {:?}",
                p.len(),
                other.map(|i| (i.width, i.height))
            ),
        }
    }
}

/// A baseline JPEG header (SOI, DQT, SOF0, DHT, SOS) claiming `w`x`h`, then a few bytes of scan
/// and EOI.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let real = Jpeg::default().encode(&photo(16, 16, 7, 0), 16, 16, ColorType::Rgb);
    let sof = real.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
    let mut fake = real.clone();
    fake[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    fake[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    fake
}

#[test]
fn oversized_declared_dimensions_are_refused_before_allocating() {
    let fake = jpeg_claiming(20000, 20000);
    let info = probe(&fake).unwrap();
    assert_eq!((info.width, info.height), (20000, 20000));
    for (max_pixels, jpeg) in [1_000_000, DecodeOptions::default().max_pixels]
        .into_iter()
        .flat_map(|m| backends().into_iter().map(move |b| (m, b)))
    {
        let mut d = Decoder::new(DecodeOptions { max_pixels, jpeg });
        let (res, allocs) = allocs_during(|| d.decode(&fake).map(|_| ()));
        match res {
            Err(DecodeError::TooLarge {
                width: 20000,
                height: 20000,
                max_pixels: m,
            }) => assert_eq!(m, max_pixels),
            other => panic!("{other:?}"),
        }
        assert!(allocs.bytes < 4096, "{allocs:?}");
    }
    let e = Decoder::new(DecodeOptions {
        max_pixels: 1_000_000,
        ..DecodeOptions::default()
    })
    .decode(&fake)
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "image is 20000x20000 = 400000000 pixels, over the limit of 1000000"
    );

    // PNG: only the IHDR is needed to refuse.
    let mut png = png_bytes(
        4,
        4,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &[0; 48],
        None,
        None,
    );
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&30_000u32.to_be_bytes());
    let mut d = Decoder::default();
    let (res, allocs) = allocs_during(|| d.decode(&png).map(|_| ()));
    assert!(
        matches!(
            res,
            Err(DecodeError::TooLarge {
                width: 100_000,
                height: 30_000,
                ..
            })
        ),
        "{res:?}"
    );
    assert!(allocs.bytes < 4096, "{allocs:?}");

    // Under the cap, a frame larger than its scan data but closed by EOI is a corrupt file, not a
    // truncated one: PIL (libjpeg-turbo) returns it with the missing part grey, without error. We
    // return it too (zune's filler repeats the last DC value instead of grey).
    let small_lie = jpeg_claiming(200, 100);
    let img = Decoder::default()
        .decode(&small_lie)
        .map(|i| (i.width, i.height, i.pixels.len()));
    assert_eq!(img.unwrap(), (200, 100, 200 * 100 * 3));
}

#[test]
fn every_prefix_and_bit_flip_is_handled() {
    for jpeg in backends() {
        every_prefix_and_bit_flip_is_handled_with(Decoder::new(DecodeOptions {
            max_pixels: 1 << 20,
            jpeg,
        }));
    }
}

fn every_prefix_and_bit_flip_is_handled_with(mut d: Decoder) {
    let p = photo(48, 40, 11, 6);
    let gray: Vec<u8> = p.chunks_exact(3).map(|x| x[0]).collect();
    let files = [
        Jpeg {
            restart: Some(2),
            ..Jpeg::default()
        }
        .encode(&p, 48, 40, ColorType::Rgb),
        Jpeg {
            progressive: true,
            ..Jpeg::default()
        }
        .encode(&p, 48, 40, ColorType::Rgb),
        Jpeg::default().encode(&to_cmyk(&p, 48, 1), 48, 40, ColorType::CmykAsYcck),
        Jpeg::default().encode(&gray, 48, 40, ColorType::Luma),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut variants = 0;
    for (i, file) in files.iter().enumerate() {
        let whole = d
            .decode(file)
            .unwrap_or_else(|e| panic!("{i}: {e}"))
            .pixels
            .to_vec();
        // A strict prefix of a JPEG is an error, never a picture with grey rows: with every scan byte there
        // and only the end-of-image marker missing, PIL and so libjpeg-turbo decode it, to the whole image.
        for cut in 0..file.len() {
            if let Ok(img) = d.decode(&file[..cut]) {
                assert!(
                    img.pixels == &whole[..],
                    "prefix {cut}/{} decoded to something else than the whole image",
                    file.len()
                );
            }
            let _ = probe(&file[..cut]);
            variants += 1;
        }
        for _ in 0..150 {
            let mut bad = file.clone();
            for _ in 0..rng.random_range(1..=3) {
                let i = rng.random_range(0..bad.len());
                bad[i] ^= 1 << rng.random_range(0..8);
            }
            if let Ok(img) = d.decode(&bad) {
                assert_eq!(
                    img.pixels.len(),
                    img.width as usize * img.height as usize * 3
                );
            }
            // The partial path too: a box in the middle, as a training crop would ask.
            let middle = |w: u32, h: u32| CropBox {
                top: h / 4,
                left: w / 3,
                height: h / 2,
                width: w / 3,
            };
            if let Ok(r) = d.decode_region(&bad, middle) {
                assert_eq!(
                    r.image.pixels.len(),
                    r.image.width as usize * r.image.height as usize * 3
                );
            }
            let _ = probe(&bad);
            variants += 1;
        }
    }
    for c in png_corpus().iter().step_by(3) {
        for cut in (0..c.bytes.len()).step_by(7) {
            let _ = d.decode(&c.bytes[..cut]);
        }
        for _ in 0..50 {
            let mut bad = c.bytes.clone();
            let i = rng.random_range(0..bad.len());
            bad[i] ^= 1 << rng.random_range(0..8);
            if let Ok(img) = d.decode(&bad) {
                assert_eq!(
                    img.pixels.len(),
                    img.width as usize * img.height as usize * 3
                );
            }
            variants += 1;
        }
    }
    eprintln!("{variants} damaged variants, no panic");
}

#[test]
fn buffers_are_reused() {
    let big = Jpeg::default().encode(&photo(500, 375, 1, 8), 500, 375, ColorType::Rgb);
    let small = Jpeg::default().encode(&photo(7, 5, 3, 8), 7, 5, ColorType::Rgb);
    let cmyk = Jpeg::default().encode(
        &to_cmyk(&photo(200, 100, 2, 8), 200, 4),
        200,
        100,
        ColorType::Cmyk,
    );
    let fresh = |b: &[u8]| Decoder::default().decode(b).unwrap().pixels.to_vec();
    let (want_big, want_small, want_cmyk) = (fresh(&big), fresh(&small), fresh(&cmyk));

    let mut d = Decoder::default();
    assert_eq!(d.decode(&big).unwrap().pixels, want_big);
    assert_eq!(d.decode(&small).unwrap().pixels, want_small);
    assert_eq!(d.decode(&cmyk).unwrap().pixels, want_cmyk);
    let (same, allocs) = allocs_during(|| d.decode(&big).unwrap().pixels == want_big.as_slice());
    assert!(same);
    // The 562,500-byte output is not allocated again; what remains is zune's per-image state.
    assert!(allocs.largest < 500 * 375 * 3 / 2, "{allocs:?}");
    eprintln!("warm 500x375 decode: zune-internal allocations {allocs:?}");
    let (_, allocs) = allocs_during(|| d.decode(&cmyk).map(|_| ()).unwrap());
    assert!(allocs.largest < 200 * 100 * 3, "{allocs:?}");
}

#[test]
#[ignore = "measurement; run in release"]
fn decode_throughput() {
    let n = 100;
    // Noise 24 brings the files to ~77 KB, near the ~81 KB of the calibration photos.
    let files: Vec<Vec<u8>> = (0..n)
        .map(|i| Jpeg::default().encode(&photo(500, 375, 100 + i, 24), 500, 375, ColorType::Rgb))
        .collect();
    let kb = files.iter().map(Vec::len).sum::<usize>() as f64 / n as f64 / 1000.0;
    let rounds = 5;
    // Images per second through `d`, best of the rounds.
    let rate = |d: &mut Decoder| {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            for f in &files {
                std::hint::black_box(d.decode(f).unwrap().pixels[0]);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        n as f64 / best
    };
    let mut d = decoder(JpegBackend::Zune);
    let before = rate(&mut d);
    let turbo = if JpegBackend::Turbo.is_available() {
        format!("{:.0}", rate(&mut decoder(JpegBackend::Turbo)))
    } else {
        "(not built)".into()
    };
    let mut bare = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        for f in &files {
            let cursor = zune_jpeg::zune_core::bytestream::ZCursor::new(f);
            std::hint::black_box(zune_jpeg::JpegDecoder::new(cursor).decode().unwrap()[0]);
        }
        bare = bare.min(t.elapsed().as_secs_f64());
    }
    let bare = n as f64 / bare;
    let pil = crate::support::ref_python().map(|python| {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let p = dir.path().join(format!("{i}.jpg"));
                std::fs::write(&p, f).unwrap();
                p
            })
            .collect();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ref/pil_decode.py");
        let out = Command::new(python)
            .arg(script)
            .arg("--time")
            .arg(rounds.to_string())
            .args(&paths)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    });
    let after = rate(&mut d);
    eprintln!(
        "500x375 q90 4:2:0, {kb:.1} KB avg, one thread, best of {rounds} rounds of {n}: \
         Decoder with zune-jpeg {before:.0} img/s (again after the others: {after:.0}), bare zune-jpeg decode() {bare:.0} img/s, \
         Decoder with libjpeg-turbo {turbo} img/s, PIL open+convert {} img/s",
        pil.unwrap_or_else(|| "(IMG_PYTHON not set)".into())
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged JPEGs against PIL's verdict (issue 12: a corrupt file that PIL refuses came back from
// libjpeg-turbo as decoded, holding the previous image's pixels).

/// The odd fixtures' JPEGs and one photo-like 4:2:0 file, each with its damaged variants.
fn damaged_corpus() -> Vec<(String, Vec<u8>)> {
    let mut bases: Vec<(String, Vec<u8>)> = imgfixtures::odd::all()
        .into_iter()
        .filter(|f| matches!(f.kind, imgfixtures::odd::OddKind::Jpeg(_)))
        .map(|f| (f.name.to_string(), f.bytes))
        .collect();
    let photo = Jpeg::default().encode(&photo(96, 72, 5, 8), 96, 72, ColorType::Rgb);
    bases.push(("photo.jpg".into(), photo));
    let mut out = Vec::new();
    for (i, (name, good)) in bases.iter().enumerate() {
        for v in imgfixtures::corrupt::variants(good, i as u64) {
            out.push((format!("{name}.{}", v.name), v.bytes));
        }
    }
    out
}

#[test]
fn damaged_jpegs_get_pils_verdict_and_never_stale_pixels() {
    let Some(python) = crate::support::ref_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let corpus = damaged_corpus();
    let files: Vec<PathBuf> = corpus
        .iter()
        .map(|(name, bytes)| {
            let path = dir.path().join(format!("{name}.jpg"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let pil = pil_decode(&python, &files);
    let refused = pil.iter().filter(|r| r.is_err()).count();
    // A bright image larger than every base file, decoded just before each damaged one: a decoder that
    // hands back what its buffer held before would hand back this.
    let decoy = Jpeg::default().encode(&vec![250; 128 * 128 * 3], 128, 128, ColorType::Rgb);
    let mut failures = Vec::new();
    for backend in backends() {
        let mut d = decoder(backend);
        let (mut stricter, mut warned) = (0, 0);
        for ((name, bytes), pil) in corpus.iter().zip(&pil) {
            d.decode(&decoy).unwrap();
            match (pil, d.decode_region(bytes, imgloader::decode::whole)) {
                (Err(why), Ok(_)) => {
                    failures.push(format!("{backend}: {name}: decoded, PIL refuses ({why})"))
                }
                (Ok((w, h, rgb)), Ok(r)) => {
                    warned += usize::from(r.warnings > 0);
                    let img = r.image;
                    if (img.width, img.height) != (*w, *h) {
                        failures.push(format!(
                            "{backend}: {name}: {}x{}, PIL {w}x{h}",
                            img.width, img.height
                        ));
                    } else if backend == JpegBackend::Turbo && img.pixels != &rgb[..] {
                        // libjpeg-turbo is PIL's decoder: damaged or not, the pixels are PIL's.
                        failures.push(format!("{backend}: {name}: pixels differ from PIL's"));
                    } else if img.pixels.iter().all(|&v| v == 250) && rgb.iter().any(|&v| v != 250)
                    {
                        failures.push(format!("{backend}: {name}: the previous image's pixels"));
                    }
                }
                (Ok(_), Err(e)) if backend == JpegBackend::Turbo => {
                    // Our header walk may refuse what it does not support; libjpeg itself may not refuse.
                    if matches!(
                        e,
                        DecodeError::Unsupported { .. } | DecodeError::Malformed { .. }
                    ) {
                        stricter += 1;
                    } else {
                        failures.push(format!("{backend}: {name}: refused ({e}), PIL decodes it"));
                    }
                }
                (Ok(_), Err(_)) => stricter += 1,
                (Err(_), Err(_)) => {}
            }
        }
        eprintln!(
            "{backend}: {} damaged files, PIL refuses {refused}; decoded with warnings {warned}; refused although \
             PIL decodes {stricter}",
            corpus.len()
        );
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
