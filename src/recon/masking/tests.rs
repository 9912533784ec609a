//! Tests of every sampler: exact counts, determinism, cue behaviour, state round trips.

use super::super::GRID;
use super::placement::blockwise_fill;
use super::*;
use crate::recon::MaskSource;
use crate::rng::Rng;

const RATIOS: [f32; 6] = [0.0, 1.0 / 196.0, 0.16, 0.42, 0.5, 1.0];

fn count(mask: &[bool]) -> usize {
    mask.iter().filter(|&&m| m).count()
}

/// Number of 4-connected components of the masked cells.
fn components(mask: &[bool]) -> usize {
    let mut seen = [false; PATCHES];
    let mut n = 0;
    for start in 0..PATCHES {
        if !mask[start] || seen[start] {
            continue;
        }
        n += 1;
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            let (r, c) = (i / GRID, i % GRID);
            let mut push = |j: usize| {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if r > 0 {
                push(i - GRID);
            }
            if r + 1 < GRID {
                push(i + GRID);
            }
            if c > 0 {
                push(i - 1);
            }
            if c + 1 < GRID {
                push(i + 1);
            }
        }
    }
    n
}

/// Flat grey background with a bright square on patches rows/cols 4..10 (6x6 = 36
/// patches), plus faint noise.
fn square_image() -> Vec<f32> {
    let s = IMAGE_SIDE;
    let mut rng = Rng::new(3);
    let mut img = vec![0f32; 3 * s * s];
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                let inside = (64..160).contains(&y) && (64..160).contains(&x);
                let base = if inside { 0.8 } else { -0.4 + 0.1 * c as f32 };
                img[(c * s + y) * s + x] = base + 0.004 * rng.normal();
            }
        }
    }
    img
}

fn in_square(i: usize) -> bool {
    let (r, c) = (i / GRID, i % GRID);
    (4..10).contains(&r) && (4..10).contains(&c)
}

fn test_masker(ratio: f32) -> CombinationalMasker {
    let img = square_image();
    let mut rng = Rng::new(11);
    let freq2: Vec<f32> = (0..PATCHES).map(|_| rng.uniform()).collect();
    // Sample 0: the square image's cues; sample 1: random weights and a small foreground
    // (9 patches, fewer than most targets).
    let small_fg: Vec<bool> = (0..PATCHES).map(|i| i % GRID < 3 && i / GRID < 3).collect();
    CombinationalMasker::new(
        vec![frequency_weights(&img), freq2],
        vec![foreground(&img), small_fg],
        MaskingConfig::new(ratio),
    )
    .unwrap()
}

#[test]
fn mask_count_rounds_and_clamps() {
    assert_eq!(mask_count(0.0), 0);
    assert_eq!(mask_count(1.0 / 196.0), 1);
    assert_eq!(mask_count(0.16), 31);
    assert_eq!(mask_count(0.42), 82);
    assert_eq!(mask_count(0.5), 98);
    assert_eq!(mask_count(1.0), 196);
    assert_eq!(mask_count(-0.5), 0);
    assert_eq!(mask_count(3.0), 196);
    assert_eq!(mask_count(f32::NAN), 0);
}

#[test]
fn every_strategy_masks_exactly_the_count() {
    let mut rng = Rng::new(1);
    for ratio in RATIOS {
        let want = mask_count(ratio);
        let masker = test_masker(ratio);
        for strategy in Strategy::all() {
            for sample in 0..2 {
                for _ in 0..3 {
                    let m = masker.mask_with(sample, strategy, &mut rng);
                    assert_eq!(m.len(), PATCHES);
                    assert_eq!(
                        count(&m),
                        want,
                        "{strategy:?} ratio {ratio} sample {sample}"
                    );
                }
            }
        }
        assert_eq!(count(&random_mask(ratio, &mut rng)), want);
        assert_eq!(count(&blockwise_mask(ratio, &mut rng)), want);
        let abn: Vec<f32> = (0..PATCHES).map(|_| rng.uniform()).collect();
        assert_eq!(count(&proposal_mask(&abn, ratio)), want);
    }
    // Mixed draws through the MaskSource interface too.
    let mut masker = test_masker(0.42);
    for step in 0..50 {
        assert_eq!(count(&masker.mask(step % 2, &mut rng)), 82);
    }
}

#[test]
fn same_seed_same_mask_different_seed_different_mask() {
    // 20 patches: well below the square image's foreground (36-60 patches), so
    // foreground-only masks have room to vary.
    let masker = test_masker(0.1);
    for strategy in Strategy::all() {
        let draw = |seed: u64| masker.mask_with(0, strategy, &mut Rng::new(seed));
        assert_eq!(draw(5), draw(5), "{strategy:?}");
        let differing = (0..20).filter(|&s| draw(100 + s) != draw(200 + s)).count();
        assert!(differing >= 18, "{strategy:?}: only {differing}/20 differ");
    }
    let a = random_mask(0.3, &mut Rng::new(1));
    assert_eq!(a, random_mask(0.3, &mut Rng::new(1)));
    assert_ne!(a, random_mask(0.3, &mut Rng::new(2)));
    let b = blockwise_mask(0.3, &mut Rng::new(1));
    assert_eq!(b, blockwise_mask(0.3, &mut Rng::new(1)));
    assert_ne!(b, blockwise_mask(0.3, &mut Rng::new(2)));
    // The whole MaskSource stream, strategy choices included.
    let run = |seed| {
        let mut m = test_masker(0.3);
        let mut rng = Rng::new(seed);
        (0..10).map(|s| m.mask(s % 2, &mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn foreground_finds_the_square_and_masks_stay_inside() {
    let img = square_image();
    let fg = foreground(&img);
    // The square itself, plus at most its 4-neighbour rim (edges are high-frequency).
    for (i, &is_fg) in fg.iter().enumerate() {
        let (r, c) = (i / GRID, i % GRID);
        let rim = ((3..11).contains(&r) && (4..10).contains(&c))
            || ((4..10).contains(&r) && (3..11).contains(&c));
        if in_square(i) {
            assert!(is_fg, "square patch {i} missed");
        }
        if is_fg {
            assert!(rim, "background patch {i} taken for foreground");
        }
    }
    let fg_count = count(&fg);
    assert!((36..=60).contains(&fg_count), "{fg_count}");

    // Foreground-restricted masks stay inside whenever the foreground can hold them.
    let masker = test_masker(0.18); // 35 patches <= 36
    let mut rng = Rng::new(4);
    for strategy in Strategy::all() {
        if strategy.region != Region::Foreground {
            continue;
        }
        for _ in 0..20 {
            let m = masker.mask_with(0, strategy, &mut rng);
            assert!(
                (0..PATCHES).all(|i| !m[i] || fg[i]),
                "{strategy:?} left the foreground"
            );
        }
    }
    // A small foreground (9 patches) is filled completely, the rest comes from outside.
    let m = masker.mask_with(
        1,
        Strategy {
            region: Region::Foreground,
            weighting: Weighting::Uniform,
            placement: Placement::Blockwise,
        },
        &mut rng,
    );
    assert!((0..PATCHES).all(|i| m[i] || !masker.foreground[1][i]));
}

#[test]
fn flat_image_is_all_foreground_and_frequency_is_flat() {
    let img = vec![0.25f32; 3 * IMAGE_SIDE * IMAGE_SIDE];
    assert!(foreground(&img).iter().all(|&f| f));
    assert!(frequency_weights(&img).iter().all(|&w| w == 1.0));
}

#[test]
fn frequency_weights_find_the_textured_patch() {
    let s = IMAGE_SIDE;
    let mut img = vec![0f32; 3 * s * s];
    // A checkerboard inside patch (2, 5) only.
    for c in 0..3 {
        for y in 32..48 {
            for x in 80..96 {
                img[(c * s + y) * s + x] = if (x + y) % 2 == 0 { 0.5 } else { -0.5 };
            }
        }
    }
    let w = frequency_weights(&img);
    let hot = 2 * GRID + 5;
    assert_eq!(w[hot], 1.0);
    assert!(w.iter().all(|v| (0.0..=1.0).contains(v)));
    // Far from it, nothing.
    assert_eq!(w[13 * GRID + 13], 0.0);
    assert!(w.iter().enumerate().all(|(i, &v)| i == hot || v < 0.2));
}

#[test]
fn blocks_are_contiguous() {
    let mut single_blocks = 0;
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let target = 4 + (seed as usize % 9);
        let weights: Vec<f32> = (0..PATCHES).map(|i| (i % 7) as f32).collect();
        for steer in [None, Some(&weights[..])] {
            let (mask, blocks) = blockwise_fill(steer, None, target, &mut rng);
            assert_eq!(count(&mask), target);
            assert!(components(&mask) <= blocks, "seed {seed}");
            if blocks == 1 {
                single_blocks += 1;
                assert_eq!(components(&mask), 1, "seed {seed}: one block, split");
            }
        }
    }
    assert!(single_blocks > 100, "{single_blocks}");
}

#[test]
fn weighted_sampling_prefers_heavy_patches_and_respects_allowed() {
    // Left half weight 1, right half 0.1: about 10:1 odds per patch.
    let weights: Vec<f32> = (0..PATCHES)
        .map(|i| if i % GRID < 7 { 1.0 } else { 0.1 })
        .collect();
    let all = vec![true; PATCHES];
    let mut rng = Rng::new(8);
    let (mut heavy, mut total) = (0, 0);
    for _ in 0..200 {
        let m = sample_weighted(&weights, &all, 20, &mut rng);
        assert_eq!(count(&m), 20);
        heavy += (0..PATCHES).filter(|&i| m[i] && i % GRID < 7).count();
        total += 20;
    }
    let frac = heavy as f32 / total as f32;
    assert!(frac > 0.8, "heavy fraction {frac}");

    // Zero weights still get drawn when they must.
    let zeros = vec![0.0; PATCHES];
    assert_eq!(count(&sample_weighted(&zeros, &all, 196, &mut rng)), 196);

    // `allowed` first; when too small, all of it plus the rest.
    let allowed: Vec<bool> = (0..PATCHES).map(|i| i < 30).collect();
    let m = sample_weighted(&weights, &allowed, 25, &mut rng);
    assert!(count(&m) == 25 && (30..PATCHES).all(|i| !m[i]));
    let m = sample_weighted(&weights, &allowed, 50, &mut rng);
    assert!(count(&m) == 50 && (0..30).all(|i| m[i]));
}

#[test]
fn dynamic_weighting_learns_and_its_state_round_trips() {
    let mut masker = CombinationalMasker::new(
        vec![vec![1.0; PATCHES]; 3],
        vec![vec![true; PATCHES]; 3],
        MaskingConfig::forced(
            0.1,
            Strategy {
                region: Region::All,
                weighting: Weighting::Dynamic,
                placement: Placement::Random,
            },
        ),
    )
    .unwrap();
    // Patches 0..20 of sample 1 are hard; everything else is easy; NaN = unmasked.
    let loss: Vec<f32> = (0..PATCHES)
        .map(|i| match i {
            0..20 => 5.0,
            20..40 => f32::NAN,
            _ => 0.1,
        })
        .collect();
    for _ in 0..40 {
        masker.observe(1, &loss);
    }
    let state = masker.state();
    assert_eq!(state.len(), 3 * PATCHES);
    assert!(state[PATCHES + 5] > 4.0 && state[PATCHES + 50] < 0.2);
    assert_eq!(state[PATCHES + 25], 1.0, "NaN losses must not update");
    assert_eq!(state[5], 1.0, "other samples untouched");

    let mut rng = Rng::new(2);
    let m = masker.mask(1, &mut rng);
    assert!(
        (0..20).filter(|&i| m[i]).count() >= 15,
        "hard patches not preferred"
    );

    // Round trip into a fresh masker gives the same masks.
    let mut other = CombinationalMasker::new(
        vec![vec![1.0; PATCHES]; 3],
        vec![vec![true; PATCHES]; 3],
        masker.config().clone(),
    )
    .unwrap();
    other.load_state(&state).unwrap();
    assert_eq!(other.state(), state);
    assert_eq!(
        other.mask(1, &mut Rng::new(6)),
        masker.mask(1, &mut Rng::new(6))
    );
    let e = other.load_state(&state[..10]).unwrap_err().to_string();
    assert!(e.contains("10 values") && e.contains("588"), "{e}");
    let mut bad = state.clone();
    bad[7] = f32::NAN;
    assert!(other.load_state(&bad).is_err());
}

#[test]
fn config_and_cue_errors() {
    let mut c = MaskingConfig::new(1.5);
    assert!(c.validate().unwrap_err().to_string().contains("ratio"));
    c.ratio = 0.5;
    c.weighting_odds = [0.0; 3];
    assert!(c.validate().is_err());
    let ok = MaskingConfig::new(0.5);
    assert!(CombinationalMasker::new(vec![vec![1.0; PATCHES]], vec![], ok.clone()).is_err());
    assert!(
        CombinationalMasker::new(vec![vec![1.0; 10]], vec![vec![true; 10]], ok.clone()).is_err()
    );
    assert!(
        CombinationalMasker::new(vec![vec![-1.0; PATCHES]], vec![vec![true; PATCHES]], ok).is_err()
    );
}

#[test]
fn forced_config_always_draws_its_strategy() {
    let mut rng = Rng::new(0);
    for strategy in Strategy::all() {
        let masker = CombinationalMasker::new(
            vec![vec![1.0; PATCHES]],
            vec![vec![true; PATCHES]],
            MaskingConfig::forced(0.3, strategy),
        )
        .unwrap();
        assert!((0..50).all(|_| masker.draw_strategy(&mut rng) == strategy));
    }
    // The default mix visits all 12.
    let masker = test_masker(0.3);
    let seen: std::collections::HashSet<_> = (0..500)
        .map(|_| format!("{:?}", masker.draw_strategy(&mut rng)))
        .collect();
    assert_eq!(seen.len(), 12);
}

#[test]
fn proposal_mask_takes_the_top_with_ties_by_index() {
    let abn = [0.5, f32::NAN, 0.9, 0.5, 0.5, f32::NEG_INFINITY, 0.1];
    // 3 of 7: 0.9 (2), then the tied 0.5s at 0 and 3.
    let m = proposal_mask(&abn, 3.0 / 7.0);
    assert_eq!(m, [true, false, true, true, false, false, false]);
    // All but one: NaN is the one left out.
    let m = proposal_mask(&abn, 6.0 / 7.0);
    assert_eq!(m, [true, false, true, true, true, true, true]);
    let grid: Vec<f32> = (0..PATCHES).map(|i| i as f32).collect();
    let m = proposal_mask(&grid, 0.16);
    assert!((0..PATCHES).all(|i| m[i] == (i >= PATCHES - 31)));
    // -0.0 ties with +0.0 (the lower index wins), as on the GPU.
    let m = proposal_mask(&[-1.0, 0.0, -0.0, -0.0, 0.0], 0.6);
    assert_eq!(m, [false, true, true, true, false]);
    let m = proposal_mask(&[-0.0, 0.0], 0.5);
    assert_eq!(m, [true, false]);
}

#[test]
fn downsample_max_hand_cases() {
    // 4x4 -> 2x2: disjoint 2x2 windows.
    let v: Vec<f32> = (0..16).map(|i| i as f32).collect();
    assert_eq!(downsample_max(&v, 4, 2), vec![5.0, 7.0, 13.0, 15.0]);
    // 3x3 -> 2x2: windows [0,2) and [1,3) overlap on the middle row/column.
    let v = [1.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 2.0];
    assert_eq!(downsample_max(&v, 3, 2), vec![9.0, 9.0, 9.0, 9.0]);
    let v = [1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 4.0, 0.0, 2.0];
    assert_eq!(downsample_max(&v, 3, 2), vec![1.0, 3.0, 4.0, 2.0]);
    // NaN ignored unless the window is all NaN.
    let v = [f32::NAN, 1.0, f32::NAN, f32::NAN];
    let out = downsample_max(&v, 2, 1);
    assert_eq!(out, vec![1.0]);
    assert!(downsample_max(&[f32::NAN], 1, 1)[0].is_nan());
    // 28 -> 14 is plain 2x2 max pooling.
    let v: Vec<f32> = (0..28 * 28).map(|i| ((i * 37) % 101) as f32).collect();
    let out = downsample_max(&v, 28, 14);
    for (k, &o) in out.iter().enumerate() {
        let (r, c) = (2 * (k / 14), 2 * (k % 14));
        let want = [
            v[r * 28 + c],
            v[r * 28 + c + 1],
            v[(r + 1) * 28 + c],
            v[(r + 1) * 28 + c + 1],
        ]
        .into_iter()
        .fold(f32::MIN, f32::max);
        assert_eq!(o, want);
    }
}
