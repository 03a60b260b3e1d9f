//! Automatic mixed precision: autocast on CUDA in bf16 or fp16, and the dynamic loss scaler fp16 needs.
//!
//! tch's `autocast` switches CUDA autocast on and off but cannot choose its dtype, which libtorch keeps per
//! device type and defaults to fp16. This module calls libtorch's own `at::autocast` functions through
//! the trainer's C++ bridge ([`crate::bridge`]): [`set_cuda_autocast_dtype`] sets the dtype and reads it
//! back to check it, [`cuda_autocast`] switches autocast on around a forward pass.

use tch::{Device, Kind, Tensor};

use crate::bridge::{self, DEVICE_TYPE_CUDA};
use crate::error::{Result, TorchContext, TrainError};

/// Mixed-precision mode of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    /// Everything in fp32.
    Off,
    /// Autocast to bfloat16: fp32's range, no loss scaling needed.
    Bf16,
    /// Autocast to float16, with a dynamic loss scaler.
    Fp16,
}

impl Amp {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Amp::Off => "off",
            Amp::Bf16 => "bf16",
            Amp::Fp16 => "fp16",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Amp> {
        Some(match name {
            "off" => Amp::Off,
            "bf16" => Amp::Bf16,
            "fp16" => Amp::Fp16,
            _ => return None,
        })
    }

    fn kind(self) -> Option<Kind> {
        match self {
            Amp::Off => None,
            Amp::Bf16 => Some(Kind::BFloat16),
            Amp::Fp16 => Some(Kind::Half),
        }
    }
}

/// c10's `ScalarType` codes (`c10/core/ScalarType.h`, stable since they are serialised).
const SCALAR_TYPE_HALF: i8 = 5;
const SCALAR_TYPE_BFLOAT16: i8 = 15;

/// Makes CUDA autocast compute in `amp`'s dtype (a no-op for [`Amp::Off`]). libtorch keeps the setting per
/// thread: call this on the thread that runs the forward passes.
pub fn set_cuda_autocast_dtype(amp: Amp) -> Result<()> {
    let Some(kind) = amp.kind() else {
        return Ok(());
    };
    let code = if kind == Kind::BFloat16 {
        SCALAR_TYPE_BFLOAT16
    } else {
        SCALAR_TYPE_HALF
    };
    bridge::autocast_set_dtype(DEVICE_TYPE_CUDA, code)?;
    let got = bridge::autocast_get_dtype(DEVICE_TYPE_CUDA)?;
    if got != code {
        return Err(TrainError::Config {
            what: "--amp",
            reason: format!(
                "libtorch did not take the autocast dtype {kind:?} (it reports ScalarType {got}); \
                 this build expects libtorch 2.11"
            ),
        });
    }
    Ok(())
}

/// Runs `f` with CUDA autocast on when `enabled`, like PyTorch's `torch.autocast("cuda")` context.
///
/// tch's own `autocast` goes through libtorch's deprecated `at::autocast::is_enabled`, which logs a
/// deprecation warning on every call; this uses the per-device-type functions instead.
///
/// # Panics
/// If libtorch rejects a call to its autocast controls, which libtorch 2.11 never does for the CUDA
/// device type (the trainer runs forward passes under `catch_torch`, which turns a panic into an error).
pub fn cuda_autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let restored = bridge::autocast_decrement_nesting().and_then(|depth| {
                if depth == 0 {
                    // The weights cast for this forward pass are not needed any more.
                    bridge::autocast_clear_cache()?;
                }
                bridge::autocast_set_enabled(DEVICE_TYPE_CUDA, self.0)
            });
            // A second panic while `f` unwinds would abort; the first one says enough.
            if let Err(e) = restored
                && !std::thread::panicking()
            {
                panic!("leaving CUDA autocast: {e}");
            }
        }
    }
    let entered = bridge::autocast_is_enabled(DEVICE_TYPE_CUDA).and_then(|prev| {
        bridge::autocast_set_enabled(DEVICE_TYPE_CUDA, true)?;
        bridge::autocast_increment_nesting()?;
        Ok(Restore(prev))
    });
    // The guard restores the previous state even if `f` panics.
    let _restore = entered.unwrap_or_else(|e| panic!("entering CUDA autocast: {e}"));
    f()
}

/// After this many skipped steps in a row, training stops: with the scale halved each time, the scale
/// went from 2^16 to 2^-16 and the gradients still overflow, which no scale will fix.
pub const MAX_CONSECUTIVE_SKIPS: u32 = 32;

/// PyTorch `GradScaler`'s dynamic loss scaling: multiply the loss by `scale` before backward, divide the
/// gradients by it after; on an inf/NaN gradient skip the step and halve the scale, and double it after
/// `growth_interval` good steps in a row.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    /// The current scale.
    pub scale: f64,
    /// Good steps since the last change of scale.
    pub growth_tracker: u64,
    /// Steps skipped in a row, up to now.
    pub consecutive_skips: u32,
    /// Steps skipped over the run.
    pub skipped_total: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            growth_tracker: 0,
            consecutive_skips: 0,
            skipped_total: 0,
        }
    }
}

/// `GradScaler`'s defaults.
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: u64 = 2000;

impl LossScaler {
    /// Records the outcome of a step: `finite` is whether every gradient was finite. Returns whether the
    /// optimizer step should be taken.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.consecutive_skips = 0;
            self.growth_tracker += 1;
            if self.growth_tracker >= GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        } else {
            self.consecutive_skips += 1;
            self.skipped_total += 1;
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        }
        finite
    }

    /// Whether training must stop: too many skips in a row.
    pub fn exhausted(&self) -> bool {
        self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS
    }
}

/// Divides the gradients by `scale` in place and returns the sum of all of them, a scalar on `device`
/// (not read back, so nothing waits here): it is finite iff every gradient is, up to an overflow of the
/// sum itself, which only skips a step whose gradients were near fp32's range anyway. Undefined
/// gradients (variables the loss did not reach) are left out.
pub fn unscale(grads: impl Iterator<Item = Tensor>, scale: f64, device: Device) -> Result<Tensor> {
    let what = || "unscaling gradients".to_owned();
    let inv = 1.0 / scale;
    tch::no_grad(|| {
        let mut total = Tensor::f_zeros([], (Kind::Float, device)).during(what)?;
        for mut g in grads.filter(Tensor::defined) {
            let _ = g.f_mul_scalar_(inv).during(what)?;
            let s = g.f_sum(Kind::Float).during(what)?;
            total = total.f_add(&s).during(what)?;
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_backs_off_grows_and_gives_up() {
        let mut s = LossScaler::default();
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        for _ in 0..GROWTH_INTERVAL {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.consecutive_skips, 0);
        for _ in 0..MAX_CONSECUTIVE_SKIPS - 1 {
            s.update(false);
            assert!(!s.exhausted());
        }
        s.update(false);
        assert!(s.exhausted());
        assert_eq!(s.skipped_total, u64::from(MAX_CONSECUTIVE_SKIPS) + 1);
    }

    #[test]
    fn unscale_divides_in_place_and_flags_non_finite_gradients() {
        let g = Tensor::from_slice(&[2.0f32, -4.0]);
        let h = Tensor::from_slice(&[8.0f32]);
        let sum = unscale(
            [g.shallow_clone(), h.shallow_clone()].into_iter(),
            2.0,
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), [1.0, -2.0]);
        assert_eq!(sum.double_value(&[]), 3.0);
        let bad = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
        let sum = unscale([h, bad, Tensor::new()].into_iter(), 4.0, Device::Cpu).unwrap();
        assert!(!sum.double_value(&[]).is_finite());
        let nan = Tensor::from_slice(&[f32::NAN]);
        assert!(
            unscale([nan].into_iter(), 1.0, Device::Cpu)
                .unwrap()
                .double_value(&[])
                .is_nan()
        );
    }

    #[test]
    fn autocast_controls_link_and_round_trip() {
        set_cuda_autocast_dtype(Amp::Bf16).unwrap();
        set_cuda_autocast_dtype(Amp::Fp16).unwrap();
        set_cuda_autocast_dtype(Amp::Off).unwrap();
        let enabled = || bridge::autocast_is_enabled(DEVICE_TYPE_CUDA).unwrap();
        assert!(!enabled());
        let inside = cuda_autocast(true, enabled);
        assert!(inside);
        assert!(!enabled());
        assert!(!cuda_autocast(false, enabled));
    }
}
