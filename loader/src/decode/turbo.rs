//! JPEG through libjpeg-turbo 3 (the `turbojpeg` cargo feature), with region decode.
//!
//! libjpeg-turbo is the decoder inside PIL, so with the same settings (accurate integer IDCT, smooth
//! chroma upsampling) it gives PIL's pixels. A region is decoded as TurboJPEG would: rows above it are
//! entropy-decoded but not transformed, rows below it are not read at all, and columns outside it skip the
//! IDCT and the colour conversion.
//!
//! The calls go through `libjpeg_shim.c` (compiled by `build.rs` against the headers libjpeg-turbo installs),
//! not TurboJPEG's `tj3Decompress8`: TurboJPEG reports "warning" for a file that raised a warning and then
//! failed, so a corrupt file that PIL refuses came back as decoded, holding whatever the output buffer held
//! before (another image's pixels). The shim's error manager keeps the two apart: a fatal error is
//! [`DecodeError::Turbo`]; warnings (libjpeg worked around bad data, PIL decodes such a file too) are
//! counted and handed back with the pixels.
//!
//! Our own header walk ([`Header::read`]) still runs first: it applies the size cap before any allocation.
//! Truncation is judged as PIL judges it: the file is refused when libjpeg asks for bytes past its end
//! before the last row is out (PIL's "image file is truncated"), not when only the end-of-image marker is
//! missing. zune-jpeg cannot tell those apart (it pads a short scan with grey), so for it the marker is
//! required.

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulong};
use std::ptr::NonNull;

use super::jpeg::Header;
use super::jpeg::cmyk_to_rgb;
use super::{ColorSpace, DecodeError, sized, whole};
use crate::augment::CropBox;

/// libjpeg's `JMSG_LENGTH_MAX`.
const MESSAGE_LEN: usize = 200;

/// `img_jpeg_status` in the shim.
#[repr(C)]
struct Status {
    fatal: c_int,
    warnings: c_uint,
    message: [c_char; MESSAGE_LEN],
}

/// `img_jpeg_info` in the shim.
#[repr(C)]
#[derive(Default)]
struct Info {
    width: c_uint,
    height: c_uint,
    components: c_int,
    color_space: c_int,
    max_h_samp: c_int,
    max_v_samp: c_int,
    h_samp: [c_int; 4],
    v_samp: [c_int; 4],
}

/// The shim's decompressor (`img_jpeg`), opaque here.
#[repr(C)]
struct RawJpeg {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn img_jpeg_new(scan_limit: c_int, status: *mut Status) -> *mut RawJpeg;
    fn img_jpeg_free(j: *mut RawJpeg);
    fn img_jpeg_header(
        j: *mut RawJpeg,
        data: *const u8,
        len: c_ulong,
        status: *mut Status,
        info: *mut Info,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn img_jpeg_decode(
        j: *mut RawJpeg,
        cmyk: c_int,
        x: c_uint,
        y: c_uint,
        w: c_uint,
        h: c_uint,
        out: *mut u8,
        stride: usize,
        status: *mut Status,
    ) -> c_int;
}

/// A progressive file with thousands of tiny scans is a known way to burn minutes of CPU; real files have
/// about ten.
const SCAN_LIMIT: c_int = 1000;

/// Pixels decoded beyond the asked-for box on each side, so that libjpeg's edge handling of the region
/// never reaches into the box (chroma is at most 4x subsampled, so one chroma sample spans 4 pixels).
const EDGE_MARGIN: u32 = 8;

impl Status {
    fn new() -> Status {
        Status {
            fatal: 0,
            warnings: 0,
            message: [0; MESSAGE_LEN],
        }
    }

    fn error(&self) -> DecodeError {
        // SAFETY: `message` is zeroed at creation and only ever written by snprintf/format_message, which
        // NUL-terminate within JMSG_LENGTH_MAX bytes.
        let message = unsafe { CStr::from_ptr(self.message.as_ptr()) }
            .to_string_lossy()
            .trim()
            .to_owned();
        DecodeError::Turbo { message }
    }
}

/// One libjpeg decompressor, for one image. A fresh one per image, as PIL makes: libjpeg keeps Huffman and
/// quantisation tables across the images of one decompressor (for abbreviated streams), so a file that lacks
/// a table would silently get the previous file's. Measured cost of a fresh one: none visible.
#[derive(Debug)]
pub(super) struct Turbo {
    handle: NonNull<RawJpeg>,
}

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: the handle came from `img_jpeg_new` and is freed once, here.
        unsafe { img_jpeg_free(self.handle.as_ptr()) }
    }
}

/// Width in pixels of one iMCU, when libjpeg can crop this layout the way the region contract needs: every
/// component sampled either fully or at the frame's maximum factors (4:2:0, 4:2:2, 4:4:0, 4:1:1, 4:4:4,
/// gray, CMYK/YCCK with K like Y). Anything else is decoded whole.
fn imcu_width(info: &Info) -> Option<u32> {
    let n = usize::try_from(info.components).ok()?.min(4);
    let plain = (0..n).all(|i| {
        let f = (info.h_samp[i], info.v_samp[i]);
        f == (1, 1) || f == (info.max_h_samp, info.max_v_samp)
    });
    (plain && (1..=4).contains(&info.max_h_samp)).then(|| info.max_h_samp as u32 * 8)
}

impl Turbo {
    pub(super) fn new() -> Result<Turbo, DecodeError> {
        let mut status = Status::new();
        // SAFETY: plain constructor; a null return is handled and `status` says why.
        let raw = unsafe { img_jpeg_new(SCAN_LIMIT, &mut status) };
        let handle = NonNull::new(raw).ok_or_else(|| status.error())?;
        Ok(Turbo { handle })
    }

    /// Decodes `want` (or more) of the image to RGB in `rgb`; returns the window actually decoded and the
    /// number of libjpeg warnings (corrupt data that libjpeg, like PIL, decoded anyway).
    ///
    /// `want` must lie inside the image; the caller (`Decoder::decode_region`) has clamped it.
    pub(super) fn decode(
        &mut self,
        bytes: &[u8],
        header: &Header,
        want: CropBox,
        rgb: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<(CropBox, u32), DecodeError> {
        let h = self.handle.as_ptr();
        let mut status = Status::new();
        let mut info = Info::default();
        let len = c_ulong::try_from(bytes.len()).map_err(|_| DecodeError::Turbo {
            message: "file too large for libjpeg".into(),
        })?;
        // SAFETY: valid handle; `bytes` outlives this function, and so every later call that reads it.
        if unsafe { img_jpeg_header(h, bytes.as_ptr(), len, &mut status, &mut info) } != 0 {
            return Err(status.error());
        }
        // libjpeg's reading of the frame must be ours, or the size cap was applied to another image.
        if (info.width, info.height) != (header.width(), header.height()) {
            return Err(DecodeError::Turbo {
                message: format!(
                    "libjpeg-turbo reads the frame as {}x{}, the headers say {}x{}",
                    info.width,
                    info.height,
                    header.width(),
                    header.height()
                ),
            });
        }
        let full = whole(header.width(), header.height());
        // The left edge must sit on an iMCU boundary. And libjpeg upsamples chroma at the region's edges as
        // if they were the image's, so the edge pixels would differ from a whole decode: widen the box by
        // a margin (more than the chroma reach of any subsampling) on every side before aligning.
        // A file without an end-of-image marker is decoded whole: PIL refuses it when its data ends before
        // the last row and decodes it when only the marker is missing, and only a whole decode can tell.
        let window = match imcu_width(&info) {
            Some(step) if want != full && header.has_eoi(bytes) => {
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
        let pixels = window.width as usize * window.height as usize;
        let four = matches!(header.info().color, ColorSpace::Cmyk | ColorSpace::Ycck);
        let (channels, out) = if four {
            // libjpeg turns YCCK into CMYK itself; PIL's CMYK -> RGB follows, as for the zune path.
            (4, sized(scratch, pixels * 4))
        } else {
            (3, sized(rgb, pixels * 3))
        };
        // SAFETY: valid handle after a successful header read; `out` holds exactly `window.height` rows of
        // `window.width * channels` bytes, which is what the shim writes for this window and colour space;
        // the shim checks the window against the image and the iMCU alignment itself.
        let rc = unsafe {
            img_jpeg_decode(
                h,
                c_int::from(four),
                window.left,
                window.top,
                window.width,
                window.height,
                out.as_mut_ptr(),
                window.width as usize * channels,
                &mut status,
            )
        };
        if rc == -3 {
            return Err(super::jpeg::TRUNCATED);
        }
        if rc != 0 || status.fatal != 0 {
            return Err(status.error());
        }
        if four {
            cmyk_to_rgb(&scratch[..pixels * 4], sized(rgb, pixels * 3));
        }
        Ok((window, status.warnings))
    }
}
