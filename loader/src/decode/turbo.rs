//! JPEG through libjpeg-turbo 3 (the `turbojpeg` cargo feature), with region decode.
//!
//! libjpeg-turbo is the decoder inside PIL, so with the same settings (accurate integer IDCT, smooth
//! chroma upsampling: TurboJPEG's defaults and PIL's) it gives PIL's pixels. Its TurboJPEG API can
//! decode part of an image ([`Turbo::decode`] with a region): rows above the region are entropy-decoded
//! but not transformed, rows below it are not read at all, and columns outside it skip the IDCT and the
//! colour conversion. The safe `turbojpeg` crate does not expose cropping, so this module calls the raw
//! `turbojpeg-sys` bindings.
//!
//! Our own header walk ([`Header::read`]) still runs first: it applies the size cap before any
//! allocation and demands the end-of-image marker, so both backends accept and refuse the same files.
//! libjpeg's warnings (extraneous bytes, a data segment that ends early) are not errors, as in PIL.

use std::ffi::CStr;
use std::ptr::NonNull;

use turbojpeg_sys as tj;

use super::jpeg::Header;
use super::jpeg::cmyk_to_rgb;
use super::{ColorSpace, DecodeError, sized, whole};
use crate::augment::CropBox;

/// One TurboJPEG decompressor instance, for one image (see `Decoder::turbo` for why not more).
#[derive(Debug)]
pub(super) struct Turbo {
    handle: NonNull<std::ffi::c_void>,
}

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: the handle came from `tj3Init` and is destroyed once, here.
        unsafe { tj::tj3Destroy(self.handle.as_ptr()) }
    }
}

/// Width in pixels of one iMCU for TurboJPEG's subsampling codes (its `tjMCUWidth`, a static array in
/// the C header that bindings cannot reach).
fn imcu_width(subsamp: i32) -> Option<u32> {
    match subsamp {
        tj::TJSAMP_TJSAMP_444 | tj::TJSAMP_TJSAMP_GRAY | tj::TJSAMP_TJSAMP_440 => Some(8),
        tj::TJSAMP_TJSAMP_441 => Some(8),
        tj::TJSAMP_TJSAMP_422 | tj::TJSAMP_TJSAMP_420 => Some(16),
        tj::TJSAMP_TJSAMP_411 => Some(32),
        _ => None,
    }
}

/// Pixels decoded beyond the asked-for box on each side, so that libjpeg's edge handling of the region
/// never reaches into the box (chroma is at most 4x subsampled, so one chroma sample spans 4 pixels).
const EDGE_MARGIN: u32 = 8;

impl Turbo {
    pub(super) fn new() -> Result<Turbo, DecodeError> {
        // SAFETY: plain constructor; a null return is handled.
        let raw = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        let handle = NonNull::new(raw).ok_or_else(|| DecodeError::Turbo {
            message: "could not create a libjpeg-turbo decompressor".into(),
        })?;
        let mut turbo = Turbo { handle };
        // Defaults we rely on, set explicitly: PIL's accurate IDCT and smooth upsampling, top-down rows.
        for (param, value) in [
            (tj::TJPARAM_TJPARAM_FASTDCT, 0),
            (tj::TJPARAM_TJPARAM_FASTUPSAMPLE, 0),
            (tj::TJPARAM_TJPARAM_BOTTOMUP, 0),
            (tj::TJPARAM_TJPARAM_STOPONWARNING, 0),
            // A progressive file with thousands of tiny scans is a known way to burn minutes of CPU.
            (tj::TJPARAM_TJPARAM_SCANLIMIT, 1000),
        ] {
            // SAFETY: valid handle; the parameters are TurboJPEG's own constants.
            let rc = unsafe { tj::tj3Set(turbo.handle.as_ptr(), param as i32, value) };
            if rc != 0 {
                return Err(turbo.error());
            }
        }
        Ok(turbo)
    }

    /// The instance's last error message.
    fn error(&mut self) -> DecodeError {
        // SAFETY: valid handle; TurboJPEG returns a NUL-terminated string it owns, valid until the next call.
        let message = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle.as_ptr())) }
            .to_string_lossy()
            .trim()
            .to_owned();
        DecodeError::Turbo { message }
    }

    /// Whether the last failed call only warned (libjpeg completed the image).
    fn only_warned(&mut self) -> bool {
        // SAFETY: valid handle.
        unsafe { tj::tj3GetErrorCode(self.handle.as_ptr()) == tj::TJERR_TJERR_WARNING as i32 }
    }

    /// Decodes `want` (or more) of the image to RGB in `rgb`; returns the window actually decoded.
    ///
    /// `want` must lie inside the image; the caller (`Decoder::decode_region`) has clamped it.
    pub(super) fn decode(
        &mut self,
        bytes: &[u8],
        header: &Header,
        want: CropBox,
        rgb: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<CropBox, DecodeError> {
        let h = self.handle.as_ptr();
        // SAFETY: valid handle; `bytes` outlives the call.
        if unsafe { tj::tj3DecompressHeader(h, bytes.as_ptr(), bytes.len() as tj::size_t) } != 0 {
            return Err(self.error());
        }
        // libjpeg's reading of the frame must be ours, or the size cap was applied to another image.
        let get = |param: tj::TJPARAM| {
            // SAFETY: valid handle, header just read; `param` is one of TurboJPEG's own constants.
            unsafe { tj::tj3Get(h, param as i32) }
        };
        let (w, ht) = (
            get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
            get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if (w, ht) != (header.width() as i32, header.height() as i32) {
            return Err(DecodeError::Turbo {
                message: format!(
                    "libjpeg-turbo reads the frame as {w}x{ht}, the headers say {}x{}",
                    header.width(),
                    header.height()
                ),
            });
        }
        let subsamp = get(tj::TJPARAM_TJPARAM_SUBSAMP);
        let full = whole(header.width(), header.height());
        // The left edge must sit on an iMCU boundary. And libjpeg upsamples chroma at the region's edges as
        // if they were the image's, so the edge pixels would differ from a whole decode: widen the box by
        // a margin (more than the chroma reach of any subsampling) on every side before aligning. An
        // unknown subsampling (rare four-component layouts) cannot be cropped: decode it whole.
        let window = match imcu_width(subsamp) {
            Some(step) if want != full => {
                let left = want.left.saturating_sub(EDGE_MARGIN) / step * step;
                let top = want.top.saturating_sub(EDGE_MARGIN);
                let right = (want.left + want.width + EDGE_MARGIN).min(full.width);
                let bottom = (want.top + want.height + EDGE_MARGIN).min(full.height);
                CropBox {
                    top,
                    left,
                    height: bottom - top,
                    width: right - left,
                }
            }
            _ => full,
        };
        let region = if window == full {
            tj::tjregion {
                x: 0,
                y: 0,
                w: 0,
                h: 0,
            }
        } else {
            tj::tjregion {
                x: window.left as i32,
                y: window.top as i32,
                w: window.width as i32,
                h: window.height as i32,
            }
        };
        // SAFETY: valid handle, header read (required for a non-empty region); the region lies inside the
        // image and its left edge is iMCU-aligned, which TurboJPEG checks again.
        if unsafe { tj::tj3SetCroppingRegion(h, region) } != 0 {
            return Err(self.error());
        }
        let pixels = window.width as usize * window.height as usize;
        let four = matches!(header.info().color, ColorSpace::Cmyk | ColorSpace::Ycck);
        let (format, channels, out) = if four {
            // libjpeg turns YCCK into CMYK itself; PIL's CMYK -> RGB follows, as for the zune path.
            (tj::TJPF_TJPF_CMYK, 4, sized(scratch, pixels * 4))
        } else {
            (tj::TJPF_TJPF_RGB, 3, sized(rgb, pixels * 3))
        };
        // SAFETY: valid handle; `out` holds exactly `window.height` rows of `window.width * channels`
        // bytes, the size TurboJPEG writes for this cropping region and pixel format.
        let rc = unsafe {
            tj::tj3Decompress8(
                h,
                bytes.as_ptr(),
                bytes.len() as tj::size_t,
                out.as_mut_ptr(),
                (window.width * channels) as i32,
                format,
            )
        };
        if rc != 0 && !self.only_warned() {
            return Err(self.error());
        }
        if four {
            cmyk_to_rgb(&scratch[..pixels * 4], sized(rgb, pixels * 3));
        }
        Ok(window)
    }
}
