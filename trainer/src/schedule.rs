//! Learning-rate schedules, as pure functions of the position in training so that a resumed run follows
//! the same curve as an uninterrupted one.

use std::f64::consts::PI;

/// The shape of the learning-rate curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `main.py`'s `StepLR`: multiply by `gamma` every `step_size` epochs, constant within an epoch.
    Step { step_size: u64, gamma: f64 },
    /// Half a cosine from the base rate down to 0 at the end of the last epoch, updated every step.
    Cosine,
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule::Step {
            step_size: 30,
            gamma: 0.1,
        }
    }
}

/// A schedule over a whole run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The rate the curve starts from (after warm-up).
    pub base_lr: f64,
    /// The curve.
    pub kind: LrSchedule,
    /// Epochs of linear warm-up from `base_lr / warmup_steps` to `base_lr`, updated every step; 0: none.
    pub warmup_epochs: f64,
    /// Total epochs of the run (the end of the cosine).
    pub epochs: u64,
}

impl Schedule {
    /// The learning rate of step `step` (0-based) of epoch `epoch`, with `steps_per_epoch` steps an epoch.
    pub fn lr(&self, epoch: u64, step: usize, steps_per_epoch: usize) -> f64 {
        let steps_per_epoch = steps_per_epoch.max(1) as f64;
        // Progress in epochs at the end of this step: a warm-up's first step is already above 0.
        let done = epoch as f64 + (step as f64 + 1.0) / steps_per_epoch;
        if self.warmup_epochs > 0.0 && done <= self.warmup_epochs {
            return self.base_lr * done / self.warmup_epochs;
        }
        match self.kind {
            LrSchedule::Step { step_size, gamma } => {
                self.base_lr * gamma.powi((epoch / step_size.max(1)).min(i32::MAX as u64) as i32)
            }
            LrSchedule::Cosine => {
                let start = epoch as f64 + step as f64 / steps_per_epoch;
                let span = (self.epochs as f64 - self.warmup_epochs).max(f64::MIN_POSITIVE);
                let t = ((start - self.warmup_epochs) / span).clamp(0.0, 1.0);
                0.5 * self.base_lr * (1.0 + (PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lr_is_main_py_step_lr() {
        let s = Schedule {
            base_lr: 0.1,
            kind: LrSchedule::default(),
            warmup_epochs: 0.0,
            epochs: 90,
        };
        assert_eq!(s.lr(0, 0, 100), 0.1);
        assert_eq!(s.lr(29, 99, 100), 0.1);
        assert!((s.lr(30, 0, 100) - 0.01).abs() < 1e-15);
        assert!((s.lr(89, 5, 100) - 1e-3).abs() < 1e-15);
    }

    #[test]
    fn cosine_warms_up_then_decays_to_zero() {
        let s = Schedule {
            base_lr: 0.4,
            kind: LrSchedule::Cosine,
            warmup_epochs: 1.0,
            epochs: 5,
        };
        assert!((s.lr(0, 0, 4) - 0.1).abs() < 1e-12);
        assert!((s.lr(0, 3, 4) - 0.4).abs() < 1e-12);
        assert!((s.lr(1, 0, 4) - 0.4).abs() < 1e-12);
        assert!((s.lr(3, 0, 4) - 0.2).abs() < 1e-12);
        let last = s.lr(4, 3, 4);
        assert!(last > 0.0 && last < 0.01, "{last}");
        // Monotone after warm-up.
        let mut prev = f64::INFINITY;
        for e in 1..5 {
            for k in 0..4 {
                let lr = s.lr(e, k, 4);
                assert!(lr <= prev);
                prev = lr;
            }
        }
    }
}
