//! PNG through the `png` crate, converted to RGB exactly as PIL's `convert("RGB")` does:
//! alpha and `tRNS` are dropped (not composited), 16-bit colour keeps the high byte, low-depth gray
//! is scaled (x255, x85, x17), palette indices past the palette's end are black, and 16-bit gray —
//! PIL's mode `I;16` — is clipped to 255, not scaled (PIL's behaviour, which we follow because PIL
//! is the reference the models were trained against).

use std::io::{Cursor, ErrorKind};

use ::png::{BitDepth, ColorType, DecodingError, Transformations};

use super::{ColorSpace, DecodeError, ImageFormat, ImageInfo, sized};

/// The IHDR chunk.
#[derive(Debug, Clone)]
pub(super) struct Header {
    pub(super) width: u32,
    pub(super) height: u32,
    bit_depth: u8,
    color_type: u8,
    interlaced: bool,
}

fn malformed(offset: usize, reason: &'static str) -> DecodeError {
    DecodeError::Malformed {
        format: ImageFormat::Png,
        offset,
        reason,
    }
}

const TRUNCATED: DecodeError = DecodeError::Truncated {
    format: ImageFormat::Png,
};

impl Header {
    /// Reads IHDR. `bytes` starts with the PNG signature.
    pub(super) fn read(bytes: &[u8]) -> Result<Header, DecodeError> {
        let Some(ihdr) = bytes.get(8..33) else {
            return Err(TRUNCATED);
        };
        if ihdr[0..8] != *b"\0\0\0\x0dIHDR" {
            return Err(malformed(8, "first chunk is not a 13-byte IHDR"));
        }
        let be32 = |i: usize| u32::from_be_bytes([ihdr[i], ihdr[i + 1], ihdr[i + 2], ihdr[i + 3]]);
        let (width, height) = (be32(8), be32(12));
        let (bit_depth, color_type) = (ihdr[16], ihdr[17]);
        if width == 0 || height == 0 || width > i32::MAX as u32 || height > i32::MAX as u32 {
            return Err(malformed(16, "width or height is 0 or above 2^31 - 1"));
        }
        let valid = match color_type {
            0 => matches!(bit_depth, 1 | 2 | 4 | 8 | 16),
            3 => matches!(bit_depth, 1 | 2 | 4 | 8),
            2 | 4 | 6 => matches!(bit_depth, 8 | 16),
            _ => false,
        };
        if !valid {
            return Err(malformed(24, "invalid colour type / bit depth pair"));
        }
        Ok(Header {
            width,
            height,
            bit_depth,
            color_type,
            interlaced: ihdr[20] == 1,
        })
    }

    pub(super) fn info(&self) -> ImageInfo {
        let (components, color) = match self.color_type {
            0 => (1, ColorSpace::Gray),
            2 => (3, ColorSpace::Rgb),
            3 => (1, ColorSpace::Palette),
            4 => (2, ColorSpace::GrayAlpha),
            _ => (4, ColorSpace::Rgba),
        };
        ImageInfo {
            format: ImageFormat::Png,
            width: self.width,
            height: self.height,
            components,
            color,
            bit_depth: self.bit_depth,
            progressive: self.interlaced,
        }
    }
}

fn map_error(e: DecodingError) -> DecodeError {
    match e {
        DecodingError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => TRUNCATED,
        e => DecodeError::Png(e),
    }
}

/// Decodes to RGB in `rgb` (`pixels * 3` bytes), using `scratch` for anything but 8-bit RGB.
pub(super) fn decode(
    bytes: &[u8],
    header: &Header,
    pixels: usize,
    rgb: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut decoder = ::png::Decoder::new(Cursor::new(bytes));
    // We convert ourselves: the crate's EXPAND would turn tRNS into alpha and keep 16 bits.
    decoder.set_transformations(Transformations::IDENTITY);
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let mut reader = decoder.read_info().map_err(map_error)?;
    let info = reader.info();
    if (info.width, info.height) != (header.width, header.height) {
        return Err(malformed(16, "size changed between reads"));
    }
    let (color_type, bit_depth) = (info.color_type, info.bit_depth);
    let rgb = sized(rgb, pixels * 3);
    if (color_type, bit_depth) == (ColorType::Rgb, BitDepth::Eight) {
        reader.next_frame(rgb).map_err(map_error)?;
        return Ok(());
    }
    let needed = reader
        .output_buffer_size()
        .ok_or_else(|| DecodeError::Unsupported {
            format: ImageFormat::Png,
            what: "a frame larger than this address space".into(),
        })?;
    let raw = sized(scratch, needed);
    let frame = reader.next_frame(raw).map_err(map_error)?;
    let width = header.width as usize;
    let rows = raw
        .chunks_exact(frame.line_size)
        .zip(rgb.chunks_exact_mut(width * 3));
    match (color_type, bit_depth) {
        (ColorType::Grayscale | ColorType::GrayscaleAlpha, BitDepth::Sixteen) => {
            let step = if color_type == ColorType::Grayscale {
                2
            } else {
                4
            };
            // PIL opens 16-bit gray as I;16 and clips it to 255; gray+alpha it reads as LA with
            // the high byte.
            let clip = color_type == ColorType::Grayscale;
            for (src, dst) in rows {
                for (s, d) in src.chunks_exact(step).zip(dst.chunks_exact_mut(3)) {
                    let v = if clip {
                        u16::from_be_bytes([s[0], s[1]]).min(255) as u8
                    } else {
                        s[0]
                    };
                    d.fill(v);
                }
            }
        }
        (ColorType::Grayscale, depth) => {
            let bits = depth as usize;
            let scale = 255 / ((1u16 << bits) - 1) as u8;
            for (src, dst) in rows {
                for (x, d) in dst.chunks_exact_mut(3).enumerate() {
                    d.fill(sub_byte_sample(src, x, bits) * scale);
                }
            }
        }
        (ColorType::GrayscaleAlpha, _) => {
            for (src, dst) in rows {
                for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(3)) {
                    d.fill(s[0]);
                }
            }
        }
        (ColorType::Rgb | ColorType::Rgba, depth) => {
            let samples = if color_type == ColorType::Rgb { 3 } else { 4 };
            let step = samples * if depth == BitDepth::Sixteen { 2 } else { 1 };
            let hi = if depth == BitDepth::Sixteen { 2 } else { 1 };
            for (src, dst) in rows {
                for (s, d) in src.chunks_exact(step).zip(dst.chunks_exact_mut(3)) {
                    d[0] = s[0];
                    d[1] = s[hi];
                    d[2] = s[2 * hi];
                }
            }
        }
        (ColorType::Indexed, depth) => {
            // PIL pads a short palette with black.
            let mut palette = [0u8; 256 * 3];
            if let Some(p) = reader.info().palette.as_deref() {
                let n = p.len().min(palette.len());
                palette[..n].copy_from_slice(&p[..n]);
            }
            let bits = depth as usize;
            for (src, dst) in rows {
                for (x, d) in dst.chunks_exact_mut(3).enumerate() {
                    let i = usize::from(sub_byte_sample(src, x, bits)) * 3;
                    d.copy_from_slice(&palette[i..i + 3]);
                }
            }
        }
    }
    Ok(())
}

/// Sample `x` of a row packed at `bits` (1, 2, 4 or 8) bits per sample, most significant first.
#[inline]
fn sub_byte_sample(row: &[u8], x: usize, bits: usize) -> u8 {
    if bits == 8 {
        return row[x];
    }
    let per_byte = 8 / bits;
    let shift = 8 - bits * (x % per_byte + 1);
    (row[x / per_byte] >> shift) & ((1u8 << bits) - 1)
}
