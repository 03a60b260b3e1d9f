//! The image side of the shard writer: each sample read and, without re-encoding, checked as a decode
//! would check it; with [`Reencode`](super::Reencode), decoded, shrunk and encoded as JPEG.

use fast_image_resize as fir;

use super::{Chroma, ShardWriter};
use crate::decode::{self, Decoder, ImageFormat};
use crate::error::{Error, Result};
use crate::source::Source;

/// Per-thread scratch: one decoder and one resizer per worker, reused for every image.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    read: Vec<u8>,
    decoder: Decoder,
    resizer: Option<fir::Resizer>,
    resized: Vec<u8>,
}

/// A sample ready to go into a tar.
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) ext: &'static str,
    pub(super) data: Vec<u8>,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) original_bytes: usize,
}

impl ShardWriter {
    /// Reads (and re-encodes) sample `index`; runs on a pool thread.
    pub(super) fn encode(&self, source: &dyn Source, index: usize) -> Result<Encoded> {
        self.workers
            .with(|scratch| self.encode_with(scratch, source, index))?
    }

    fn encode_with(
        &self,
        scratch: &mut Scratch,
        source: &dyn Source,
        index: usize,
    ) -> Result<Encoded> {
        let Scratch {
            read,
            decoder,
            resizer,
            resized,
        } = scratch;
        let bytes = source.bytes(index, read)?;
        let original_bytes = bytes.len();
        let sample_err = |e| Error::Decode {
            sample: source.name(index),
            source: e,
        };
        let Some(r) = self.config.reencode else {
            // The checks a decode makes before any pixel work, so that a file the readers would refuse
            // (cut short, or a header declaring gigapixels) is not copied into the shards.
            let info = decode::check(bytes, decoder.options()).map_err(sample_err)?;
            let ext = if info.format == ImageFormat::Png {
                "png"
            } else {
                "jpg"
            };
            return Ok(Encoded {
                ext,
                data: bytes.to_vec(),
                width: info.width,
                height: info.height,
                original_bytes,
            });
        };
        let img = decoder.decode(bytes).map_err(sample_err)?;
        let (width, height) = (img.width, img.height);
        let (w, h) = fit(width, height, r.max_side);
        let fail = |e: &dyn std::fmt::Display| Error::Encode {
            sample: source.name(index),
            reason: e.to_string(),
        };
        let pixels: &[u8] = if (w, h) == (width, height) {
            img.pixels
        } else {
            let src = fir::images::ImageRef::new(width, height, img.pixels, fir::PixelType::U8x3)
                .map_err(|e| fail(&e))?;
            resized.resize(w as usize * h as usize * 3, 0);
            let mut dst = fir::images::Image::from_slice_u8(w, h, resized, fir::PixelType::U8x3)
                .map_err(|e| fail(&e))?;
            let options = fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Hamming));
            resizer
                .get_or_insert_with(fir::Resizer::new)
                .resize(&src, &mut dst, &options)
                .map_err(|e| fail(&e))?;
            resized
        };
        let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
            return Err(fail(&format!(
                "{w}x{h} is over JPEG's 65535-pixel side; set a maximum side"
            )));
        };
        let mut data = Vec::with_capacity(original_bytes.max(4096));
        // jpeg-encoder's own rule (Auto): full chroma (4:4:4) from quality 90, 4:2:0 (cheaper to decode)
        // below. Sharp colour edges lose ~3 dB to 4:2:0, which would take quality 90-95 under 35 dB PSNR.
        let mut encoder = jpeg_encoder::Encoder::new(&mut data, r.quality);
        match r.chroma {
            Chroma::Auto => {}
            Chroma::Full => encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4),
            Chroma::Half => encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0),
        }
        encoder
            .encode(pixels, w16, h16, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| fail(&e))?;
        Ok(Encoded {
            ext: "jpg",
            data,
            width,
            height,
            original_bytes,
        })
    }
}

/// Size with the longer side at most `max_side`: aspect kept, rounded, at least 1 pixel.
pub fn fit(width: u32, height: u32, max_side: Option<u32>) -> (u32, u32) {
    let Some(m) = max_side else {
        return (width, height);
    };
    let long = width.max(height);
    if long <= m {
        return (width, height);
    }
    let scale = |s: u32| {
        ((u64::from(s) * u64::from(m) + u64::from(long) / 2) / u64::from(long)).max(1) as u32
    };
    if width >= height {
        (m, scale(height))
    } else {
        (scale(width), m)
    }
}
