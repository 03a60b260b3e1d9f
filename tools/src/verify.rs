//! `imgtool verify`: decode every image (on the loader's [`DecodePool`]), list odd and bad files by full
//! name, check the counts.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use clap::ValueEnum;
use imgloader::decode::{self, ColorSpace, DecodeError, ImageFormat};
use imgloader::{DecodeOptions, DecodePool, Decoded};
use serde::Serialize;

use crate::Labels;
use crate::escape::Esc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset: tar, tar of tars, flat tar (with --labels, or indexed with them), folder, shard folder.
    src: PathBuf,
    #[command(flatten)]
    labels: Labels,
    /// Check the sample and class counts of a known dataset.
    #[arg(long, value_enum)]
    expect: Option<Expect>,
    /// Worker threads.
    #[arg(long, short = 'j', default_value_t = crate::cores())]
    threads: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Known datasets' counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Expect {
    /// ILSVRC2012 train (1,281,167 images) or val (50,000), 1000 classes.
    Imagenet,
    /// ILSVRC2012 train: 1,281,167 images, 1000 classes.
    ImagenetTrain,
    /// ILSVRC2012 val: 50,000 images, 1000 classes.
    ImagenetVal,
}

impl Expect {
    /// (allowed image counts, classes)
    fn counts(self) -> (&'static [usize], usize) {
        match self {
            Expect::Imagenet => (&[1_281_167, 50_000], 1000),
            Expect::ImagenetTrain => (&[1_281_167], 1000),
            Expect::ImagenetVal => (&[50_000], 1000),
        }
    }
}

/// What one sample turned out to be.
enum Outcome {
    Good { odd: Vec<&'static str> },
    Bad { kind: &'static str, error: String },
}

fn bad_kind(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Empty => "empty",
        DecodeError::UnknownFormat { .. } => "not-an-image",
        DecodeError::UnsupportedFormat { .. } => "unsupported-format",
        DecodeError::TooLarge { .. } => "oversized",
        DecodeError::Truncated { .. } => "truncated",
        DecodeError::Unsupported { .. } => "unsupported-variant",
        _ => "corrupt",
    }
}

fn has_ext(name: &str, exts: &[&str]) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, e)| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Classifies one sample from the decode pool's outcome: decoded whole (so damage anywhere in the file
/// is seen), with the decoder's warnings and the file's header facts.
fn check(name: &str, outcome: Result<Decoded<'_>, &imgloader::Error>) -> Outcome {
    let bad = |e: &DecodeError| Outcome::Bad {
        kind: bad_kind(e),
        error: imgloader::error::chain(e),
    };
    let decoded = match outcome {
        Ok(d) => d,
        Err(imgloader::Error::Decode { source, .. }) => return bad(source),
        Err(e) => {
            return Outcome::Bad {
                kind: "unreadable",
                error: imgloader::error::chain(e),
            };
        }
    };
    let info = match decode::probe(decoded.encoded) {
        Ok(info) => info,
        Err(e) => return bad(&e),
    };
    let mut odd = Vec::new();
    if decoded.warnings > 0 {
        // libjpeg worked around damaged data (as PIL does: the file decodes there too, with grey or
        // smeared blocks); worth a look, not a failure.
        odd.push("damaged-data");
    }
    match info.format {
        ImageFormat::Png if has_ext(name, &["jpg", "jpeg"]) => odd.push("png-named-jpeg"),
        ImageFormat::Jpeg if has_ext(name, &["png"]) => odd.push("jpeg-named-png"),
        _ => {}
    }
    match info.color {
        ColorSpace::Cmyk => odd.push("cmyk"),
        ColorSpace::Ycck => odd.push("ycck"),
        ColorSpace::Gray | ColorSpace::GrayAlpha => odd.push("grayscale"),
        ColorSpace::Rgba => odd.push("alpha"),
        ColorSpace::Palette => odd.push("palette"),
        _ => {}
    }
    if info.bit_depth == 16 {
        odd.push("16-bit");
    }
    Outcome::Good { odd }
}

/// What `verify` found: printed as text, or as JSON with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    source: String,
    images: usize,
    classes: usize,
    bytes: u64,
    seconds: f64,
    /// Files that decode but are unusual.
    odd: Vec<OddFile>,
    bad: Vec<BadFile>,
    expected: Option<Expected>,
    /// No bad file, and the counts are as expected.
    ok: bool,
}

#[derive(Debug, Serialize)]
struct OddFile {
    name: String,
    /// Comma-separated: `cmyk`, `grayscale`, `png-named-jpeg`, …
    kind: String,
}

#[derive(Debug, Serialize)]
struct BadFile {
    name: String,
    kind: &'static str,
    error: String,
}

#[derive(Debug, Serialize)]
struct Expected {
    ok: bool,
    want: String,
}

fn scan(args: &Args) -> anyhow::Result<Report> {
    let start = Instant::now();
    let (source, _) = crate::open(&args.src, &args.labels, false)?;
    let pool = DecodePool::new(source.clone(), args.threads, DecodeOptions::default())?;
    let n = source.len();
    let slots: Vec<OnceLock<Outcome>> = (0..n).map(|_| OnceLock::new()).collect();
    let mut bytes = 0u64;
    crate::scan::in_chunks(n, args.threads, "verify", |range| {
        let indices: Vec<usize> = range.collect();
        let summary = pool.visit(&indices, |i, outcome| {
            let _ = slots[i].set(check(&source.name(i), outcome));
        })?;
        bytes += summary.encoded_bytes;
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();

    let (mut odd, mut bad) = (Vec::new(), Vec::new());
    for (i, slot) in slots.into_iter().enumerate() {
        match slot.into_inner().expect("the pool visits every index") {
            Outcome::Good { odd: kinds } => {
                if !kinds.is_empty() {
                    odd.push(OddFile {
                        name: source.name(i),
                        kind: kinds.join(","),
                    });
                }
            }
            Outcome::Bad { kind, error } => bad.push(BadFile {
                name: source.name(i),
                kind,
                error,
            }),
        }
    }
    let (images, classes) = (source.len(), source.classes().len());
    let expected = args.expect.map(|e| {
        let (counts, want_classes) = e.counts();
        let want = counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" or ");
        Expected {
            ok: counts.contains(&images) && classes == want_classes,
            want: format!("{want} images in {want_classes} classes"),
        }
    });
    Ok(Report {
        source: args.src.display().to_string(),
        images,
        classes,
        bytes,
        seconds,
        ok: bad.is_empty() && expected.as_ref().is_none_or(|e| e.ok),
        odd,
        bad,
        expected,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let r = crate::json_on_failure(args.json, &args.src, || scan(&args))?;
    let src = Esc(args.src.display());
    if args.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!(
            "{src}: decoded {} images in {} classes ({:.1} MB) in {:.2}s with {} threads",
            r.images,
            r.classes,
            r.bytes as f64 / 1e6,
            r.seconds,
            args.threads
        );
        if !r.odd.is_empty() {
            outln!("odd files ({}; they decode):", r.odd.len());
            for f in &r.odd {
                outln!("  {}: {}", f.kind, Esc(&f.name));
            }
        }
        if !r.bad.is_empty() {
            outln!("bad files ({}):", r.bad.len());
            for f in &r.bad {
                outln!("  {}: {}: {}", f.kind, Esc(&f.name), Esc(&f.error));
            }
        }
        if let Some(e) = &r.expected {
            let verdict = if e.ok { "ok" } else { "MISMATCH" };
            outln!(
                "counts: {verdict} (expected {}, found {} images in {} classes)",
                e.want,
                r.images,
                r.classes
            );
        }
    }
    // Error messages are escaped once, where main prints them.
    let src = args.src.display();
    if !r.bad.is_empty() {
        anyhow::bail!("{src}: {} bad file(s)", r.bad.len());
    }
    if let Some(e) = r.expected.as_ref().filter(|e| !e.ok) {
        anyhow::bail!(
            "{src}: expected {}, found {} images in {} classes",
            e.want,
            r.images,
            r.classes
        );
    }
    Ok(())
}
