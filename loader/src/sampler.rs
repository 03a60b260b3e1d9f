//! Which sample indices each process (rank) reads, for training and for validation.
//!
//! [`DistributedSampler`] follows PyTorch's `torch.utils.data.DistributedSampler`: every rank gets the same
//! number of indices per epoch (padding with repeats or dropping the tail), so all ranks run the same number
//! of steps. [`PartitionSampler`] is the exact split for evaluation: every index once, on one rank.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::rng::shuffle;

fn check_rank(rank: usize, world: usize) -> Result<()> {
    if world == 0 {
        return Err(Error::Config {
            what: "world size",
            reason: "0; it must be at least 1".into(),
        });
    }
    if rank >= world {
        return Err(Error::Config {
            what: "rank",
            reason: format!("{rank} is not below the world size {world}"),
        });
    }
    Ok(())
}

/// PyTorch `DistributedSampler` semantics over `len` samples.
///
/// Per epoch: the indices `0..len`, shuffled (if `shuffle`) by a permutation that depends only on
/// `seed + epoch` (wrapping; as in PyTorch, seed 1 epoch 0 equals seed 0 epoch 1; the permutation is our own
/// Fisher–Yates on ChaCha8, not `torch.randperm`'s); then, without `drop_last`, padded to a multiple of
/// `world` by repeating the list from its start (as many times as needed when `len < world`), or with
/// `drop_last` truncated to one; rank `r` takes positions `r, r + world, r + 2 world, …`.
#[derive(Debug, Clone)]
pub struct DistributedSampler {
    len: usize,
    rank: usize,
    world: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
    num_samples: usize,
}

impl DistributedSampler {
    /// A sampler for rank `rank` of `world`; errors if `world` is 0 or `rank >= world`.
    pub fn new(
        len: usize,
        rank: usize,
        world: usize,
        shuffle: bool,
        seed: u64,
        drop_last: bool,
    ) -> Result<Self> {
        check_rank(rank, world)?;
        // PyTorch: drop_last -> ceil((len - world) / world) when len % world != 0, which is len / world
        // (0 when len < world); otherwise ceil(len / world).
        let num_samples = if drop_last {
            len / world
        } else {
            len.div_ceil(world)
        };
        Ok(Self {
            len,
            rank,
            world,
            shuffle,
            seed,
            drop_last,
            num_samples,
        })
    }

    /// Indices this rank reads per epoch (the same for every rank and epoch).
    pub fn num_samples(&self) -> usize {
        self.num_samples
    }

    /// Indices all ranks read together per epoch: `num_samples * world`.
    pub fn total_size(&self) -> usize {
        self.num_samples * self.world
    }

    /// Number of samples in the dataset.
    pub fn dataset_len(&self) -> usize {
        self.len
    }

    /// This rank's indices for `epoch`.
    pub fn indices(&self, epoch: u64) -> Vec<usize> {
        let mut out = Vec::new();
        self.fill_indices(epoch, &mut out);
        out
    }

    /// This rank's indices for `epoch`, into `out` (cleared first), reusing its allocation.
    pub fn fill_indices(&self, epoch: u64, out: &mut Vec<usize>) {
        self.fill_indices_from(epoch, 0, out)
            .expect("position 0 is always valid");
    }

    /// This rank's indices for the rest of `epoch` once `consumed` positions of the epoch's global list
    /// (all ranks together) have been read: the positions `consumed + rank`, `consumed + rank + world`, ….
    /// Every rank of any world size that divides `consumed` continues with the same remaining samples:
    /// together, the ranks' next `k` indices are the global list's positions `consumed .. consumed + k *
    /// world`. Errors unless `consumed` is a multiple of the world size and at most [`Self::total_size`].
    pub fn indices_from(&self, epoch: u64, consumed: usize) -> Result<Vec<usize>> {
        let mut out = Vec::new();
        self.fill_indices_from(epoch, consumed, &mut out)?;
        Ok(out)
    }

    fn fill_indices_from(&self, epoch: u64, consumed: usize, out: &mut Vec<usize>) -> Result<()> {
        out.clear();
        if !consumed.is_multiple_of(self.world) || consumed > self.total_size() {
            return Err(Error::Config {
                what: "position in the epoch",
                reason: format!(
                    "{consumed} samples consumed: not a multiple of the world size {} within the epoch's {}",
                    self.world,
                    self.total_size()
                ),
            });
        }
        if self.num_samples == 0 {
            return Ok(());
        }
        out.reserve(self.num_samples - consumed / self.world);
        // Position p of the padded list is element p % len of the (shuffled) base list: padding repeats the
        // list from its start, as often as needed; truncation just stops early.
        let positions = (consumed + self.rank..self.total_size()).step_by(self.world);
        if self.shuffle {
            let perm = permutation(self.len, self.seed.wrapping_add(epoch));
            out.extend(positions.map(|p| perm[p % self.len]));
        } else {
            out.extend(positions.map(|p| p % self.len));
        }
        Ok(())
    }

    /// Whether the tail is dropped instead of padded.
    pub fn drop_last(&self) -> bool {
        self.drop_last
    }
}

/// A uniformly random permutation of `0..len` fixed by `seed` (stream 1 of [`shuffle`]).
fn permutation(len: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..len).collect();
    shuffle(&mut perm, seed, 1);
    perm
}

/// The exact, unpadded split of `0..len` over `world` ranks, for validation: every index on exactly one rank.
///
/// Shares are contiguous: the first `len % world` ranks get `len / world + 1` indices, the rest
/// `len / world`, in rank order (so rank 0 reads `0..k`, rank 1 the next block, …). Contiguous blocks keep each
/// rank's reads local in an archive stored in order. Ranks may therefore run one step more or less than
/// each other; the caller reduces metrics with sums, not means of means.
#[derive(Debug, Clone)]
pub struct PartitionSampler {
    range: Range<usize>,
}

impl PartitionSampler {
    /// The share of rank `rank` of `world`; errors if `world` is 0 or `rank >= world`.
    pub fn new(len: usize, rank: usize, world: usize) -> Result<Self> {
        check_rank(rank, world)?;
        let (base, extra) = (len / world, len % world);
        let start = rank * base + rank.min(extra);
        let end = start + base + usize::from(rank < extra);
        Ok(Self { range: start..end })
    }

    /// This rank's indices.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Number of indices of this rank.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether this rank has no indices (more ranks than samples).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuing_from_a_position_keeps_the_remaining_samples_on_any_world_size() {
        let (len, seed, epoch) = (48, 5, 2);
        // The global order: one rank reads it whole.
        let all = DistributedSampler::new(len, 0, 1, true, seed, false)
            .unwrap()
            .indices(epoch);
        for world in [1, 2, 3, 4, 6] {
            for consumed in (0..=len).step_by(12) {
                let mut steps: Vec<Vec<usize>> = Vec::new();
                for rank in 0..world {
                    let s = DistributedSampler::new(len, rank, world, true, seed, false).unwrap();
                    let rest = s.indices_from(epoch, consumed).unwrap();
                    // Rank r's j-th index is global position consumed + j * world + r.
                    for (j, &i) in rest.iter().enumerate() {
                        assert_eq!(
                            i,
                            all[consumed + j * world + rank],
                            "world {world} rank {rank}"
                        );
                    }
                    steps.push(rest);
                }
                let seen: usize = steps.iter().map(Vec::len).sum();
                assert_eq!(seen, len - consumed);
            }
        }
        let s = DistributedSampler::new(len, 1, 4, true, seed, false).unwrap();
        assert_eq!(s.indices_from(epoch, 0).unwrap(), s.indices(epoch));
        for bad in [6, 52] {
            let e = s.indices_from(epoch, bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid position in the epoch: "), "{e}");
        }
    }

    #[test]
    fn permutation_is_a_permutation() {
        for len in [0, 1, 2, 7, 100] {
            let mut p = permutation(len, 42);
            p.sort_unstable();
            assert_eq!(p, (0..len).collect::<Vec<_>>());
        }
    }
}
