//! `imgtool plot`: charts of training runs, from the files `imgtrain` writes into its output folder.
//!
//! A run folder is read from `metrics.jsonl` (its `epoch` records), or, without one, from `summary.csv`
//! (columns found by name, so timm's `summary.csv` works too: `epoch`, `train_loss`, `eval_loss`,
//! `eval_top1`, `eval_top5`, `lr`, and our `train_top1`, `train_top5`, `images_per_sec`). A last line
//! without its newline is one a crash cut short, and is skipped; any other line that does not parse is an
//! error naming the file and the line.
//!
//! The chart has five panels over the epochs — loss, top-1, top-5, learning rate, training images/s —
//! and a legend panel: one colour per run (named after its folder), validation solid, training dashed.
//! Text is drawn with DejaVu Sans compiled into the binary (the `dejavu` crate through plotters'
//! `ab_glyph` feature), so no system font is needed; SVG files name `sans-serif` and the viewer draws it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use serde::Deserialize;

/// The numbers of one epoch of a run; `None` where the run's file does not have them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochPoint {
    pub epoch: u64,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub train_top1: Option<f64>,
    pub val_top1: Option<f64>,
    pub train_top5: Option<f64>,
    pub val_top5: Option<f64>,
    pub lr: Option<f64>,
    pub images_per_sec: Option<f64>,
}

/// One run, as read from its folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The folder's name: the run's name in the legend.
    pub name: String,
    /// The file read.
    pub file: PathBuf,
    /// In epoch order, one per epoch (a later record of the same epoch wins).
    pub epochs: Vec<EpochPoint>,
}

/// An `epoch` record of `metrics.jsonl`: the fields the chart needs.
#[derive(Debug, Deserialize)]
struct EpochLine {
    epoch: u64,
    train_loss: Option<f64>,
    val_loss: Option<f64>,
    train_top1: Option<f64>,
    val_top1: Option<f64>,
    train_top5: Option<f64>,
    val_top5: Option<f64>,
    lr: Option<f64>,
    images_per_sec: Option<f64>,
}

/// The complete lines of `text` with their 1-based numbers (a last line without its newline was cut
/// short by a crash and is left out).
fn complete_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
}

fn read_jsonl(path: &Path, text: &str) -> anyhow::Result<Vec<EpochPoint>> {
    let mut epochs = Vec::new();
    for (n, line) in complete_lines(text) {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{n}: not a JSON line", path.display()))?;
        let kind = value.get("kind").and_then(|k| k.as_str()).ok_or_else(|| {
            anyhow!(
                "{}:{n}: not a metrics record (no \"kind\" field)",
                path.display()
            )
        })?;
        if kind != "epoch" {
            continue;
        }
        let e = EpochLine::deserialize(&value)
            .with_context(|| format!("{}:{n}: malformed epoch record", path.display()))?;
        epochs.push(EpochPoint {
            epoch: e.epoch,
            train_loss: e.train_loss,
            val_loss: e.val_loss,
            train_top1: e.train_top1,
            val_top1: e.val_top1,
            train_top5: e.train_top5,
            val_top5: e.val_top5,
            lr: e.lr,
            images_per_sec: e.images_per_sec,
        });
    }
    Ok(epochs)
}

fn read_csv(path: &Path, text: &str) -> anyhow::Result<Vec<EpochPoint>> {
    let mut lines = complete_lines(text);
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let epoch_col = col("epoch").ok_or_else(|| {
        anyhow!(
            "{}:1: the header has no \"epoch\" column: {header}",
            path.display()
        )
    })?;
    let mut epochs = Vec::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            bail!(
                "{}:{n}: {} fields where the header has {}",
                path.display(),
                fields.len(),
                columns.len()
            );
        }
        let num = |name: &str| -> anyhow::Result<Option<f64>> {
            let Some(i) = col(name) else { return Ok(None) };
            fields[i].parse::<f64>().map(Some).with_context(|| {
                format!(
                    "{}:{n}: {name} {:?} is not a number",
                    path.display(),
                    fields[i]
                )
            })
        };
        let epoch = fields[epoch_col].parse::<u64>().with_context(|| {
            format!(
                "{}:{n}: epoch {:?} is not a whole number",
                path.display(),
                fields[epoch_col]
            )
        })?;
        epochs.push(EpochPoint {
            epoch,
            train_loss: num("train_loss")?,
            val_loss: num("eval_loss")?,
            train_top1: num("train_top1")?,
            val_top1: num("eval_top1")?,
            train_top5: num("train_top5")?,
            val_top5: num("eval_top5")?,
            lr: num("lr")?,
            images_per_sec: num("images_per_sec")?,
        });
    }
    Ok(epochs)
}

impl Run {
    /// Reads the run in `dir`: `metrics.jsonl`, else `summary.csv`.
    pub fn read(dir: &Path) -> anyhow::Result<Run> {
        if !dir.is_dir() {
            bail!("run folder {}: no such folder", dir.display());
        }
        let jsonl = dir.join("metrics.jsonl");
        let csv = dir.join("summary.csv");
        let (file, is_jsonl) = if jsonl.is_file() {
            (jsonl, true)
        } else if csv.is_file() {
            (csv, false)
        } else {
            bail!(
                "run folder {}: no metrics.jsonl or summary.csv (imgtrain writes them into its \
                 --output_dir)",
                dir.display()
            );
        };
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let points = if is_jsonl {
            read_jsonl(&file, &text)?
        } else {
            read_csv(&file, &text)?
        };
        if points.is_empty() {
            bail!(
                "{}: no epoch in it yet (a run writes its first epoch record after its first \
                 validation)",
                file.display()
            );
        }
        let by_epoch: BTreeMap<u64, EpochPoint> =
            points.into_iter().map(|p| (p.epoch, p)).collect();
        let name = std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Run {
            name,
            file,
            epochs: by_epoch.into_values().collect(),
        })
    }
}

/// The chart's size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Default for Size {
    fn default() -> Self {
        Size {
            width: 1500,
            height: 900,
        }
    }
}

/// The chart's font family, registered once with DejaVu Sans.
const FONT: &str = "sans-serif";

fn register_fonts() -> anyhow::Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if !ok {
        bail!("the bundled DejaVu Sans font could not be loaded");
    }
    Ok(())
}

/// matplotlib's "tab10" colours: told apart at a glance, also in print.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// How a panel's y axis is scaled.
#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Kept within 0-100.
    Percent,
    /// Logarithmic when the values are positive and span more than 20x (a loss that starts huge would
    /// flatten the rest of the curve), else linear.
    Auto,
}

/// A panel: its title and, per run, the validation (solid) and training (dashed) values.
struct Panel {
    title: &'static str,
    scale: Scale,
    val: fn(&EpochPoint) -> Option<f64>,
    train: Option<fn(&EpochPoint) -> Option<f64>>,
}

const PANELS: [Panel; 5] = [
    Panel {
        title: "Loss",
        scale: Scale::Auto,
        val: |p| p.val_loss,
        train: Some(|p| p.train_loss),
    },
    Panel {
        title: "Top-1 accuracy (%)",
        scale: Scale::Percent,
        val: |p| p.val_top1,
        train: Some(|p| p.train_top1),
    },
    Panel {
        title: "Top-5 accuracy (%)",
        scale: Scale::Percent,
        val: |p| p.val_top5,
        train: Some(|p| p.train_top5),
    },
    Panel {
        title: "Learning rate",
        scale: Scale::Linear,
        val: |p| p.lr,
        train: None,
    },
    Panel {
        title: "Training images/s",
        scale: Scale::Linear,
        val: |p| p.images_per_sec,
        train: None,
    },
];

type Series = Vec<(f64, f64)>;

fn series(run: &Run, get: fn(&EpochPoint) -> Option<f64>) -> Series {
    run.epochs
        .iter()
        .filter_map(|p| {
            get(p)
                .filter(|v| v.is_finite())
                .map(|v| (p.epoch as f64, v))
        })
        .collect()
}

/// `lo..hi` with some room around the values, never empty.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0..1.0;
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = (hi.abs() * 0.1).max(1e-3);
        return (lo - pad)..(hi + pad);
    }
    (lo - span * 0.06)..(hi + span * 0.06)
}

/// A tick label: few significant digits, and exponent notation for small or large numbers.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    runs: &[(Run, Series, Series)],
    x: &std::ops::Range<f64>,
) -> DrawResult<DB> {
    let values = runs
        .iter()
        .flat_map(|(_, v, t)| v.iter().chain(t.iter()).map(|p| p.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let y = padded(lo, hi);
    match panel.scale {
        Scale::Auto if lo > 0.0 && hi / lo > 20.0 => {
            let y = (lo / 1.3)..(hi * 1.3);
            let title = format!("{} (log scale)", panel.title);
            draw_chart(area, &title, runs, x, y.log_scale(), lo > hi)
        }
        Scale::Percent => {
            let y = y.start.max(0.0)..y.end.min(100.0);
            let y = if y.start < y.end { y } else { 0.0..100.0 };
            draw_chart(area, panel.title, runs, x, y, lo > hi)
        }
        _ => draw_chart(area, panel.title, runs, x, y, lo > hi),
    }
}

fn draw_chart<DB, Y>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    runs: &[(Run, Series, Series)],
    x: &std::ops::Range<f64>,
    y: Y,
    empty: bool,
) -> DrawResult<DB>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22).into_font().style(FontStyle::Bold))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), y)?;
    let epochs = (x.end - x.start).round().max(1.0) as usize;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(epochs.min(10) + 1)
        .y_labels(6)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if empty {
        // Nothing to draw: say so in the panel rather than leave it blank.
        let (w, h) = area.dim_in_pixel();
        area.draw_text(
            "no data",
            &(FONT, 18).into_font().color(&RGBColor(120, 120, 120)),
            (w as i32 / 2 - 30, h as i32 / 2),
        )?;
        return Ok(());
    }
    for (i, (_, val, train)) in runs.iter().enumerate() {
        let c = colour(i);
        chart.draw_series(LineSeries::new(val.iter().copied(), c.stroke_width(3)))?;
        chart.draw_series(val.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        if !train.is_empty() {
            chart.draw_series(DashedLineSeries::new(
                train.iter().copied(),
                10,
                6,
                c.stroke_width(2),
            ))?;
            chart.draw_series(train.iter().map(|&p| Circle::new(p, 3, c.stroke_width(2))))?;
        }
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[Run]) -> DrawResult<DB> {
    let title = (FONT, 22).into_font().style(FontStyle::Bold).color(&BLACK);
    let text = (FONT, 17).into_font().color(&BLACK);
    let note = (FONT, 15).into_font().color(&RGBColor(90, 90, 90));
    area.draw_text("Runs", &title, (30, 20))?;
    let mut y = 62;
    for (i, run) in runs.iter().enumerate() {
        let c = colour(i);
        area.draw(&PathElement::new(
            vec![(30, y + 9), (70, y + 9)],
            c.stroke_width(4),
        ))?;
        let last = run.epochs.last().expect("runs have epochs");
        let top1 = last
            .val_top1
            .map_or(String::new(), |t| format!(", top-1 {t:.2}%"));
        let n = run.epochs.len();
        let label = format!(
            "{} ({n} epoch{}{top1})",
            run.name,
            if n == 1 { "" } else { "s" }
        );
        area.draw_text(&label, &text, (82, y))?;
        y += 30;
        if y > area.dim_in_pixel().1 as i32 - 90 {
            break;
        }
    }
    let y = y + 14;
    let grey = RGBColor(90, 90, 90);
    area.draw(&PathElement::new(
        vec![(30, y + 9), (70, y + 9)],
        grey.stroke_width(3),
    ))?;
    area.draw_text("validation (or the only series)", &note, (82, y))?;
    let dashes: Vec<(i32, i32)> = vec![(30, y + 39), (42, y + 39)];
    area.draw(&PathElement::new(dashes, grey.stroke_width(2)))?;
    area.draw(&PathElement::new(
        vec![(50, y + 39), (62, y + 39)],
        grey.stroke_width(2),
    ))?;
    area.draw_text("training", &note, (82, y + 30))?;
    Ok(())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[Run]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let lo = runs
        .iter()
        .flat_map(|r| r.epochs.first())
        .map(|p| p.epoch)
        .min()
        .unwrap_or(0);
    let hi = runs
        .iter()
        .flat_map(|r| r.epochs.last())
        .map(|p| p.epoch)
        .max()
        .unwrap_or(0);
    let x = (lo as f64 - 0.3)..(hi as f64 + 0.3).max(lo as f64 + 1.0);
    let areas = root.split_evenly((2, 3));
    for (panel, area) in PANELS.iter().zip(&areas) {
        let data: Vec<(Run, Series, Series)> = runs
            .iter()
            .map(|r| {
                let train = panel.train.map_or_else(Vec::new, |t| series(r, t));
                (r.clone(), series(r, panel.val), train)
            })
            .collect();
        draw_panel(area, panel, &data, &x)?;
    }
    draw_legend(&areas[5], runs)?;
    root.present()
}

/// Draws `runs` into `out`: PNG or SVG after its extension.
pub fn render(runs: &[Run], out: &Path, size: Size) -> anyhow::Result<()> {
    if runs.is_empty() {
        bail!("no run to plot");
    }
    register_fonts()?;
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let dims = (size.width, size.height);
    let failed = |e: String| anyhow!("drawing {}: {e}", out.display());
    let bytes = match ext.as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            draw(
                SVGBackend::with_string(&mut svg, dims).into_drawing_area(),
                runs,
            )
            .map_err(|e| failed(e.to_string()))?;
            svg.into_bytes()
        }
        Some("png") => {
            let mut rgb = vec![0u8; size.width as usize * size.height as usize * 3];
            draw(
                BitMapBackend::with_buffer(&mut rgb, dims).into_drawing_area(),
                runs,
            )
            .map_err(|e| failed(e.to_string()))?;
            encode_png(&rgb, dims).map_err(|e| failed(e.to_string()))?
        }
        _ => bail!(
            "--out {}: name a .png or .svg file (the extension picks the format)",
            out.display()
        ),
    };
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// `imgtool plot`: reads every run folder (all of them, before drawing) and draws them on one chart.
pub fn plot(dirs: &[PathBuf], out: &Path, size: Size) -> anyhow::Result<Vec<Run>> {
    let runs = dirs
        .iter()
        .map(|d| Run::read(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    render(&runs, out, size)?;
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_skipped_and_lines_are_counted_from_1() {
        let lines: Vec<_> = complete_lines("a\n\nb\nc").collect();
        assert_eq!(lines, vec![(1, "a"), (3, "b")]);
        assert_eq!(tick(0.1), "0.1");
        assert_eq!(tick(2.5e-5), "2.5e-5");
        assert_eq!(tick(1234.0), "1234");
        assert_eq!(padded(1.0, 1.0), 0.9..1.1);
    }
}
