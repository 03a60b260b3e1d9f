//! Sampler invariants over many (len, world, seed, epoch) combinations, and PyTorch's DistributedSampler
//! for the unshuffled assignment.

use std::collections::HashMap;

use crate::support::{ref_python, run_ref};
use imgloader::{DistributedSampler, Error, PartitionSampler};

/// Lengths around the interesting edges: empty, smaller than the world, multiples and non-multiples.
const LENS: [usize; 14] = [0, 1, 2, 3, 5, 7, 8, 10, 16, 31, 64, 100, 257, 1000];
const WORLDS: [usize; 7] = [1, 2, 3, 4, 7, 8, 16];

fn all_ranks(
    len: usize,
    world: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
    epoch: u64,
) -> Vec<Vec<usize>> {
    (0..world)
        .map(|r| {
            DistributedSampler::new(len, r, world, shuffle, seed, drop_last)
                .unwrap()
                .indices(epoch)
        })
        .collect()
}

#[test]
fn distributed_ranks_cover_the_dataset_evenly() {
    for len in LENS {
        for world in WORLDS {
            for drop_last in [false, true] {
                for shuffle in [false, true] {
                    for (seed, epoch) in [(0u64, 0u64), (0, 1), (12345, 7), (u64::MAX, 2)] {
                        let ranks = all_ranks(len, world, shuffle, seed, drop_last, epoch);
                        let s = DistributedSampler::new(len, 0, world, shuffle, seed, drop_last)
                            .unwrap();
                        let ctx = format!(
                            "len {len} world {world} drop_last {drop_last} shuffle {shuffle} seed {seed} epoch {epoch}"
                        );
                        // Equal sizes on every rank, the documented total.
                        for r in &ranks {
                            assert_eq!(r.len(), s.num_samples(), "{ctx}");
                        }
                        assert_eq!(s.total_size(), s.num_samples() * world, "{ctx}");
                        let mut counts: HashMap<usize, usize> = HashMap::new();
                        for &i in ranks.iter().flatten() {
                            assert!(i < len, "{ctx}: index {i} out of range");
                            *counts.entry(i).or_default() += 1;
                        }
                        if drop_last {
                            // Truncated: no index twice, and at most world - 1 indices left out.
                            assert_eq!(s.num_samples(), len / world, "{ctx}");
                            assert!(counts.values().all(|&c| c == 1), "{ctx}: duplicate");
                            assert!(
                                len - counts.len() < world,
                                "{ctx}: dropped {}",
                                len - counts.len()
                            );
                        } else {
                            // Padded: every index at least once; repeats only as padding, spread evenly.
                            assert_eq!(s.num_samples(), len.div_ceil(world), "{ctx}");
                            assert_eq!(counts.len(), len, "{ctx}: some index missing");
                            let padding: usize = counts.values().map(|c| c - 1).sum();
                            assert_eq!(padding, s.total_size() - len, "{ctx}");
                            let most = counts.values().max().copied().unwrap_or(0);
                            let least = counts.values().min().copied().unwrap_or(0);
                            assert!(most - least <= 1, "{ctx}: counts from {least} to {most}");
                            // Within a rank an index repeats only when the list had to wrap more than once.
                            if len >= world {
                                for r in &ranks {
                                    let mut v = r.clone();
                                    v.sort_unstable();
                                    v.dedup();
                                    assert_eq!(v.len(), r.len(), "{ctx}: repeat within a rank");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn distributed_shuffle_is_deterministic_and_changes_with_epoch() {
    for len in [10usize, 100, 1000] {
        for world in [1usize, 3, 8] {
            let s = DistributedSampler::new(len, world - 1, world, true, 99, false).unwrap();
            let again = DistributedSampler::new(len, world - 1, world, true, 99, false).unwrap();
            let e0 = s.indices(0);
            assert_eq!(
                e0,
                again.indices(0),
                "len {len} world {world}: not deterministic"
            );
            assert_ne!(
                e0,
                s.indices(1),
                "len {len} world {world}: epochs 0 and 1 read the same order"
            );
            assert_ne!(
                e0,
                DistributedSampler::new(len, world - 1, world, true, 100, false)
                    .unwrap()
                    .indices(0)
            );
            // Sizes never change from epoch to epoch.
            for epoch in 0..5 {
                assert_eq!(s.indices(epoch).len(), s.num_samples());
            }
            // The full padded list (ranks interleaved) is a permutation plus wrap-around padding.
            let ranks = all_ranks(len, world, true, 99, false, 4);
            let mut full = Vec::new();
            for p in 0..ranks[0].len() {
                full.extend(ranks.iter().map(|r| r[p]));
            }
            let mut base = full[..len].to_vec();
            assert_eq!(
                &full[len..],
                &base[..full.len() - len],
                "len {len} world {world}: padding"
            );
            base.sort_unstable();
            assert_eq!(base, (0..len).collect::<Vec<_>>());
        }
    }
    // Shuffled order is not the identity (1 / 100! by chance).
    let s = DistributedSampler::new(100, 0, 1, true, 0, false).unwrap();
    assert_ne!(s.indices(0), (0..100).collect::<Vec<_>>());
    // PyTorch's rule: the permutation depends on seed + epoch only.
    let a = DistributedSampler::new(50, 0, 1, true, 1, false)
        .unwrap()
        .indices(0);
    let b = DistributedSampler::new(50, 0, 1, true, 0, false)
        .unwrap()
        .indices(1);
    assert_eq!(a, b);
}

#[test]
fn fill_indices_reuses_the_buffer() {
    let s = DistributedSampler::new(1000, 1, 4, true, 5, false).unwrap();
    let mut buf = vec![7usize; 3];
    s.fill_indices(2, &mut buf);
    assert_eq!(buf, s.indices(2));
    let cap = buf.capacity();
    s.fill_indices(3, &mut buf);
    assert_eq!(buf, s.indices(3));
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn partition_is_exact_and_balanced() {
    for len in LENS {
        for world in WORLDS {
            let shares: Vec<PartitionSampler> = (0..world)
                .map(|r| PartitionSampler::new(len, r, world).unwrap())
                .collect();
            let all: Vec<usize> = shares.iter().flat_map(|s| s.range()).collect();
            // Contiguous blocks in rank order: concatenated they are exactly 0..len.
            assert_eq!(all, (0..len).collect::<Vec<_>>(), "len {len} world {world}");
            let most = shares.iter().map(PartitionSampler::len).max().unwrap();
            let least = shares.iter().map(PartitionSampler::len).min().unwrap();
            assert!(
                most - least <= 1,
                "len {len} world {world}: {least}..{most}"
            );
            assert_eq!(
                shares.iter().filter(|s| s.is_empty()).count(),
                world.saturating_sub(len)
            );
        }
    }
}

#[test]
fn bad_rank_or_world_is_a_config_error() {
    let check = |r: Result<(), Error>, want: &str| match r {
        Err(Error::Config { what, .. }) => assert_eq!(what, want),
        other => panic!("expected a Config error about {want}, got {other:?}"),
    };
    check(
        DistributedSampler::new(10, 0, 0, true, 0, false).map(|_| ()),
        "world size",
    );
    check(
        DistributedSampler::new(10, 4, 4, true, 0, false).map(|_| ()),
        "rank",
    );
    check(PartitionSampler::new(10, 0, 0).map(|_| ()), "world size");
    check(PartitionSampler::new(10, 9, 2).map(|_| ()), "rank");
}

#[test]
fn unshuffled_assignment_matches_pytorch() {
    let Some(py) = ref_python() else { return };
    let combos = [
        (10usize, 3usize, false),
        (10, 3, true),
        (12, 4, false),
        (12, 4, true),
        (2, 5, false),
        (2, 5, true),
        (1, 8, false),
        (3, 8, false),
        (0, 2, false),
        (0, 2, true),
        (1000, 7, false),
        (1000, 7, true),
        (13, 1, false),
    ];
    let args: Vec<String> = combos
        .iter()
        .map(|&(n, w, d)| format!("{n}:{w}:{}", u8::from(d)))
        .collect();
    let out = String::from_utf8(run_ref(&py, "sampler_ref.py", &args, b"")).unwrap();
    let mut lines = 0;
    for line in out.lines() {
        let (head, idx) = line.split_once(':').expect("':' in line");
        let h: Vec<usize> = head
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        let want: Vec<usize> = idx.split_whitespace().map(|t| t.parse().unwrap()).collect();
        let (len, world, drop_last, rank) = (h[0], h[1], h[2] == 1, h[3]);
        let s = DistributedSampler::new(len, rank, world, false, 0, drop_last).unwrap();
        assert_eq!((s.num_samples(), s.total_size()), (h[4], h[5]), "{line}");
        assert_eq!(s.indices(3), want, "{line}");
        lines += 1;
    }
    assert_eq!(lines, combos.iter().map(|c| c.1).sum::<usize>());
}
