//! Training and validation augmentation with torchvision's semantics, written straight into batch slots.
//!
//! * Training is `RandomResizedCrop(size, scale, ratio)` + `RandomHorizontalFlip(flip_p)`: the crop box is
//!   chosen by exactly torchvision 0.26's `RandomResizedCrop.get_params` algorithm (given the same random
//!   draws it returns the same box, fallback included), then only that box is resized — bilinear with
//!   antialiasing, like PIL's `BILINEAR` and torchvision's `resize(antialias=True)` — and flipped.
//! * Validation is `Resize(resize)` (shorter side) + `CenterCrop(crop)`, done as one resize of the fractional
//!   source region that lands in the centre crop, so the rest of the image is never resized.
//!
//! Randomness is a pure function of (seed, epoch, sample index) through [`sample_rng`], so a run gives the
//! same pixels whatever the number of threads, processes or machines.
//!
//! Order of draws for one training sample (part of the reproducibility contract): the crop draws in
//! torchvision's order (per attempt: area `uniform`, log-ratio `uniform`, and on success `randint` for top then
//! left), then one `uniform(0, 1)` for the flip, drawn even when `flip_p` is 0 or 1.
//!
//! ```
//! use imgloader::{Augmenter, ImageView, TrainAugment, ValAugment, sample_rng};
//!
//! let pixels = vec![128u8; 640 * 480 * 3];
//! let img = ImageView { width: 640, height: 480, pixels: &pixels };
//! let mut aug = Augmenter::new(TrainAugment::default(), ValAugment::default())?;
//! let mut slot = vec![0u8; aug.train_output_len()]; // 224 x 224 x 3, normally a slot of a batch
//! let done = aug.train(img, &mut sample_rng(0, 3, 12345), &mut slot)?; // seed 0, epoch 3, sample 12345
//! assert!(done.crop.left + done.crop.width <= 640);
//! aug.val(img, &mut slot)?;
//! # Ok::<(), imgloader::Error>(())
//! ```

use fast_image_resize as fir;
use rand::RngCore;

pub use crate::decode::CropBox;
use crate::decode::{Image, Region};
use crate::error::{Error, Result};
use crate::rng::below;
pub use crate::rng::{SampleRng, sample_rng};

/// ImageNet channel means (RGB, on the 0–1 scale), as torchvision's reference scripts use them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB, on the 0–1 scale).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A borrowed, decoded RGB image: `height` rows of `width` pixels, 3 bytes each, no row padding. The same
/// type the [`Decoder`](crate::Decoder) hands out.
pub type ImageView<'a> = Image<'a>;

fn check_image(img: &ImageView<'_>) -> Result<()> {
    if img.width == 0 || img.height == 0 {
        return Err(Error::Shape {
            what: "source image",
            reason: format!(
                "is {}x{} pixels; it must not be empty",
                img.width, img.height
            ),
        });
    }
    let want = img.width as usize * img.height as usize * 3;
    if img.pixels.len() != want {
        return Err(Error::Shape {
            what: "source image",
            reason: format!(
                "has {} bytes, but {}x{} RGB needs {want}",
                img.pixels.len(),
                img.width,
                img.height
            ),
        });
    }
    Ok(())
}

/// The whole of a decoded image as a [`Region`].
fn whole_region(img: ImageView<'_>) -> Region<'_> {
    Region {
        image: img,
        left: 0,
        top: 0,
        full_width: img.width,
        full_height: img.height,
        warnings: 0,
    }
}

/// What [`Augmenter::train`] did to one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrainParams {
    pub crop: CropBox,
    pub flipped: bool,
}

/// A source region with fractional edges, in source pixels (what [`Augmenter::val`] resizes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

// ---------------------------------------------------------------------------------------------------------
// Randomness

/// Where the random numbers of an augmentation come from.
///
/// Every [`RngCore`] is one (production uses [`sample_rng`]); tests implement it to replay the exact draws
/// torchvision made, which is how the crop algorithm is checked against torchvision's own code.
pub trait DrawSource {
    /// A real number in `[lo, hi)` (like `torch.empty(1).uniform_(lo, hi)`).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64;
    /// An integer in `lo..hi_exclusive` (like `torch.randint(lo, hi_exclusive, (1,))`).
    fn randint(&mut self, lo: i64, hi_exclusive: i64) -> i64;
}

impl<R: RngCore + ?Sized> DrawSource for R {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        // 53 random bits, exactly representable: u in [0, 1).
        let u = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        lo + (hi - lo) * u
    }

    fn randint(&mut self, lo: i64, hi_exclusive: i64) -> i64 {
        if hi_exclusive <= lo {
            return lo;
        }
        let span = hi_exclusive.wrapping_sub(lo) as u64;
        lo.wrapping_add(below(self, span) as i64)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Configuration

/// `RandomResizedCrop` + `RandomHorizontalFlip` settings; `Default` is torchvision's ImageNet recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainAugment {
    /// Output `(height, width)`, like torchvision's `size`.
    pub size: (u32, u32),
    /// Bounds of the crop's area as a fraction of the image's area.
    pub scale: (f64, f64),
    /// Bounds of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip_p: f64,
}

impl Default for TrainAugment {
    fn default() -> Self {
        Self {
            size: (224, 224),
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
        }
    }
}

fn config_err(what: &'static str, reason: String) -> Error {
    Error::Config { what, reason }
}

impl TrainAugment {
    /// Checks that every value is usable; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let (h, w) = self.size;
        if h == 0 || w == 0 {
            return Err(config_err(
                "train size",
                format!("{h}x{w} (height x width) must not be empty"),
            ));
        }
        let (s0, s1) = self.scale;
        if !(s0.is_finite() && s1.is_finite() && s0 > 0.0 && s0 <= s1) {
            return Err(config_err(
                "train scale",
                format!("({s0}, {s1}) must be finite with 0 < min <= max"),
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0.is_finite() && r1.is_finite() && r0 > 0.0 && r0 <= r1) {
            return Err(config_err(
                "train ratio",
                format!("({r0}, {r1}) must be finite with 0 < min <= max"),
            ));
        }
        if !(0.0..=1.0).contains(&self.flip_p) {
            return Err(config_err(
                "train flip_p",
                format!("{} is not a probability in [0, 1]", self.flip_p),
            ));
        }
        Ok(())
    }

    /// The crop box for a `width` x `height` image; see [`random_resized_crop_params`].
    pub fn crop_params(
        &self,
        width: u32,
        height: u32,
        draws: &mut (impl DrawSource + ?Sized),
    ) -> CropBox {
        random_resized_crop_params(width, height, self.scale, self.ratio, draws)
    }
}

/// `Resize(resize)` + `CenterCrop(crop)` settings; `Default` is 256 / 224.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValAugment {
    /// Length the shorter side is resized to.
    pub resize: u32,
    /// Side of the square centre crop taken from the resized image.
    pub crop: u32,
}

impl Default for ValAugment {
    fn default() -> Self {
        Self {
            resize: 256,
            crop: 224,
        }
    }
}

impl ValAugment {
    /// Checks that every value is usable; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.resize == 0 {
            return Err(config_err("val resize", "0 must be at least 1".into()));
        }
        if self.crop == 0 {
            return Err(config_err("val crop", "0 must be at least 1".into()));
        }
        if self.crop > self.resize {
            // torchvision would pad with black; nobody wants that for evaluation.
            return Err(config_err(
                "val crop",
                format!(
                    "{} is larger than the resized shorter side {}",
                    self.crop, self.resize
                ),
            ));
        }
        Ok(())
    }

    /// The region of a `width` x `height` source that torchvision's `Resize` then `CenterCrop` keeps.
    ///
    /// `Resize` makes the shorter side `resize` and the longer `int(resize * long / short)` (truncated);
    /// `CenterCrop` starts at `int(round((resized - crop) / 2))` (Python rounds half to even). Mapping that
    /// square back through the resize scale gives the box; resizing the box alone to `crop` x `crop` uses the
    /// same scale and the same sample centres as the two-step version, and no pixels outside it are wasted.
    pub fn source_box(&self, width: u32, height: u32) -> SourceBox {
        let (w, h) = (u64::from(width), u64::from(height));
        let r = u64::from(self.resize);
        let (new_w, new_h) = if w <= h {
            // Python: int(resize * long / short), exact ints, one correctly rounded division, truncation.
            (r, ((r * h) as f64 / w as f64) as u64)
        } else {
            (((r * w) as f64 / h as f64) as u64, r)
        };
        let c = f64::from(self.crop);
        let crop_left = ((new_w as f64 - c) / 2.0).round_ties_even();
        let crop_top = ((new_h as f64 - c) / 2.0).round_ties_even();
        let (sx, sy) = (w as f64 / new_w as f64, h as f64 / new_h as f64);
        let left = crop_left * sx;
        let top = crop_top * sy;
        // Clamp away the last-ulp overshoot so the box never leaves the image.
        SourceBox {
            left,
            top,
            width: (c * sx).min(w as f64 - left),
            height: (c * sy).min(h as f64 - top),
        }
    }
}

/// torchvision 0.26 `RandomResizedCrop.get_params`, step for step, on draws from `draws`.
///
/// Up to 10 attempts: area `uniform(scale)` times the image area, aspect `exp(uniform(ln ratio))`,
/// `w = round(sqrt(area * aspect))`, `h = round(sqrt(area / aspect))` (round half to even, as Python); the
/// first that fits gets `top = randint(0, height - h + 1)`, `left = randint(0, width - w + 1)`. Otherwise the
/// centre crop of the whole image with its aspect ratio clamped into `ratio`. Where torchvision works in
/// float32 (`torch.log(torch.tensor(ratio))`, `torch.exp` of a float32 draw) we do too, so the same draws give
/// the same box. Differences: where torchvision's fallback would return an empty box (only possible with
/// ratio bounds far from 1 on a 1-pixel-wide or -tall image) the side is 1 instead; and our float32 exp is
/// correctly rounded where torch's may be 1 ulp off, which matters only for draws within ~1e-7 of a
/// rounding tie.
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    draws: &mut (impl DrawSource + ?Sized),
) -> CropBox {
    let (wf, hf) = (f64::from(width), f64::from(height));
    let area = wf * hf;
    let log_lo = f64::from((ratio.0 as f32).ln());
    let log_hi = f64::from((ratio.1 as f32).ln());
    for _ in 0..10 {
        let target_area = area * draws.uniform(scale.0, scale.1);
        // float32 like torch, but correctly rounded: torch's vectorised float32 exp may be 1 ulp off
        // (depending on the CPU), which could move a box only when sqrt(area * aspect) is within ~1e-7 of
        // k + 0.5; our own stream never has to reproduce torch's draws, so we stay platform-independent.
        let aspect = f64::from(f64::from(draws.uniform(log_lo, log_hi) as f32).exp() as f32);
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if 0.0 < w && w <= wf && 0.0 < h && h <= hf {
            let (w, h) = (w as u32, h as u32);
            let top = clamped_randint(draws, height - h + 1);
            let left = clamped_randint(draws, width - w + 1);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = wf / hf;
    let (rmin, rmax) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < rmin {
        (
            width,
            ((wf / rmin).round_ties_even() as u32).clamp(1, height),
        )
    } else if in_ratio > rmax {
        (
            ((hf * rmax).round_ties_even() as u32).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// `randint(0, n)` forced into range, so a misbehaving [`DrawSource`] cannot push the box off the image.
fn clamped_randint(draws: &mut (impl DrawSource + ?Sized), n: u32) -> u32 {
    draws.randint(0, i64::from(n)).clamp(0, i64::from(n) - 1) as u32
}

// ---------------------------------------------------------------------------------------------------------
// Pixels

/// Crops, resizes and flips images into caller-provided slots. One per worker: it owns the resizer's
/// scratch buffers and reuses them for every image.
#[derive(Debug)]
pub struct Augmenter {
    train: TrainAugment,
    val: ValAugment,
    resizer: fir::Resizer,
    options: fir::ResizeOptions,
}

impl Augmenter {
    /// An augmenter for these settings, after checking them.
    pub fn new(train: TrainAugment, val: ValAugment) -> Result<Self> {
        train.validate()?;
        val.validate()?;
        Ok(Self {
            train,
            val,
            resizer: fir::Resizer::new(),
            // Convolution (not Interpolation) widens the kernel when shrinking: PIL's antialiased bilinear.
            options: fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear)),
        })
    }

    /// The training settings.
    pub fn train_config(&self) -> &TrainAugment {
        &self.train
    }

    /// The validation settings.
    pub fn val_config(&self) -> &ValAugment {
        &self.val
    }

    /// Bytes of one training output slot (`height * width * 3`).
    pub fn train_output_len(&self) -> usize {
        self.train.size.0 as usize * self.train.size.1 as usize * 3
    }

    /// Bytes of one validation output slot (`crop * crop * 3`).
    pub fn val_output_len(&self) -> usize {
        self.val.crop as usize * self.val.crop as usize * 3
    }

    /// RandomResizedCrop + RandomHorizontalFlip of `img` into `out` (u8 HWC RGB, [`Self::train_output_len`]
    /// bytes), with randomness from `draws` (normally [`sample_rng`]; order in the module docs).
    pub fn train(
        &mut self,
        img: ImageView<'_>,
        draws: &mut (impl DrawSource + ?Sized),
        out: &mut [u8],
    ) -> Result<TrainParams> {
        check_image(&img)?;
        check_slot(out, self.train.size)?;
        let params = self.train_params(img.width, img.height, draws);
        self.train_region(whole_region(img), params, out)?;
        Ok(params)
    }

    /// The crop and flip [`Self::train`] draws for a `width` x `height` image, without touching pixels: decide
    /// first, then decode only the crop ([`Decoder::decode_region`](crate::Decoder::decode_region)) and finish
    /// with [`Self::train_region`].
    pub fn train_params(
        &self,
        width: u32,
        height: u32,
        draws: &mut (impl DrawSource + ?Sized),
    ) -> TrainParams {
        let crop = self.train.crop_params(width, height, draws);
        let flipped = draws.uniform(0.0, 1.0) < self.train.flip_p;
        TrainParams { crop, flipped }
    }

    /// The second half of [`Self::train`]: crops `params.crop` (in full-image pixels) out of `region`, which must
    /// cover it, resizes and flips it into `out`. The same pixels as [`Self::train`] on the whole image.
    pub fn train_region(
        &mut self,
        region: Region<'_>,
        params: TrainParams,
        out: &mut [u8],
    ) -> Result<()> {
        let crop = params.crop;
        if !region.covers(crop) {
            return Err(Error::Shape {
                what: "crop box",
                reason: format!(
                    "{crop:?} is not inside the decoded region {}x{} at ({}, {})",
                    region.image.width, region.image.height, region.left, region.top
                ),
            });
        }
        let local = CropBox {
            left: crop.left - region.left,
            top: crop.top - region.top,
            ..crop
        };
        self.resized_crop(region.image, local, self.train.size, params.flipped, out)
    }

    /// Resize(shorter side) + CenterCrop of `img` into `out` (u8 HWC RGB, [`Self::val_output_len`] bytes).
    /// Returns the source region used ([`ValAugment::source_box`]).
    pub fn val(&mut self, img: ImageView<'_>, out: &mut [u8]) -> Result<SourceBox> {
        self.val_region(whole_region(img), out)
    }

    /// The pixels of a `width` x `height` image that [`Self::val`] reads: the source box plus the reach of the
    /// resize filter, so that decoding just this box ([`Decoder::decode_region`](crate::Decoder::decode_region))
    /// and calling [`Self::val_region`] gives what a whole decode does.
    pub fn val_input_box(&self, width: u32, height: u32) -> CropBox {
        let b = self.val.source_box(width, height);
        let side = f64::from(self.val.crop);
        // The antialiased bilinear kernel reaches `scale` source pixels either side of a sample centre (one
        // when enlarging); a pixel more absorbs rounding in the window bounds.
        let reach_x = (b.width / side).max(1.0).ceil() + 1.0;
        let reach_y = (b.height / side).max(1.0).ceil() + 1.0;
        let span = |lo: f64, len: f64, reach: f64, full: u32| {
            let start = (lo - reach).floor().max(0.0) as u32;
            let end = ((lo + len + reach).ceil() as u32).min(full);
            (start, end - start)
        };
        let (left, w) = span(b.left, b.width, reach_x, width);
        let (top, h) = span(b.top, b.height, reach_y, height);
        CropBox {
            top,
            left,
            height: h,
            width: w,
        }
    }

    /// [`Self::val`] on part of a decoded image, which must cover [`Self::val_input_box`] (a whole image does).
    pub fn val_region(&mut self, region: Region<'_>, out: &mut [u8]) -> Result<SourceBox> {
        let img = region.image;
        check_image(&img)?;
        let side = self.val.crop;
        check_slot(out, (side, side))?;
        let need = self.val_input_box(region.full_width, region.full_height);
        if !region.covers(need) {
            return Err(Error::Shape {
                what: "decoded region",
                reason: format!(
                    "{}x{} at ({}, {}) does not cover the validation input {need:?}",
                    img.width, img.height, region.left, region.top
                ),
            });
        }
        let b = self.val.source_box(region.full_width, region.full_height);
        let src = src_image(img)?;
        let mut dst = dst_image(out, (side, side))?;
        // A fractional crop box here samples pixels just outside the box where the filter reaches them,
        // exactly as the full-image resize followed by a crop does.
        let options = self.options.crop(
            b.left - f64::from(region.left),
            b.top - f64::from(region.top),
            b.width,
            b.height,
        );
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(resize_err)?;
        Ok(b)
    }

    /// Crops `crop` out of `img`, resizes it to `size` = (height, width) and optionally flips it, into `out`.
    ///
    /// Like torchvision's `resized_crop` (crop first, then resize): pixels outside the box are never read,
    /// not even by the filter at its edges.
    pub fn resized_crop(
        &mut self,
        img: ImageView<'_>,
        crop: CropBox,
        size: (u32, u32),
        flip: bool,
        out: &mut [u8],
    ) -> Result<()> {
        check_image(&img)?;
        check_slot(out, size)?;
        if crop.width == 0 || crop.height == 0 {
            return Err(Error::Shape {
                what: "crop box",
                reason: format!("{crop:?} is empty"),
            });
        }
        let src = src_image(img)?;
        let cropped =
            fir::images::CroppedImage::new(&src, crop.left, crop.top, crop.width, crop.height)
                .map_err(|e| Error::Shape {
                    what: "crop box",
                    reason: format!("{crop:?} on a {}x{} image: {e}", img.width, img.height),
                })?;
        let mut dst = dst_image(out, size)?;
        self.resizer
            .resize(&cropped, &mut dst, &self.options)
            .map_err(resize_err)?;
        if flip {
            flip_horizontal(out, size.1 as usize);
        }
        Ok(())
    }
}

fn check_slot(out: &[u8], (h, w): (u32, u32)) -> Result<()> {
    let want = h as usize * w as usize * 3;
    if out.len() != want {
        return Err(Error::Shape {
            what: "output slot",
            reason: format!("has {} bytes, but {h}x{w} RGB needs {want}", out.len()),
        });
    }
    Ok(())
}

fn src_image(img: ImageView<'_>) -> Result<fir::images::ImageRef<'_>> {
    fir::images::ImageRef::new(img.width, img.height, img.pixels, fir::PixelType::U8x3).map_err(
        |e| Error::Shape {
            what: "source image",
            reason: format!("{}x{}: {e}", img.width, img.height),
        },
    )
}

fn dst_image(out: &mut [u8], (h, w): (u32, u32)) -> Result<fir::images::Image<'_>> {
    fir::images::Image::from_slice_u8(w, h, out, fir::PixelType::U8x3).map_err(|e| Error::Shape {
        what: "output slot",
        reason: format!("{h}x{w}: {e}"),
    })
}

fn resize_err(e: fir::ResizeError) -> Error {
    Error::Shape {
        what: "resize",
        reason: e.to_string(),
    }
}

/// Mirrors each row of a u8 HWC RGB image in place.
fn flip_horizontal(pixels: &mut [u8], width: usize) {
    for row in pixels.chunks_exact_mut(width * 3) {
        // As whole pixels, the reversal compiles to wide loads and shuffles instead of byte swaps (~2.5%
        // of a training sample's CPU time before).
        bytemuck::cast_slice_mut::<u8, [u8; 3]>(row).reverse();
    }
}

/// u8 HWC RGB (`h * w * 3` bytes) to f32 CHW, `(x / 255 - mean[c]) / std[c]` like torchvision's `ToTensor`
/// then `Normalize`, for users who normalise on the CPU. `out` holds `3 * h * w` floats (one image of an
/// NCHW batch: pass the image's sub-slice).
pub fn normalize_to_nchw_f32(
    hwc_u8: &[u8],
    h: u32,
    w: u32,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut [f32],
) -> Result<()> {
    let plane = h as usize * w as usize;
    if hwc_u8.len() != plane * 3 {
        return Err(Error::Shape {
            what: "normalize input",
            reason: format!(
                "has {} bytes, but {h}x{w} RGB needs {}",
                hwc_u8.len(),
                plane * 3
            ),
        });
    }
    if out.len() != plane * 3 {
        return Err(Error::Shape {
            what: "normalize output",
            reason: format!(
                "has {} floats, but 3x{h}x{w} needs {}",
                out.len(),
                plane * 3
            ),
        });
    }
    if let Some(c) = std.iter().position(|s| !(s.is_finite() && *s != 0.0)) {
        return Err(config_err(
            "normalize std",
            format!("channel {c} is {}", std[c]),
        ));
    }
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    // (x/255 - m)/s == x * (1/(255 s)) - m/s: one multiply-add per value.
    let k = std.map(|s| 1.0 / (255.0 * s));
    let o = [mean[0] / std[0], mean[1] / std[1], mean[2] / std[2]];
    for (((px, r), g), b) in hwc_u8.chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = f32::from(px[0]) * k[0] - o[0];
        *g = f32::from(px[1]) * k[1] - o[1];
        *b = f32::from(px[2]) * k[2] - o[2];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_mirrors_pixels() {
        // 3 pixels wide, 2 rows.
        let mut px: Vec<u8> = (0..18).collect();
        flip_horizontal(&mut px, 3);
        assert_eq!(
            px,
            [6, 7, 8, 3, 4, 5, 0, 1, 2, 15, 16, 17, 12, 13, 14, 9, 10, 11]
        );
    }
}
