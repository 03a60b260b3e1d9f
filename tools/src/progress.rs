//! Progress on stderr: an indicatif bar with ETA on a terminal, a plain line every few seconds otherwise
//! (logs and CI keep a readable record instead of carriage returns).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: u64,
    start: Instant,
    bar: Option<ProgressBar>,
    /// (when the last plain line was printed, position at the start of the timing window)
    plain: Mutex<(Instant, u64)>,
}

impl Progress {
    /// Progress of the task `what` (e.g. "verify") over `total` images.
    pub fn new(what: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}, {per_sec}]",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        let now = Instant::now();
        Progress {
            what,
            total,
            start: now,
            bar,
            plain: Mutex::new((now, 0)),
        }
    }

    /// Items done so far (`resumed` of them were done before this run started: not counted in the rate).
    pub fn set(&self, done: u64, resumed: u64) {
        if let Some(bar) = &self.bar {
            let jump = bar.position() == 0 && resumed > 0;
            bar.set_position(done);
            if jump {
                // Work done by an earlier run is not this run's speed.
                bar.reset_eta();
            }
            return;
        }
        let mut last = self.plain.lock().unwrap_or_else(|p| p.into_inner());
        if last.0.elapsed() < PLAIN_EVERY || done >= self.total {
            return;
        }
        last.0 = Instant::now();
        let secs = self.start.elapsed().as_secs_f64();
        let rate = done.saturating_sub(resumed) as f64 / secs.max(1e-9);
        let eta = if rate > 0.0 {
            format!("{:.0}s", (self.total - done) as f64 / rate)
        } else {
            "?".into()
        };
        eprintln!(
            "{}: {done}/{} images ({:.0}%), {rate:.0}/s, ETA {eta}",
            self.what,
            self.total,
            done as f64 * 100.0 / self.total.max(1) as f64,
        );
    }

    /// Removes the bar (the caller prints the summary).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
