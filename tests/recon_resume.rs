//! Masked-token training survives a crash: training is killed mid-way (a panic between two
//! checkpoints), resumed from the last checkpoint by a fresh model and mask source, and ends
//! with weights bit-identical to an uninterrupted run (METHOD.md, "Training the
//! reconstruction model"). Also a throughput measurement, `#[ignore]`d:
//! `RAYON_NUM_THREADS=2 cargo test --release --test recon_resume -- --ignored --nocapture`.

use pmad::Result;
use pmad::recon::MaskSource;
use pmad::recon::trainer::{TrainConfig, TrainSample, train};
use pmad::recon::vit::{Vit, VitConfig};
use pmad::rng::Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

/// Masks a fixed number of patches uniformly; its state counts the masks drawn per sample
/// and sums the observed losses, so a resume that lost it would be caught.
struct UniformMasks {
    n: usize,
    k: usize,
    state: Vec<f32>,
}

impl UniformMasks {
    fn new(samples: usize, n: usize, k: usize) -> UniformMasks {
        UniformMasks {
            n,
            k,
            state: vec![0.0; 2 * samples],
        }
    }
}

impl MaskSource for UniformMasks {
    fn mask(&mut self, sample: usize, rng: &mut Rng) -> Vec<bool> {
        self.state[2 * sample] += 1.0;
        let mut idx: Vec<usize> = (0..self.n).collect();
        rng.shuffle(&mut idx);
        let mut m = vec![false; self.n];
        idx[..self.k].iter().for_each(|&p| m[p] = true);
        m
    }
    fn observe(&mut self, sample: usize, patch_loss: &[f32]) {
        self.state[2 * sample + 1] += patch_loss.iter().filter(|l| !l.is_nan()).sum::<f32>();
    }
    fn state(&self) -> Vec<f32> {
        self.state.clone()
    }
    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        if state.len() != self.state.len() {
            return Err(pmad::Error::invalid("mask state of another data set"));
        }
        self.state.copy_from_slice(state);
        Ok(())
    }
}

fn random_data(c: &VitConfig, samples: usize, seed: u64) -> Vec<TrainSample> {
    let mut r = Rng::new(seed);
    (0..samples)
        .map(|_| TrainSample {
            image: (0..c.image_len()).map(|_| r.range(-1.0, 1.0)).collect(),
            tokens: (0..c.patches()).map(|_| r.below(c.vocab) as u32).collect(),
        })
        .collect()
}

fn same_bits(a: &Vit, b: &Vit) -> bool {
    let (pa, pb) = (a.params(), b.params());
    pa.ids().all(|id| {
        let (x, y) = (pa.values(id), pb.values(id));
        x.len() == y.len() && x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits())
    })
}

#[test]
fn killed_training_resumes_to_identical_weights() {
    let c = VitConfig {
        image_size: 32,
        patch: 8,
        width: 16,
        depth: 1,
        decoder_depth: 1,
        heads: 2,
        mlp: 32,
        vocab: 6,
        input_dim: 0,
    };
    let data = random_data(&c, 7, 1);
    // 3 steps per epoch (3 + 3 + 1 images), 4 epochs: 12 steps; checkpoints every 2 steps
    // and at each epoch end (3, 6, 9, 12).
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 3,
        peak_lr: 3e-3,
        warmup_epochs: 1.0,
        checkpoint_every: 2,
        seed: 9,
        ..TrainConfig::default()
    };
    let mut full = Vit::new(c.clone(), 2).unwrap();
    let mut full_masks = UniformMasks::new(7, 16, 7);
    train(
        &mut full,
        &data,
        &mut full_masks,
        &cfg,
        None,
        false,
        &mut |_| {},
    )
    .unwrap();

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad_recon_resume");
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("recon.ckpt.safetensors");
    let mut vit = Vit::new(c.clone(), 2).unwrap();
    let mut masks = UniformMasks::new(7, 16, 7);
    // The "kill": a panic after step 7, whose work is lost (last checkpoint: step 6).
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        let mut kill = |s: &pmad::recon::trainer::StepReport| {
            if s.step == 7 {
                panic!("simulated crash after step 7");
            }
        };
        train(
            &mut vit,
            &data,
            &mut masks,
            &cfg,
            Some(&ckpt),
            false,
            &mut kill,
        )
    }));
    assert!(crashed.is_err());

    let mut vit = Vit::new(c.clone(), 777).unwrap();
    let mut masks = UniformMasks::new(7, 16, 7);
    let report = train(
        &mut vit,
        &data,
        &mut masks,
        &cfg,
        Some(&ckpt),
        true,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((report.start_step, report.end_step), (6, 12));
    assert!(report.finished());
    assert!(same_bits(&vit, &full), "resumed weights differ");
    assert!(
        masks
            .state
            .iter()
            .zip(&full_masks.state)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "mask source state differs"
    );
    assert!(same_bits(&Vit::load(&ckpt).unwrap(), &full));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Training and inference speed of the presets at 224x224, batch 8, |V| = 8192.
#[test]
#[ignore]
fn throughput_of_presets() {
    let threads = rayon::current_num_threads();
    for preset in ["tiny", "small"] {
        let c = VitConfig::preset(preset, 8192).unwrap();
        let data = random_data(&c, 32, 3);
        let mut vit = Vit::new(c.clone(), 0).unwrap();
        let mut masks = UniformMasks::new(32, c.patches(), 80); // ~40 % masked
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: 8,
            ..TrainConfig::default()
        };
        let mut rates = Vec::new();
        train(&mut vit, &data, &mut masks, &cfg, None, false, &mut |s| {
            rates.push(s.images_per_sec)
        })
        .unwrap();
        let steady = &rates[1..]; // the first step warms caches and the allocator
        let mean = steady.iter().sum::<f32>() / steady.len() as f32;
        println!(
            "train {preset:5}: {mean:6.1} images/s (batch 8, {threads} threads, steps {rates:?}, \
             {} params)",
            vit.params().num_values()
        );
        let images: Vec<f32> = data[..8].iter().flat_map(|s| s.image.clone()).collect();
        let mut r = Rng::new(5);
        let mask: Vec<bool> = (0..8 * c.patches()).map(|_| r.uniform() < 0.3).collect();
        vit.token_entropy(&images, &mask).unwrap(); // warm-up
        let t0 = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            vit.token_entropy(&images, &mask).unwrap();
        }
        let rate = (8 * reps) as f64 / t0.elapsed().as_secs_f64();
        println!("infer {preset:5}: {rate:6.1} images/s token_entropy (batch 8, 30 % masked)");
    }
}
