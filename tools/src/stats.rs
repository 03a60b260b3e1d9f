//! `imgtool stats`: class counts, resolution and file-size distributions, from image headers only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use imgloader::decode;
use serde::Serialize;

use crate::Labels;
use crate::escape::Esc;

/// `stats --json`. The distributions of image headers are `null` when no header could be read.
#[derive(Debug, Serialize)]
struct StatsJson<'a> {
    source: String,
    images: usize,
    classes: usize,
    bytes: u64,
    seconds: f64,
    formats: &'a BTreeMap<&'static str, usize>,
    class_counts: Vec<ClassCount<'a>>,
    images_per_class: DistJson,
    unreadable_headers: &'a [String],
    width: Option<DistJson>,
    height: Option<DistJson>,
    shorter_side: Option<DistJson>,
    megapixels: Option<DistJson>,
    file_size_kb: Option<DistJson>,
}

#[derive(Debug, Serialize)]
struct ClassCount<'a> {
    class: &'a str,
    images: u64,
}

#[derive(Debug, Serialize)]
struct DistJson {
    unit: &'static str,
    min: f64,
    p1: f64,
    median: f64,
    mean: f64,
    p99: f64,
    max: f64,
    histogram: Vec<Bucket>,
}

#[derive(Debug, Serialize)]
struct Bucket {
    from: f64,
    to: f64,
    count: usize,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset: tar, tar of tars, flat tar (with --labels, or indexed with them), folder, shard folder.
    src: PathBuf,
    #[command(flatten)]
    labels: Labels,
    /// Worker threads.
    #[arg(long, short = 'j', default_value_t = crate::cores())]
    threads: usize,
    /// Histogram buckets.
    #[arg(long, default_value_t = 10)]
    buckets: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Header facts of one sample; `None` when the header cannot be read.
type Facts = Option<(u32, u32, u64, &'static str)>;

/// Summary of a list of numbers: quantiles and a histogram of equal-width buckets.
struct Dist {
    name: &'static str,
    unit: &'static str,
    sorted: Vec<f64>,
}

impl Dist {
    fn new(name: &'static str, unit: &'static str, mut values: Vec<f64>) -> Dist {
        values.sort_by(f64::total_cmp);
        Dist {
            name,
            unit,
            sorted: values,
        }
    }

    fn quantile(&self, q: f64) -> f64 {
        let n = self.sorted.len();
        self.sorted[((n - 1) as f64 * q).round() as usize]
    }

    /// `(from, to, count)`: `buckets` equal ranges from the minimum to the maximum; the last includes it.
    fn histogram(&self, buckets: usize) -> Vec<(f64, f64, usize)> {
        let (lo, hi) = (self.sorted[0], self.sorted[self.sorted.len() - 1]);
        let buckets = if hi > lo { buckets } else { 1 };
        let width = (hi - lo) / buckets as f64;
        let mut counts = vec![0usize; buckets];
        for &v in &self.sorted {
            let b = if width > 0.0 {
                (((v - lo) / width) as usize).min(buckets - 1)
            } else {
                0
            };
            counts[b] += 1;
        }
        counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| (lo + width * i as f64, lo + width * (i + 1) as f64, c))
            .collect()
    }

    fn json(&self, buckets: usize) -> DistJson {
        DistJson {
            unit: self.unit,
            min: self.sorted[0],
            p1: self.quantile(0.01),
            median: self.quantile(0.5),
            mean: self.mean(),
            p99: self.quantile(0.99),
            max: self.sorted[self.sorted.len() - 1],
            histogram: self
                .histogram(buckets)
                .into_iter()
                .map(|(from, to, count)| Bucket { from, to, count })
                .collect(),
        }
    }

    fn mean(&self) -> f64 {
        self.sorted.iter().sum::<f64>() / self.sorted.len() as f64
    }

    fn print(&self, buckets: usize) -> std::io::Result<()> {
        let mean = self.mean();
        outln!(
            "\n{} ({}): min {}, p1 {}, median {}, mean {}, p99 {}, max {}",
            self.name,
            self.unit,
            num(self.sorted[0]),
            num(self.quantile(0.01)),
            num(self.quantile(0.5)),
            num(mean),
            num(self.quantile(0.99)),
            num(self.sorted[self.sorted.len() - 1]),
        );
        print_histogram(&self.histogram(buckets))
    }
}

/// A number for a text table: integers as such, others with one or two decimals.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_histogram(h: &[(f64, f64, usize)]) -> std::io::Result<()> {
    const BAR: usize = 40;
    let max = h.iter().map(|b| b.2).max().unwrap_or(0).max(1);
    let labels: Vec<String> = h
        .iter()
        .map(|(from, to, _)| format!("{} – {}", num(*from), num(*to)))
        .collect();
    let w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    for ((_, _, count), label) in h.iter().zip(&labels) {
        let len = (count * BAR).div_ceil(max);
        outln!(
            "  {label:>w$} | {:<BAR$} {count}",
            "#".repeat(if *count > 0 { len.max(1) } else { 0 })
        );
    }
    Ok(())
}

/// Everything `stats` reports, before it is printed.
struct Stats {
    classes: Vec<String>,
    per_class: Vec<u64>,
    images: usize,
    seconds: f64,
    formats: BTreeMap<&'static str, usize>,
    unreadable: Vec<String>,
    class_dist: Dist,
    /// width, height, shorter side, megapixels, file size; empty when no header could be read.
    dists: Vec<Dist>,
    total_bytes: u64,
}

fn gather(args: &Args) -> anyhow::Result<Stats> {
    anyhow::ensure!(args.buckets > 0, "invalid --buckets: 0; at least 1");
    let start = Instant::now();
    let (source, _) = crate::open(&args.src, &args.labels, false)?;
    let facts: Vec<Facts> = crate::scan::each_sample(
        &*source,
        args.threads,
        "stats",
        |scratch: &mut Vec<u8>, i| {
            let bytes = source.bytes(i, scratch).ok()?;
            let info = decode::probe(bytes).ok()?;
            let format = match info.format {
                decode::ImageFormat::Jpeg => "JPEG",
                decode::ImageFormat::Png => "PNG",
                _ => "other",
            };
            Some((info.width, info.height, bytes.len() as u64, format))
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();

    let classes = source.classes().to_vec();
    let mut per_class = vec![0u64; classes.len()];
    for i in 0..source.len() {
        per_class[source.label(i) as usize] += 1;
    }
    let unreadable: Vec<String> = facts
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_none())
        .map(|(i, _)| source.name(i))
        .collect();
    let ok: Vec<(u32, u32, u64, &str)> = facts.iter().flatten().copied().collect();
    let mut formats: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &ok {
        *formats.entry(f.3).or_default() += 1;
    }
    let class_dist = Dist::new(
        "images per class",
        "images",
        per_class.iter().map(|&c| c as f64).collect(),
    );
    let dists = if ok.is_empty() {
        Vec::new()
    } else {
        vec![
            Dist::new("width", "px", ok.iter().map(|f| f64::from(f.0)).collect()),
            Dist::new("height", "px", ok.iter().map(|f| f64::from(f.1)).collect()),
            Dist::new(
                "shorter side",
                "px",
                ok.iter().map(|f| f64::from(f.0.min(f.1))).collect(),
            ),
            Dist::new(
                "pixels",
                "megapixels",
                ok.iter()
                    .map(|f| f64::from(f.0) * f64::from(f.1) / 1e6)
                    .collect(),
            ),
            Dist::new(
                "file size",
                "KB",
                ok.iter().map(|f| f.2 as f64 / 1e3).collect(),
            ),
        ]
    };
    Ok(Stats {
        images: source.len(),
        total_bytes: ok.iter().map(|f| f.2).sum(),
        classes,
        per_class,
        seconds,
        formats,
        unreadable,
        class_dist,
        dists,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Stats {
        classes,
        per_class,
        images,
        seconds: secs,
        formats,
        unreadable,
        class_dist,
        dists,
        total_bytes,
    } = crate::json_on_failure(args.json, &args.src, || gather(&args))?;

    if args.json {
        let dist = |i: usize| dists.get(i).map(|d: &Dist| d.json(args.buckets));
        let v = StatsJson {
            source: args.src.display().to_string(),
            images,
            classes: classes.len(),
            bytes: total_bytes,
            seconds: secs,
            formats: &formats,
            class_counts: classes
                .iter()
                .zip(&per_class)
                .map(|(class, &images)| ClassCount { class, images })
                .collect(),
            images_per_class: class_dist.json(args.buckets),
            unreadable_headers: &unreadable,
            width: dist(0),
            height: dist(1),
            shorter_side: dist(2),
            megapixels: dist(3),
            file_size_kb: dist(4),
        };
        outln!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let formats: Vec<String> = formats.iter().map(|(f, n)| format!("{n} {f}")).collect();
    outln!(
        "{}: {images} images in {} classes, {:.1} MB ({}), headers read in {secs:.2}s",
        Esc(args.src.display()),
        classes.len(),
        total_bytes as f64 / 1e6,
        formats.join(", "),
    );
    let (min_c, max_c) = (
        per_class.iter().enumerate().min_by_key(|p| p.1),
        per_class.iter().enumerate().max_by_key(|p| p.1),
    );
    if let (Some((a, na)), Some((b, nb))) = (min_c, max_c) {
        outln!(
            "smallest class: {} ({na} images); largest: {} ({nb} images)",
            Esc(&classes[a]),
            Esc(&classes[b])
        );
    }
    class_dist.print(args.buckets)?;
    for d in &dists {
        d.print(args.buckets)?;
    }
    if !unreadable.is_empty() {
        outln!("\nunreadable headers ({}):", unreadable.len());
        for name in &unreadable {
            outln!("  {}", Esc(name));
        }
    }
    Ok(())
}
