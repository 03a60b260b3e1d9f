//! Decode JPEG and PNG bytes to packed RGB, matching PIL's `Image.open(f).convert("RGB")`.
//!
//! One [`Decoder`] per worker thread: it owns the output buffer and the colour-conversion scratch,
//! so once it has seen an image of a given size, decoding another one of that size or smaller
//! allocates nothing of ours (the codecs still allocate their small per-image state; see the
//! module notes in `decode/jpeg.rs`).
//!
//! The format is chosen by the bytes, never by the file name: ImageNet ships a PNG named `.JPEG`
//! and CMYK JPEGs, and PIL, the reference, sniffs too.
//!
//! ```
//! use imgloader::decode::{DecodeOptions, Decoder, DecodeError};
//!
//! let mut decoder = Decoder::new(DecodeOptions::default());
//! assert!(matches!(decoder.decode(b""), Err(DecodeError::Empty)));
//! ```

mod jpeg;
mod png;
#[cfg(feature = "turbojpeg")]
mod turbo;

use std::fmt;

/// A crop box in whole pixels (what a region decode is asked for, and what the augmenter picks), named
/// like torchvision's `(i, j, h, w)`: `top`, `left`, `height`, `width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// Settings of a [`Decoder`]. A bag of public fields; start from `Default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Images whose header declares more pixels than this are refused with
    /// [`DecodeError::TooLarge`] before anything is allocated for them.
    pub max_pixels: u64,
    /// Which library decodes JPEG. PNG always goes through the `png` crate.
    pub jpeg: JpegBackend,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        // The largest ImageNet training image has ~ 40 Mpx; 100 Mpx is 300 MB of RGB.
        DecodeOptions {
            max_pixels: 100_000_000,
            jpeg: JpegBackend::default(),
        }
    }
}

/// The JPEG decoder behind a [`Decoder`]. The default is the fastest one built: libjpeg-turbo with the
/// `turbojpeg` feature, zune-jpeg without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JpegBackend {
    /// zune-jpeg: pure Rust, always built. Decodes whole images; pixels within a level or two of PIL's.
    Zune,
    /// libjpeg-turbo 3.1, PIL's own decoder: the same pixels as PIL, and [`Decoder::decode_region`] decodes
    /// little more than the region asked for. Needs the `turbojpeg` cargo feature (cmake and NASM at build
    /// time); without it, decoding with this backend fails with [`DecodeError::BackendUnavailable`].
    Turbo,
}

impl Default for JpegBackend {
    fn default() -> Self {
        if cfg!(feature = "turbojpeg") {
            JpegBackend::Turbo
        } else {
            JpegBackend::Zune
        }
    }
}

impl JpegBackend {
    /// Whether this build can decode with this backend.
    pub fn is_available(self) -> bool {
        match self {
            JpegBackend::Zune => true,
            JpegBackend::Turbo => cfg!(feature = "turbojpeg"),
        }
    }

    /// The library's name, for messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            JpegBackend::Zune => "zune-jpeg",
            JpegBackend::Turbo => "libjpeg-turbo",
        }
    }
}

impl std::str::FromStr for JpegBackend {
    type Err = String;

    /// `zune` / `zune-jpeg`, `turbo` / `libjpeg-turbo` (any case); for command lines.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "zune" | "zune-jpeg" => Ok(JpegBackend::Zune),
            "turbo" | "libjpeg-turbo" | "turbojpeg" => Ok(JpegBackend::Turbo),
            _ => Err(format!(
                "unknown JPEG decoder {s:?}: expected zune (zune-jpeg) or turbo (libjpeg-turbo)"
            )),
        }
    }
}

impl fmt::Display for JpegBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded image borrowed from the [`Decoder`] that made it: packed RGB, row-major, no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image<'a> {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: &'a [u8],
}

/// Part of an image, from [`Decoder::decode_region`]: `image` holds the pixels of the box at
/// (`left`, `top`) of an image `full_width` x `full_height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region<'a> {
    pub image: Image<'a>,
    pub left: u32,
    pub top: u32,
    pub full_width: u32,
    pub full_height: u32,
    /// Warnings the JPEG decoder raised on the way: corrupt data that libjpeg worked around (a bad Huffman
    /// code, a data segment that ends early), which PIL also decodes without complaint. Always 0 from
    /// zune-jpeg (which refuses such data) and PNG.
    pub warnings: u32,
}

impl Region<'_> {
    /// Whether the decoded pixels include all of `b` (in full-image pixels).
    pub fn covers(&self, b: CropBox) -> bool {
        b.left >= self.left
            && b.top >= self.top
            && b.left + b.width <= self.left + self.image.width
            && b.top + b.height <= self.top + self.image.height
    }
}

impl DecodeOptions {
    /// Checks the options a pool of decoders is about to be built with (the backend must be in this build).
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.jpeg.is_available() {
            return Ok(());
        }
        Err(crate::Error::Config {
            what: "JPEG decoder",
            reason: DecodeError::BackendUnavailable.to_string(),
        })
    }
}

/// The box covering a whole `width` x `height` image: as the `pick` of [`Decoder::decode_region`], a whole
/// decode that still reports [`Region::warnings`].
pub fn whole(width: u32, height: u32) -> CropBox {
    CropBox {
        top: 0,
        left: 0,
        height,
        width,
    }
}

/// An image container this module understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
        })
    }
}

/// How the samples in the file are to be read, before conversion to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColorSpace {
    Gray,
    GrayAlpha,
    /// JPEG: three components stored as RGB (Adobe transform 0, or component ids `R`,`G`,`B`).
    Rgb,
    Rgba,
    /// PNG palette indices.
    Palette,
    YCbCr,
    /// JPEG: four components, Adobe (inverted) CMYK.
    Cmyk,
    /// JPEG: four components, Adobe transform 2 (YCbCr + inverted K).
    Ycck,
}

/// What [`probe`] reads from the headers, without decoding pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Samples per pixel in the file (a palette PNG has 1).
    pub components: u8,
    pub color: ColorSpace,
    /// Bits per sample in the file: always 8 for JPEG; 1, 2, 4, 8 or 16 for PNG.
    pub bit_depth: u8,
    /// Progressive JPEG, or Adam7-interlaced PNG.
    pub progressive: bool,
}

/// Why bytes could not be decoded. The caller adds which sample they came from
/// (see [`crate::Error::Decode`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty file (0 bytes)")]
    Empty,
    /// A recognised image format that this module does not decode.
    #[error("{format} image: only JPEG and PNG are supported")]
    UnsupportedFormat { format: &'static str },
    /// Not a recognised image format; `magic` holds the first bytes (at most 16).
    #[error("not an image: unknown format, first bytes {}", Magic(magic))]
    UnknownFormat { magic: Vec<u8> },
    /// The header declares more pixels than [`DecodeOptions::max_pixels`].
    #[error(
        "image is {width}x{height} = {} pixels, over the limit of {max_pixels}",
        u64::from(*width) * u64::from(*height)
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// The data ends before the image does (for JPEG: no end-of-image marker after the scans).
    #[error("truncated {format} file: the data ends before the image does")]
    Truncated { format: ImageFormat },
    /// A header is malformed; `offset` is the byte position where it went wrong.
    #[error("malformed {format} header at byte {offset}: {reason}")]
    Malformed {
        format: ImageFormat,
        offset: usize,
        reason: &'static str,
    },
    /// A valid file using a feature this decoder (and, mostly, PIL) does not handle.
    #[error("unsupported {format} variant: {what}")]
    Unsupported { format: ImageFormat, what: String },
    /// zune-jpeg rejected the data.
    #[error("corrupt JPEG data")]
    Jpeg(#[source] zune_jpeg::errors::DecodeErrors),
    /// libjpeg-turbo rejected the data; `message` is its own.
    #[error("corrupt JPEG data: {message} (libjpeg-turbo)")]
    Turbo { message: String },
    /// [`JpegBackend::Turbo`] was asked for, but this build has no libjpeg-turbo.
    #[error(
        "the libjpeg-turbo decoder is not in this build (enable imgloader's `turbojpeg` feature)"
    )]
    BackendUnavailable,
    /// The `png` crate rejected the data.
    #[error("corrupt PNG data")]
    Png(#[source] ::png::DecodingError),
}

/// Formats the leading bytes as hex, plus the text when they look like text (HTML error pages
/// and `.txt` files saved under an image name are the usual suspects).
struct Magic<'a>(&'a [u8]);

impl fmt::Display for Magic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        let texty = |b: &u8| b.is_ascii_graphic() || b.is_ascii_whitespace();
        if !self.0.is_empty() && self.0.iter().all(texty) {
            let text: String = self
                .0
                .iter()
                .map(|&b| {
                    if b.is_ascii_whitespace() {
                        ' '
                    } else {
                        char::from(b)
                    }
                })
                .collect();
            write!(f, " (looks like text: {text:?})")?;
        }
        Ok(())
    }
}

/// Which decoder the leading bytes call for.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(ImageFormat::Jpeg);
    }
    if bytes.starts_with(PNG_SIGNATURE) {
        return Ok(ImageFormat::Png);
    }
    let other = if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("GIF")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("WebP")
    } else if bytes.starts_with(b"BM") && bytes.len() >= 26 {
        Some("BMP")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("TIFF")
    } else if bytes.get(4..8) == Some(b"ftyp") {
        match bytes.get(8..12) {
            Some(b"avif") | Some(b"avis") => Some("AVIF"),
            Some(b"heic") | Some(b"heix") | Some(b"mif1") | Some(b"msf1") => Some("HEIF"),
            _ => None,
        }
    } else if bytes.starts_with(b"\0\0\0\x0cjP  \r\n\x87\n")
        || bytes.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
    {
        Some("JPEG 2000")
    } else if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n") {
        Some("JPEG XL")
    } else if bytes.starts_with(b"%PDF") {
        Some("PDF")
    } else {
        None
    };
    Err(match other {
        Some(format) => DecodeError::UnsupportedFormat { format },
        None => DecodeError::UnknownFormat {
            magic: bytes[..bytes.len().min(16)].to_vec(),
        },
    })
}

fn check_size(width: u32, height: u32, options: &DecodeOptions) -> Result<usize, DecodeError> {
    let pixels = u64::from(width) * u64::from(height);
    // The cap may be set above what this address space can hold (CMYK scratch is 4 bytes a
    // pixel); refuse rather than overflow.
    let fits = pixels
        .checked_mul(4)
        .is_some_and(|bytes| usize::try_from(bytes).is_ok());
    if pixels > options.max_pixels || !fits {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max_pixels: options.max_pixels,
        });
    }
    Ok(pixels as usize)
}

/// Reads the format, size and colour layout from the headers only. Cheap: no pixel is decoded
/// and nothing is allocated on success.
pub fn probe(bytes: &[u8]) -> Result<ImageInfo, DecodeError> {
    match sniff(bytes)? {
        ImageFormat::Jpeg => jpeg::Header::read(bytes).map(|h| h.info()),
        ImageFormat::Png => png::Header::read(bytes).map(|h| h.info()),
    }
}

/// Whether [`Decoder::decode`] would get as far as decoding pixels: the checks it makes before any pixel
/// work, and nothing else. Those are the format, the headers, the [`DecodeOptions::max_pixels`] cap
/// ([`DecodeError::TooLarge`]) and, for JPEG, an end-of-image marker after the first scan
/// ([`DecodeError::Truncated`]; zune-jpeg demands it too, libjpeg-turbo also decodes a complete file that
/// lacks only the marker, as PIL does). Cheap like [`probe`] (one pass over the bytes, nothing allocated on
/// success), for callers that keep the bytes as they are, such as the shard writer when copying: a file
/// it accepts may still hold damaged entropy-coded data, which only a decode finds.
pub fn check(bytes: &[u8], options: &DecodeOptions) -> Result<ImageInfo, DecodeError> {
    let checked = Checked::new(bytes, options)?;
    // Without decoding, a JPEG that lacks only its end-of-image marker (PIL decodes it) cannot be told
    // from one cut short (PIL refuses it): demand the marker, as the zune path of a decode does.
    if let Checked::Jpeg { header, .. } = &checked
        && !header.has_eoi(bytes)
    {
        return Err(jpeg::TRUNCATED);
    }
    Ok(checked.info())
}

/// A file that passed the header-level checks, with what decoding it needs. The one place those checks
/// are made: [`check`] and [`Decoder::decode_region`] both go through [`Checked::new`].
enum Checked {
    Jpeg { header: jpeg::Header, pixels: usize },
    Png { header: png::Header, pixels: usize },
}

impl Checked {
    fn new(bytes: &[u8], options: &DecodeOptions) -> Result<Checked, DecodeError> {
        match sniff(bytes)? {
            ImageFormat::Jpeg => {
                let header = jpeg::Header::read(bytes)?;
                let pixels = check_size(header.width(), header.height(), options)?;
                Ok(Checked::Jpeg { header, pixels })
            }
            ImageFormat::Png => {
                let header = png::Header::read(bytes)?;
                let pixels = check_size(header.width, header.height, options)?;
                Ok(Checked::Png { header, pixels })
            }
        }
    }

    fn info(&self) -> ImageInfo {
        match self {
            Checked::Jpeg { header, .. } => header.info(),
            Checked::Png { header, .. } => header.info(),
        }
    }
}

/// Decodes JPEG and PNG to RGB into buffers it keeps between images. One per thread.
#[derive(Debug, Default)]
pub struct Decoder {
    options: DecodeOptions,
    /// The RGB output handed out by [`Decoder::decode`].
    rgb: Vec<u8>,
    /// Codec output before conversion to RGB (CMYK planes, 16-bit or palette PNG rows).
    scratch: Vec<u8>,
}

impl Decoder {
    pub fn new(options: DecodeOptions) -> Self {
        Decoder {
            options,
            rgb: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn options(&self) -> &DecodeOptions {
        &self.options
    }

    /// Decodes `bytes` (JPEG or PNG, told apart by content) to RGB.
    ///
    /// The result borrows this decoder's buffer and is overwritten by the next call.
    /// Errors: see [`DecodeError`]; never panics on bad input, and refuses images over
    /// [`DecodeOptions::max_pixels`] from their header alone.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Image<'_>, DecodeError> {
        Ok(self.decode_region(bytes, whole)?.image)
    }

    /// Decodes at least the part of `bytes` that `pick` asks for, given the image's width and height.
    ///
    /// `pick` sees the size from the headers (after the size cap) and returns a box in full-image
    /// pixels, which is clamped to the image. It is called exactly once for every image that passes the
    /// header checks, whatever the backend, so it may draw random numbers. The result covers that box, and may cover more: the zune
    /// and PNG decoders always decode everything, libjpeg-turbo widens the box leftwards to a block
    /// boundary. Pixels inside the box are those a whole decode gives. Errors and the size cap are as for
    /// [`Decoder::decode`], except that with libjpeg-turbo damage confined to rows below the box may go
    /// unnoticed (they are never read).
    pub fn decode_region(
        &mut self,
        bytes: &[u8],
        pick: impl FnOnce(u32, u32) -> CropBox,
    ) -> Result<Region<'_>, DecodeError> {
        let mut warnings = 0;
        let (full_width, full_height, window) = match Checked::new(bytes, &self.options)? {
            Checked::Jpeg { header, pixels } => {
                let (width, height) = (header.width(), header.height());
                let want = clamp(pick(width, height), width, height);
                let window = match self.options.jpeg {
                    JpegBackend::Zune => {
                        // zune pads a scan that ends early with grey and says nothing: demand the
                        // end-of-image marker (libjpeg-turbo judges truncation itself, as PIL does).
                        if !header.has_eoi(bytes) {
                            return Err(jpeg::TRUNCATED);
                        }
                        jpeg::decode(bytes, &header, pixels, &mut self.rgb, &mut self.scratch)?;
                        whole(width, height)
                    }
                    JpegBackend::Turbo => {
                        let (window, warned) = self.turbo(bytes, &header, want)?;
                        warnings = warned;
                        window
                    }
                };
                (width, height, window)
            }
            Checked::Png { header, pixels } => {
                // Called for its effect on the caller (it may draw random numbers); PNG decodes whole.
                pick(header.width, header.height);
                png::decode(bytes, &header, pixels, &mut self.rgb, &mut self.scratch)?;
                (
                    header.width,
                    header.height,
                    whole(header.width, header.height),
                )
            }
        };
        let len = window.width as usize * window.height as usize * 3;
        Ok(Region {
            image: Image {
                width: window.width,
                height: window.height,
                pixels: &self.rgb[..len],
            },
            left: window.left,
            top: window.top,
            full_width,
            full_height,
            warnings,
        })
    }

    #[cfg(feature = "turbojpeg")]
    fn turbo(
        &mut self,
        bytes: &[u8],
        header: &jpeg::Header,
        want: CropBox,
    ) -> Result<(CropBox, u32), DecodeError> {
        turbo::Turbo::new()?.decode(bytes, header, want, &mut self.rgb, &mut self.scratch)
    }

    #[cfg(not(feature = "turbojpeg"))]
    fn turbo(
        &mut self,
        _: &[u8],
        _: &jpeg::Header,
        _: CropBox,
    ) -> Result<(CropBox, u32), DecodeError> {
        Err(DecodeError::BackendUnavailable)
    }
}

/// `b` cut to a `width` x `height` image, at least one pixel each way.
fn clamp(b: CropBox, width: u32, height: u32) -> CropBox {
    let left = b.left.min(width - 1);
    let top = b.top.min(height - 1);
    CropBox {
        left,
        top,
        width: b.width.clamp(1, width - left),
        height: b.height.clamp(1, height - top),
    }
}

/// The first `len` bytes of `buf`, growing it if needed. Never shrinks, so images of mixed sizes
/// neither reallocate nor re-zero; every caller overwrites the whole range.
fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// PIL's rounded `a * b / 255` (its `MULDIV255`), exact for all u8 inputs.
#[inline]
fn mul_div_255(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    ((t + (t >> 8)) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<DecodeError>();
        send_sync::<crate::Error>();
    }

    #[test]
    fn size_cap_edges() {
        let cap = DecodeOptions {
            max_pixels: 100,
            ..DecodeOptions::default()
        };
        assert_eq!(check_size(10, 10, &cap).unwrap(), 100);
        assert!(matches!(
            check_size(10, 11, &cap),
            Err(DecodeError::TooLarge {
                width: 10,
                height: 11,
                max_pixels: 100
            })
        ));
        let no_cap = DecodeOptions {
            max_pixels: u64::MAX,
            ..DecodeOptions::default()
        };
        assert!(check_size(u32::MAX, u32::MAX, &no_cap).is_err());
    }

    #[test]
    fn mul_div_255_is_rounded_division() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let exact = (f64::from(a) * f64::from(b) / 255.0).round() as u8;
                assert_eq!(mul_div_255(a, b), exact, "{a} * {b}");
            }
        }
    }
}
