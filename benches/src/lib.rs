//! Shared pieces of the loader benchmarks: a corpus of realistic JPEGs made in memory, and a [`Source`]
//! over it, so that the criterion benches measure the CPU work and not the disk.
//!
//! The comparison with torchvision is not here but in `benches/compare` (see `BENCHMARKS.md`).

use imgfixtures::{Split, SynthConfig};
use imgloader::{Result, Source};

/// `n` photo-like JPEGs of ~500×375 (either orientation), quality 90, ~80 KB each: the same generator and
/// settings as `imgtool synth --style realistic`, so the same kind of image as the comparison's corpus.
pub fn realistic_jpegs(n: usize) -> Vec<Vec<u8>> {
    let cfg = SynthConfig::realistic();
    (0..n)
        .map(|i| {
            imgfixtures::synth_image(
                &cfg,
                i % cfg.classes,
                (i / cfg.classes) as u64,
                Split::Train,
            )
        })
        .collect()
}

/// Encoded images held in memory, one class.
#[derive(Debug)]
pub struct MemorySource {
    images: Vec<Vec<u8>>,
    classes: Vec<String>,
}

impl MemorySource {
    /// A source over `images` (encoded JPEG or PNG bytes), all labelled 0.
    pub fn new(images: Vec<Vec<u8>>) -> Self {
        MemorySource {
            images,
            classes: vec!["all".to_owned()],
        }
    }
}

impl Source for MemorySource {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> u32 {
        assert!(index < self.images.len(), "sample {index} out of range");
        0
    }
    fn bytes<'a>(&'a self, index: usize, _scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        Ok(&self.images[index])
    }
    fn name(&self, index: usize) -> String {
        format!("memory #{index}")
    }
}
