//! The toolkit's randomness, in one place: every random choice is a pure function of a seed and a position
//! (epoch, sample index), never of threads, workers or timing, so runs repeat exactly whatever the
//! parallelism. ChaCha8 gives the streams (its output is fixed by its specification: stable across builds
//! and platforms); [`below`] and [`shuffle`] turn them into integers and permutations by algorithms that
//! are ours, since their values are part of the reproducibility contract.
//!
//! Users: the augmenter ([`sample_rng`] per sample), the distributed sampler and the shard writer
//! ([`shuffle`], each on a stream of its own), the loader's choice of substitutes for bad samples.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random-number generator of one sample; see [`sample_rng`].
#[derive(Debug, Clone)]
pub struct SampleRng(ChaCha8Rng);

impl RngCore for SampleRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function: a bijection on `u64` that mixes every input bit into every output bit.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A ChaCha8 key made from two words. `w0 = mix64(a + γ)` is a bijection of `a`, and `w1 = mix64(w0 ^ (b + γ))`
/// a bijection of `b` once `w0` is fixed, so distinct `(a, b)` pairs give distinct keys.
pub(crate) fn chacha_key(a: u64, b: u64) -> [u8; 32] {
    let w0 = mix64(a.wrapping_add(GOLDEN_GAMMA));
    let w1 = mix64(w0 ^ b.wrapping_add(GOLDEN_GAMMA));
    let w2 = mix64(w1.wrapping_add(GOLDEN_GAMMA));
    let w3 = mix64(w2.wrapping_add(GOLDEN_GAMMA));
    let mut key = [0u8; 32];
    for (chunk, w) in key.chunks_exact_mut(8).zip([w0, w1, w2, w3]) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    key
}

/// The generator for sample `index` of `epoch` in a run seeded with `seed`.
///
/// ChaCha8 keyed by `(seed, epoch)` (see `chacha_key`: distinct pairs give distinct keys) on stream `index`.
/// Distinct `(seed, epoch, index)` triples therefore get distinct ChaCha keystreams, which are independent
/// for all practical purposes, and the value depends on nothing else: not the thread, the worker or the
/// order samples are processed in. ChaCha's output is fixed by its specification, so the stream is stable
/// across builds and platforms.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> SampleRng {
    let mut rng = ChaCha8Rng::from_seed(chacha_key(seed, epoch));
    rng.set_stream(index);
    SampleRng(rng)
}

/// A uniform integer in `0..n` (`n > 0`) by Lemire's multiply-and-reject: unbiased, and (unlike a library's
/// `random_range`) its values are part of our reproducibility contract, so it is ours.
pub(crate) fn below(rng: &mut (impl RngCore + ?Sized), n: u64) -> u64 {
    debug_assert!(n > 0);
    let mut m = u128::from(rng.next_u64()) * u128::from(n);
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (m >> 64) as u64
}

/// Shuffles `items` in place by Fisher–Yates on ChaCha8 keyed by `seed` on stream `stream`: a uniformly
/// random permutation fixed by `(seed, stream)`. Callers use distinct streams so that their permutations
/// never coincide with each other or with the per-sample streams (which use key `(seed, epoch)`).
pub(crate) fn shuffle<T>(items: &mut [T], seed: u64, stream: u64) {
    let mut rng = ChaCha8Rng::from_seed(chacha_key(seed, 0));
    rng.set_stream(stream);
    for i in (1..items.len()).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut rng = sample_rng(1, 2, 3);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[below(&mut rng, 7) as usize] += 1;
        }
        // Each bucket expects 1000; 800 is > 6 sigma away.
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn chacha_key_separates_seed_and_epoch() {
        assert_ne!(chacha_key(0, 1), chacha_key(1, 0));
        assert_ne!(chacha_key(0, 0), chacha_key(0, 1));
    }

    #[test]
    fn shuffle_is_a_permutation_fixed_by_seed_and_stream() {
        let shuffled = |seed, stream| {
            let mut v: Vec<u32> = (0..50).collect();
            shuffle(&mut v, seed, stream);
            v
        };
        let a = shuffled(3, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, shuffled(3, 1));
        assert_ne!(a, shuffled(3, 2));
        assert_ne!(a, shuffled(4, 1));
        assert_ne!(a, (0..50).collect::<Vec<_>>());
    }
}
