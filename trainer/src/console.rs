//! What a run shows while it works: `main.py`'s lines on standard output and, on a terminal, a progress
//! bar per epoch on standard error (rate, ETA, loss, top-1, the share of time spent waiting for data).
//!
//! The lines are the log and never change with the bar: when standard error is not a terminal (a log
//! file, CI, the tests) there is no bar and the output is exactly the lines. When standard output is a
//! terminal too, a line is printed with the bar cleared first ([`ProgressBar::suspend`]), so the two never
//! tear each other. Only the rank that prints (rank 0) draws a bar.
//!
//! [`Verbosity`]: `--quiet` keeps errors (standard error), the epoch summaries (`Epoch: [e] done: …`,
//! ` * Acc@1 …`) and the final summary; `--verbose` adds debug details (the plan, the loaders' settings).

use std::cell::RefCell;
use std::fmt::Display;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much a run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Errors, epoch summaries and the final summary only: no step lines, no bars.
    Quiet,
    /// `main.py`'s output, and a bar on a terminal.
    #[default]
    Normal,
    /// Also debug details.
    Verbose,
}

/// Where one epoch is, for its bar.
#[derive(Debug, Clone, Copy)]
pub struct StepStatus {
    /// Steps done.
    pub step: usize,
    /// Average loss and top-1 (percent) so far.
    pub loss: f64,
    pub top1: f64,
    pub images_per_sec: f64,
    /// Share of the time spent waiting for batches (training only).
    pub data_wait: Option<f64>,
}

/// A run's output: its lines, by kind, and the bar of the epoch under way.
#[derive(Debug)]
pub struct Console {
    verbosity: Verbosity,
    /// Bars are drawn (rank 0, standard error a terminal, not quiet).
    bars: bool,
    /// Standard output is a terminal (lines then go around the bar).
    stdout_tty: bool,
    bar: RefCell<Option<ProgressBar>>,
}

impl Console {
    /// The console of a process; `lead`: it is the one that prints (rank 0, or the only process).
    pub fn new(verbosity: Verbosity, lead: bool) -> Console {
        Console {
            verbosity,
            bars: lead && verbosity != Verbosity::Quiet && std::io::stderr().is_terminal(),
            stdout_tty: std::io::stdout().is_terminal(),
            bar: RefCell::new(None),
        }
    }

    /// Plain lines only, as a library user of [`Trainer`](crate::trainer::Trainer) gets by default.
    pub fn plain() -> Console {
        Console {
            verbosity: Verbosity::Normal,
            bars: false,
            stdout_tty: false,
            bar: RefCell::new(None),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// A line on standard output, around the bar if there is one.
    fn print(&self, line: &dyn Display) {
        match self.bar.borrow().as_ref() {
            Some(bar) if self.stdout_tty => bar.suspend(|| println!("{line}")),
            _ => println!("{line}"),
        }
    }

    /// A progress line (`Epoch: [0][ 1/30] …`, `Test: […]`): not with `--quiet`.
    pub fn step_line(&self, line: impl Display) {
        if self.verbosity != Verbosity::Quiet {
            self.print(&line);
        }
    }

    /// What the run is doing (`=> creating model …`, a bad sample replaced): not with `--quiet`.
    pub fn info(&self, line: impl Display) {
        if self.verbosity != Verbosity::Quiet {
            self.print(&line);
        }
    }

    /// A debug detail, as `=> debug: …`: only with `--verbose`.
    pub fn debug(&self, line: impl Display) {
        if self.verbosity == Verbosity::Verbose {
            self.print(&format_args!("=> debug: {line}"));
        }
    }

    /// An epoch's summary (`Epoch: [e] done: …`, ` * Acc@1 …`): always; ends the epoch's bar first.
    pub fn summary(&self, line: impl Display) {
        self.end_epoch();
        println!("{line}");
    }

    /// Starts the bar of an epoch of `steps` steps (`what`: `train 3` or `val 3`), when bars are drawn.
    pub fn begin_epoch(&self, what: String, steps: usize) {
        if !self.bars {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}, ETA {eta}] {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what);
        bar.enable_steady_tick(Duration::from_millis(500));
        if let Some(old) = self.bar.replace(Some(bar)) {
            old.finish_and_clear();
        }
    }

    /// Moves the bar on: called after every step.
    pub fn step(&self, s: &StepStatus) {
        let bar = self.bar.borrow();
        let Some(bar) = bar.as_ref() else { return };
        let mut msg = format!(
            "{:.0} img/s, loss {:.4}, top-1 {:.2}%",
            s.images_per_sec, s.loss, s.top1
        );
        if let Some(w) = s.data_wait {
            msg += &format!(", data wait {:.0}%", 100.0 * w);
        }
        bar.set_message(msg);
        bar.set_position(s.step as u64);
    }

    /// Removes the epoch's bar, if any.
    pub fn end_epoch(&self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.end_epoch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bar_without_a_terminal_or_when_quiet() {
        // Under the test harness standard error is a pipe or a file, or the test says nothing.
        let c = Console::new(Verbosity::Normal, true);
        c.begin_epoch("train 0".into(), 10);
        assert_eq!(c.bar.borrow().is_some(), std::io::stderr().is_terminal());
        c.end_epoch();
        let q = Console::new(Verbosity::Quiet, true);
        q.begin_epoch("train 0".into(), 10);
        assert!(q.bar.borrow().is_none());
        let other_rank = Console::new(Verbosity::Verbose, false);
        other_rank.begin_epoch("val 0".into(), 10);
        assert!(other_rank.bar.borrow().is_none());
    }
}
