//! JPEG through zune-jpeg, with the checks zune leaves out and PIL's CMYK colours.
//!
//! - Before zune sees the bytes we walk the marker segments up to the first scan ourselves
//!   ([`Header::read`]): that gives [`super::probe`] its answer and lets the size cap act before
//!   zune allocates anything.
//! - zune, even in strict mode, pads an image whose data stops inside the last MCU row with grey
//!   and returns Ok. libjpeg-turbo (so PIL) reports such a file as truncated; we do too, by
//!   requiring an end-of-image marker after the first scan ([`Header::has_eoi`]).
//! - Four-component files are decoded by zune to their raw planes and converted here, bit for bit
//!   the way PIL does (libjpeg YCCK->CMYK, then PIL's inverted-CMYK->RGB).
//! - zune builds a fresh decoder per image (tables, component rows, progressive coefficients);
//!   those allocations are its own. Our RGB output and CMYK planes are reused.

use zune_jpeg::JpegDecoder;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::zune_core::bytestream::{ZByteIoError, ZCursor};
use zune_jpeg::zune_core::colorspace::ColorSpace as ZColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::{ColorSpace, DecodeError, ImageFormat, ImageInfo, mul_div_255, sized};

/// What the marker segments before the first scan say.
#[derive(Debug, Clone)]
pub(super) struct Header {
    width: u16,
    height: u16,
    components: u8,
    color: ColorSpace,
    progressive: bool,
    /// How zune will read the components; differs from `color` only for three components that
    /// zune takes for RGB and libjpeg for YCbCr.
    zune_color: ZColorSpace,
    /// Offset of the first SOS marker.
    scan_start: usize,
}

fn malformed(offset: usize, reason: &'static str) -> DecodeError {
    DecodeError::Malformed {
        format: ImageFormat::Jpeg,
        offset,
        reason,
    }
}

fn unsupported(what: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported {
        format: ImageFormat::Jpeg,
        what: what.into(),
    }
}

pub(super) const TRUNCATED: DecodeError = DecodeError::Truncated {
    format: ImageFormat::Jpeg,
};

impl Header {
    /// Walks the segments from SOI to the first SOS. `bytes` starts with `FF D8`.
    pub(super) fn read(bytes: &[u8]) -> Result<Header, DecodeError> {
        let mut pos = 2;
        let mut frame: Option<(u16, u16, u8, bool, [u8; 3])> = None;
        let mut adobe_transform = None;
        let mut jfif = false;
        loop {
            // libjpeg and PIL step over junk between segments; so do we, and leave zune's strict
            // mode to judge how much junk is too much.
            while pos < bytes.len() && bytes[pos] != 0xFF {
                pos += 1;
            }
            while pos < bytes.len() && bytes[pos] == 0xFF {
                pos += 1;
            }
            let Some(&marker) = bytes.get(pos) else {
                return Err(TRUNCATED);
            };
            let marker_at = pos - 1;
            pos += 1;
            match marker {
                // Standalone markers: no length.
                0x01 | 0xD0..=0xD7 => continue,
                0xD8 => return Err(malformed(marker_at, "second start-of-image marker")),
                0xD9 => return Err(malformed(marker_at, "end of image before any scan")),
                _ => {}
            }
            let Some(len) = bytes.get(pos..pos + 2) else {
                return Err(TRUNCATED);
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if len < 2 {
                return Err(malformed(pos, "segment length below 2"));
            }
            let Some(segment) = bytes.get(pos + 2..pos + len) else {
                return Err(TRUNCATED);
            };
            match marker {
                0xC0..=0xC2 => {
                    if frame.is_some() {
                        return Err(malformed(marker_at, "two frame headers"));
                    }
                    if segment.len() < 6 {
                        return Err(malformed(marker_at, "frame header too short"));
                    }
                    if segment[0] != 8 {
                        return Err(unsupported(format!("{}-bit samples", segment[0])));
                    }
                    let height = u16::from_be_bytes([segment[1], segment[2]]);
                    let width = u16::from_be_bytes([segment[3], segment[4]]);
                    let components = segment[5];
                    if segment.len() < 6 + 3 * usize::from(components) {
                        return Err(malformed(
                            marker_at,
                            "frame header too short for its components",
                        ));
                    }
                    if width == 0 || height == 0 {
                        return Err(unsupported("zero width or height (DNL-defined height)"));
                    }
                    if !matches!(components, 1 | 3 | 4) {
                        return Err(unsupported(format!("{components} colour components")));
                    }
                    let mut ids = [0; 3];
                    if components >= 3 {
                        ids = [segment[6], segment[9], segment[12]];
                    }
                    frame = Some((width, height, components, marker == 0xC2, ids));
                }
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    let what = match marker {
                        0xC3 => "lossless coding",
                        0xC5..=0xC7 => "hierarchical coding",
                        _ => "arithmetic coding",
                    };
                    return Err(unsupported(what));
                }
                0xEE if segment.len() >= 12 && segment.starts_with(b"Adobe") => {
                    adobe_transform = Some(segment[11]);
                }
                0xE0 if segment.starts_with(b"JFIF\0") => jfif = true,
                0xDA => {
                    let Some((width, height, components, progressive, ids)) = frame else {
                        return Err(malformed(marker_at, "scan before frame header"));
                    };
                    // libjpeg-turbo's reading (so PIL's): JFIF means YCbCr, else the Adobe
                    // transform decides, else component ids `R`,`G`,`B` mean RGB. zune ignores
                    // JFIF and lets the ids override Adobe; `decode` fixes up the difference.
                    let rgb_ids = ids == *b"RGB";
                    let (color, zune_color) = match (components, adobe_transform) {
                        (1, _) => (ColorSpace::Gray, ZColorSpace::Luma),
                        (3, adobe) => {
                            let zune_rgb = adobe == Some(0) || rgb_ids;
                            let libjpeg_rgb =
                                !jfif && (adobe == Some(0) || (adobe.is_none() && rgb_ids));
                            let zune_color = if zune_rgb {
                                ZColorSpace::RGB
                            } else {
                                ZColorSpace::YCbCr
                            };
                            let color = if libjpeg_rgb {
                                ColorSpace::Rgb
                            } else {
                                ColorSpace::YCbCr
                            };
                            (color, zune_color)
                        }
                        (_, Some(2)) => (ColorSpace::Ycck, ZColorSpace::YCCK),
                        (_, None | Some(0)) => (ColorSpace::Cmyk, ZColorSpace::CMYK),
                        (_, Some(t)) => {
                            return Err(unsupported(format!(
                                "four components with Adobe transform {t}"
                            )));
                        }
                    };
                    return Ok(Header {
                        width,
                        height,
                        components,
                        color,
                        progressive,
                        zune_color,
                        scan_start: marker_at,
                    });
                }
                _ => {}
            }
            pos += len;
        }
    }

    pub(super) fn width(&self) -> u32 {
        u32::from(self.width)
    }

    pub(super) fn height(&self) -> u32 {
        u32::from(self.height)
    }

    pub(super) fn info(&self) -> ImageInfo {
        ImageInfo {
            format: ImageFormat::Jpeg,
            width: self.width(),
            height: self.height(),
            components: self.components,
            color: self.color,
            bit_depth: 8,
            progressive: self.progressive,
        }
    }

    /// Whether an end-of-image marker follows the first scan. Entropy-coded data cannot hold
    /// `FF D9` (an `FF` there is stuffed as `FF 00`), so one found after the scan start is the real
    /// EOI. Searched from the end: for a whole file it is the last two bytes, or just before
    /// trailing padding.
    pub(super) fn has_eoi(&self, bytes: &[u8]) -> bool {
        bytes[self.scan_start..]
            .windows(2)
            .rev()
            .any(|w| w == [0xFF, 0xD9])
    }
}

fn map_error(e: DecodeErrors) -> DecodeError {
    match e {
        DecodeErrors::ExhaustedData | DecodeErrors::IoErrors(ZByteIoError::NotEnoughBytes(..)) => {
            TRUNCATED
        }
        e => DecodeError::Jpeg(e),
    }
}

/// Decodes to RGB in `rgb` (`pixels * 3` bytes), using `scratch` for four-component files.
pub(super) fn decode(
    bytes: &[u8],
    header: &Header,
    pixels: usize,
    rgb: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let expected = header.zune_color;
    let out = match expected {
        ZColorSpace::CMYK | ZColorSpace::YCCK => expected,
        _ => ZColorSpace::RGB,
    };
    let options = DecoderOptions::new_fast()
        .set_strict_mode(true)
        // Our own cap (max_pixels) has already judged the size; zune's default is 16384 a side.
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .jpeg_set_out_colorspace(out);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(map_error)?;
    // The conversion below trusts our reading of the colour layout; zune must have made the same.
    // With three components zune still holds the Adobe reading here and settles it when decoding
    // starts (transform 0 -> RGB, 2 -> YCbCr); compare the settled value.
    let read = match decoder.input_colorspace() {
        Some(ZColorSpace::CMYK) if header.components == 3 => Some(ZColorSpace::RGB),
        Some(ZColorSpace::YCCK) if header.components == 3 => Some(ZColorSpace::YCbCr),
        other => other,
    };
    if read != Some(expected) {
        return Err(unsupported(format!(
            "colour layout read as {:?} by the decoder, {:?} from the headers",
            decoder.input_colorspace(),
            header.color
        )));
    }
    if decoder.dimensions() != Some((usize::from(header.width), usize::from(header.height))) {
        return Err(malformed(
            header.scan_start,
            "frame size changed between reads",
        ));
    }
    let rgb = sized(rgb, pixels * 3);
    match header.color {
        ColorSpace::Cmyk => {
            let planes = sized(scratch, pixels * 4);
            decoder.decode_into(planes).map_err(map_error)?;
            cmyk_to_rgb(planes, rgb);
        }
        ColorSpace::Ycck => {
            let planes = sized(scratch, pixels * 4);
            decoder.decode_into(planes).map_err(map_error)?;
            ycck_to_rgb(planes, rgb);
        }
        ColorSpace::YCbCr if expected == ZColorSpace::RGB => {
            // zune copies the stored samples through as RGB; they are YCbCr to libjpeg.
            decoder.decode_into(rgb).map_err(map_error)?;
            for p in rgb.chunks_exact_mut(3) {
                p.copy_from_slice(&ycbcr_to_rgb_libjpeg(p[0], p[1], p[2]));
            }
        }
        _ => decoder.decode_into(rgb).map_err(map_error)?,
    }
    Ok(())
}

/// PIL's `CMYK` -> `RGB` for a JPEG's stored samples. PIL reads every four-component JPEG as
/// inverted (Adobe) CMYK, `C = 255 - stored`, then computes `R = (255 - K) - (C * (255 - K)) / 255`
/// with its rounded divide; in stored terms `R = k - muldiv255(255 - c, k)`.
#[inline]
fn pil_cmyk_channel(stored_c: u8, stored_k: u8) -> u8 {
    stored_k - mul_div_255(255 - stored_c, stored_k)
}

pub(super) fn cmyk_to_rgb(cmyk: &[u8], rgb: &mut [u8]) {
    for (p, o) in cmyk.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
        o[0] = pil_cmyk_channel(p[0], p[3]);
        o[1] = pil_cmyk_channel(p[1], p[3]);
        o[2] = pil_cmyk_channel(p[2], p[3]);
    }
}

/// libjpeg's YCCK -> CMYK (`C = 255 - R` of the YCbCr triple, K untouched) followed by PIL's
/// CMYK -> RGB; `R = k - muldiv255(R_ycc, k)`.
fn ycck_to_rgb(ycck: &[u8], rgb: &mut [u8]) {
    for (p, o) in ycck.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
        let [r, g, b] = ycbcr_to_rgb_libjpeg(p[0], p[1], p[2]);
        o[0] = pil_cmyk_channel(255 - r, p[3]);
        o[1] = pil_cmyk_channel(255 - g, p[3]);
        o[2] = pil_cmyk_channel(255 - b, p[3]);
    }
}

/// JFIF YCbCr -> RGB in libjpeg's 16-bit fixed point (constants rounded from the JFIF
/// coefficients, half added before the shift), so YCCK colours match libjpeg to the bit.
#[inline]
fn ycbcr_to_rgb_libjpeg(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const HALF: i32 = 1 << 15;
    const CR_R: i32 = 91_881; // 1.40200 * 2^16
    const CB_B: i32 = 116_130; // 1.77200 * 2^16
    const CR_G: i32 = 46_802; // 0.71414 * 2^16
    const CB_G: i32 = 22_554; // 0.34414 * 2^16
    let y = i32::from(y);
    let cb = i32::from(cb) - 128;
    let cr = i32::from(cr) - 128;
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    [
        clamp(y + ((CR_R * cr + HALF) >> 16)),
        clamp(y + ((-CB_G * cb - CR_G * cr + HALF) >> 16)),
        clamp(y + ((CB_B * cb + HALF) >> 16)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_cmyk_formula_edges() {
        // White paper: no ink (stored values are inverted, so 255), no black.
        assert_eq!(pil_cmyk_channel(255, 255), 255);
        // Full black ink (stored K = 0) gives black whatever C is.
        assert_eq!(pil_cmyk_channel(17, 0), 0);
        // Full cyan, no black: red channel 0.
        assert_eq!(pil_cmyk_channel(0, 255), 0);
        // Never underflows.
        for c in 0..=255 {
            for k in 0..=255 {
                assert!(pil_cmyk_channel(c, k) <= k);
            }
        }
    }

    #[test]
    fn ycbcr_neutral_is_gray() {
        for y in [0, 1, 128, 254, 255] {
            assert_eq!(ycbcr_to_rgb_libjpeg(y, 128, 128), [y, y, y]);
        }
        assert_eq!(ycbcr_to_rgb_libjpeg(76, 85, 255), [254, 0, 0]);
    }
}
