//! `imgtool verify`: decode every image, list odd and bad files by full name, check the counts.

use std::path::PathBuf;
use std::time::Instant;

use clap::ValueEnum;
use imgloader::decode::{self, ColorSpace, DecodeError, Decoder, ImageFormat};
use serde_json::json;

use crate::Labels;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset: tar, tar of tars, flat tar (with --labels), folder, shard folder.
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
    Good {
        bytes: usize,
        odd: Vec<&'static str>,
    },
    Bad {
        bytes: usize,
        kind: &'static str,
        error: String,
    },
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

fn check(state: &mut (Decoder, Vec<u8>), source: &dyn imgloader::Source, i: usize) -> Outcome {
    let (decoder, scratch) = state;
    let bytes = match source.bytes(i, scratch) {
        Ok(b) => b,
        Err(e) => {
            return Outcome::Bad {
                bytes: 0,
                kind: "unreadable",
                error: imgloader::error::chain(&e),
            };
        }
    };
    let len = bytes.len();
    let bad = |e: DecodeError| Outcome::Bad {
        bytes: len,
        kind: bad_kind(&e),
        error: imgloader::error::chain(&e),
    };
    let info = match decode::probe(bytes) {
        Ok(info) => info,
        Err(e) => return bad(e),
    };
    if let Err(e) = decoder.decode(bytes) {
        return bad(e);
    }
    let name = source.name(i);
    let mut odd = Vec::new();
    match info.format {
        ImageFormat::Png if has_ext(&name, &["jpg", "jpeg"]) => odd.push("png-named-jpeg"),
        ImageFormat::Jpeg if has_ext(&name, &["png"]) => odd.push("jpeg-named-png"),
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
    Outcome::Good { bytes: len, odd }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let (source, _) = crate::open(&args.src, &args.labels, false)?;
    let outcomes = crate::scan::each_sample(&*source, args.threads, "verify", |s, i| {
        check(s, &*source, i)
    })?;
    let secs = start.elapsed().as_secs_f64();

    let (mut odd, mut bad, mut total_bytes) = (Vec::new(), Vec::new(), 0u64);
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            Outcome::Good { bytes, odd: kinds } => {
                total_bytes += *bytes as u64;
                if !kinds.is_empty() {
                    odd.push((source.name(i), kinds.join(",")));
                }
            }
            Outcome::Bad { bytes, kind, error } => {
                total_bytes += *bytes as u64;
                bad.push((source.name(i), *kind, error.clone()));
            }
        }
    }
    let (images, classes) = (source.len(), source.classes().len());
    let expect = args.expect.map(|e| {
        let (counts, want_classes) = e.counts();
        let ok = counts.contains(&images) && classes == want_classes;
        let want = counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" or ");
        (ok, format!("{want} images in {want_classes} classes"))
    });

    if args.json {
        let v = json!({
            "source": args.src.display().to_string(),
            "images": images,
            "classes": classes,
            "bytes": total_bytes,
            "seconds": secs,
            "odd": odd.iter().map(|(name, kind)| json!({"name": name, "kind": kind})).collect::<Vec<_>>(),
            "bad": bad.iter().map(|(name, kind, error)| json!({"name": name, "kind": kind, "error": error})).collect::<Vec<_>>(),
            "expected": expect.as_ref().map(|(ok, want)| json!({"ok": ok, "want": want})),
            "ok": bad.is_empty() && expect.as_ref().is_none_or(|(ok, _)| *ok),
        });
        outln!("{v}");
    } else {
        outln!(
            "{}: decoded {images} images in {classes} classes ({:.1} MB) in {secs:.2}s with {} threads",
            args.src.display(),
            total_bytes as f64 / 1e6,
            args.threads
        );
        if !odd.is_empty() {
            outln!("odd files ({}; they decode):", odd.len());
            for (name, kind) in &odd {
                outln!("  {kind}: {name}");
            }
        }
        if !bad.is_empty() {
            outln!("bad files ({}):", bad.len());
            for (name, kind, error) in &bad {
                outln!("  {kind}: {name}: {error}");
            }
        }
        if let Some((ok, want)) = &expect {
            let verdict = if *ok { "ok" } else { "MISMATCH" };
            outln!(
                "counts: {verdict} (expected {want}, found {images} images in {classes} classes)"
            );
        }
    }
    if !bad.is_empty() {
        anyhow::bail!("{}: {} bad file(s)", args.src.display(), bad.len());
    }
    if let Some((false, want)) = &expect {
        anyhow::bail!(
            "{}: expected {want}, found {images} images in {classes} classes",
            args.src.display()
        );
    }
    Ok(())
}
