//! Progress lines in the format of pytorch/examples' `main.py` (`AverageMeter`, `ProgressMeter`), so logs
//! and the scripts that parse them carry over.

use std::fmt::Write as _;

/// How a meter's value is printed, as `main.py`'s format specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    /// `:6.3f`
    F6_3,
    /// `:6.2f`
    F6_2,
    /// `:.4e` (Python's exponent style: `2.3026e+00`)
    E4,
}

/// Running value and weighted average of one quantity.
#[derive(Debug, Clone)]
pub struct AverageMeter {
    name: &'static str,
    fmt: Fmt,
    /// The last value.
    pub val: f64,
    /// The sum of values times their weights.
    pub sum: f64,
    /// The total weight.
    pub count: f64,
}

impl AverageMeter {
    /// A meter named `name` printed with `fmt`.
    pub fn new(name: &'static str, fmt: Fmt) -> Self {
        AverageMeter {
            name,
            fmt,
            val: 0.0,
            sum: 0.0,
            count: 0.0,
        }
    }

    /// Records `val` with weight `n` (e.g. the batch size).
    pub fn update(&mut self, val: f64, n: f64) {
        self.val = val;
        self.sum += val * n;
        self.count += n;
    }

    /// The weighted average (0 before any update).
    pub fn avg(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for AverageMeter {
    /// `name val (avg)`, like `AverageMeter.__str__`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.name,
            format_value(self.val, self.fmt),
            format_value(self.avg(), self.fmt)
        )
    }
}

/// Formats like Python's format spec `fmt`.
pub fn format_value(v: f64, fmt: Fmt) -> String {
    match fmt {
        Fmt::F6_3 => format!("{v:6.3}"),
        Fmt::F6_2 => format!("{v:6.2}"),
        Fmt::E4 => python_exp(v, 4),
    }
}

/// Python's `{:.Ne}`: mantissa, `e`, sign, at least two exponent digits (`1.2346e-05`, `inf`, `nan`).
pub fn python_exp(v: f64, digits: usize) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let s = format!("{v:.digits$e}");
    let (mantissa, exp) = s
        .split_once('e')
        .expect("Rust's {:e} always has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// `[  k/total]` with `k` right-aligned to the width of `total`, like `ProgressMeter._get_batch_fmtstr`.
pub fn batch_counter(k: usize, total: usize) -> String {
    let width = total.to_string().len();
    format!("[{k:>width$}/{total}]")
}

/// One progress line: `prefix[  k/total]\tmeter\tmeter…`, like `ProgressMeter.display`.
pub fn progress_line(prefix: &str, k: usize, total: usize, meters: &[&AverageMeter]) -> String {
    let mut line = format!("{prefix}{}", batch_counter(k, total));
    for m in meters {
        let _ = write!(line, "\t{m}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python() {
        assert_eq!(python_exp(2.345678, 4), "2.3457e+00");
        assert_eq!(python_exp(0.000012345678, 4), "1.2346e-05");
        assert_eq!(python_exp(123456.0, 4), "1.2346e+05");
        assert_eq!(python_exp(0.0, 4), "0.0000e+00");
        assert_eq!(python_exp(f64::NAN, 4), "nan");
        assert_eq!(format_value(0.5, Fmt::F6_3), " 0.500");
        assert_eq!(format_value(100.0, Fmt::F6_2), "100.00");
        assert_eq!(batch_counter(1, 5005), "[   1/5005]");
        let mut loss = AverageMeter::new("Loss", Fmt::E4);
        loss.update(2.0, 2.0);
        loss.update(4.0, 2.0);
        assert_eq!(loss.to_string(), "Loss 4.0000e+00 (3.0000e+00)");
        assert_eq!(
            progress_line("Epoch: [0]", 11, 20, &[&loss]),
            "Epoch: [0][11/20]\tLoss 4.0000e+00 (3.0000e+00)"
        );
    }
}
