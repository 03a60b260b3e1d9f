//! Which device a run uses, and a short description of it for the first line of output.

use std::fmt;

use tch::{Cuda, Device, Kind, Tensor};

/// Errors choosing or checking a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// `--gpu N` asked for a GPU that is not there.
    #[error("--gpu {requested}: {available} CUDA device(s) visible{hint}")]
    NoSuchGpu {
        requested: usize,
        available: usize,
        hint: &'static str,
    },
    /// The smoke test computed a wrong number: a broken libtorch build or device.
    #[error(
        "libtorch on {device:?} computed {got} where {expected} was expected: broken install or device"
    )]
    WrongResult {
        device: Device,
        got: f64,
        expected: f64,
    },
    /// A libtorch call failed on the device.
    #[error("libtorch on {device:?}: {source}")]
    Torch {
        device: Device,
        #[source]
        source: tch::TchError,
    },
}

/// What a run will compute on, and what the machine offers.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DeviceInfo {
    /// The chosen device.
    #[serde(serialize_with = "device_name")]
    pub device: Device,
    /// CUDA devices libtorch sees.
    pub cuda_devices: usize,
    /// Whether cuDNN is usable.
    pub cudnn: bool,
    /// Intra-op CPU threads libtorch uses.
    pub cpu_threads: i32,
}

/// `cpu` or `cuda:N`, as PyTorch writes devices.
pub fn device_name<S: serde::Serializer>(d: &Device, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Device::Cuda(i) => s.serialize_str(&format!("cuda:{i}")),
        other => s.serialize_str(&format!("{other:?}").to_lowercase()),
    }
}

/// Picks the device like pytorch/examples' `main.py`: `--gpu N` pins GPU N, otherwise GPU 0 when CUDA is
/// available, else the CPU.
pub fn select(gpu: Option<usize>) -> Result<DeviceInfo, DeviceError> {
    let cuda_devices = if Cuda::is_available() {
        Cuda::device_count().max(0) as usize
    } else {
        0
    };
    let device = match gpu {
        Some(requested) if requested >= cuda_devices => {
            let hint = if cuda_devices == 0 {
                " (is libtorch_cuda linked and a driver installed? run without --gpu to use the CPU)"
            } else {
                ""
            };
            return Err(DeviceError::NoSuchGpu {
                requested,
                available: cuda_devices,
                hint,
            });
        }
        Some(n) => Device::Cuda(n),
        None if cuda_devices > 0 => Device::Cuda(0),
        None => Device::Cpu,
    };
    Ok(DeviceInfo {
        device,
        cuda_devices,
        cudnn: Cuda::cudnn_is_available(),
        cpu_threads: tch::get_num_threads(),
    })
}

impl DeviceInfo {
    /// Runs one small convolution forward and backward on the device, so that a broken install fails
    /// here with a clear message instead of deep inside the first training step.
    pub fn smoke_test(&self) -> Result<(), DeviceError> {
        let torch = |source| DeviceError::Torch {
            device: self.device,
            source,
        };
        let opts = (Kind::Float, self.device);
        let x = Tensor::f_ones([2, 3, 16, 16], opts).map_err(torch)?;
        let w = Tensor::f_ones([4, 3, 3, 3], opts)
            .map_err(torch)?
            .set_requires_grad(true);
        let y = x
            .f_conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
            .map_err(torch)?;
        y.f_sum(Kind::Float)
            .map_err(torch)?
            .f_backward()
            .map_err(torch)?;
        // Every output pixel of the centre sees 27 ones; the gradient of the sum wrt each weight is the
        // number of output positions that weight touches: 2 images * 15 * 15 for the corner taps.
        let got = w.grad().f_double_value(&[0, 0, 0, 0]).map_err(torch)?;
        if got != 450.0 {
            return Err(DeviceError::WrongResult {
                device: self.device,
                got,
                expected: 450.0,
            });
        }
        Ok(())
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device {
            Device::Cuda(n) => write!(
                f,
                "cuda:{n} (of {} CUDA device(s), cuDNN {})",
                self.cuda_devices,
                if self.cudnn { "on" } else { "off" }
            ),
            _ => write!(
                f,
                "cpu ({} threads; no CUDA device visible)",
                self.cpu_threads
            ),
        }
    }
}
