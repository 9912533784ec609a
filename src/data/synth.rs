//! Synthetic defect datasets in the MVTec-AD layout (`pmad synth`).
//!
//! Eight visually different classes — four textures and four objects — each with the normal
//! variation a camera on a production line sees (pose, lighting gradient, exposure and colour
//! jitter, sensor noise) and class-specific defect types drawn with exact masks (see
//! [`DefectKind`]). Everything random comes from the seeded [`Rng`]: one seed reproduces a
//! dataset byte for byte, and each image has its own stream, so images render in parallel
//! in any order with the same result.

mod canvas;
mod defects;
mod finish;
mod noise;
mod objects;
mod pcb;
mod scene;
mod textures;
mod writer;

pub use defects::{DefectKind, MASK_ALPHA};
pub use writer::{ClassSummary, DefectCount, SynthSummary, generate, generate_layout};

use crate::data::image::RgbImage;
use crate::error::{Error, Result};
use crate::rng::Rng;
use scene::Scene;

/// The synthetic classes, in the fixed order `--classes N` takes them from (textures and
/// objects alternate so that any prefix mixes both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SynthClass {
    Fabric,
    Cap,
    Wood,
    Nut,
    Metal,
    Tile,
    Screw,
    Pcb,
}

impl SynthClass {
    pub const ALL: [SynthClass; 8] = [
        SynthClass::Fabric,
        SynthClass::Cap,
        SynthClass::Wood,
        SynthClass::Nut,
        SynthClass::Metal,
        SynthClass::Tile,
        SynthClass::Screw,
        SynthClass::Pcb,
    ];

    /// The class folder name (`synth_fabric`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SynthClass::Fabric => "synth_fabric",
            SynthClass::Cap => "synth_cap",
            SynthClass::Wood => "synth_wood",
            SynthClass::Nut => "synth_nut",
            SynthClass::Metal => "synth_metal",
            SynthClass::Tile => "synth_tile",
            SynthClass::Screw => "synth_screw",
            SynthClass::Pcb => "synth_pcb",
        }
    }

    pub fn from_name(name: &str) -> Option<SynthClass> {
        SynthClass::ALL.into_iter().find(|c| c.name() == name)
    }

    /// One line on what the class looks like.
    pub fn description(self) -> &'static str {
        match self {
            SynthClass::Fabric => "woven twill fabric, indigo warp and ecru weft (texture)",
            SynthClass::Cap => "red knurled bottle cap from above on a dark conveyor (object)",
            SynthClass::Wood => "plain-sawn wood with wavy growth rings and pores (texture)",
            SynthClass::Nut => "hexagonal steel nut from above on a white plate (object)",
            SynthClass::Metal => "brushed steel with a reflection band, grayscale PNG (texture)",
            SynthClass::Tile => "terrazzo tile: beige ground with stone chips (texture)",
            SynthClass::Screw => "steel screw lying in any orientation on a pale plate (object)",
            SynthClass::Pcb => "circuit board with traces, pads, ICs and passives (object)",
        }
    }

    pub fn is_object(self) -> bool {
        matches!(
            self,
            SynthClass::Cap | SynthClass::Nut | SynthClass::Screw | SynthClass::Pcb
        )
    }

    /// Whether images are written as single-channel grayscale PNGs.
    pub fn grayscale(self) -> bool {
        self == SynthClass::Metal
    }

    /// The defect types of this class (its test folders besides `good`).
    pub fn defects(self) -> &'static [DefectKind] {
        use DefectKind::*;
        match self {
            SynthClass::Fabric => &[Hole, Stain, Extra],
            SynthClass::Cap => &[Scratch, Missing, Stain, Extra],
            SynthClass::Wood => &[Scratch, Crack, Hole, Stain],
            SynthClass::Nut => &[Missing, Crack, Scratch, Extra],
            SynthClass::Metal => &[Scratch, Hole, Stain, Extra],
            SynthClass::Tile => &[Crack, Stain, Hole, Extra],
            SynthClass::Screw => &[Scratch, Missing, Extra],
            SynthClass::Pcb => &[Missing, Extra, Scratch],
        }
    }

    /// The defect-free scene (before the camera).
    fn scene(self, rng: &mut Rng, size: usize) -> Scene {
        match self {
            SynthClass::Fabric => textures::fabric(rng, size),
            SynthClass::Wood => textures::wood(rng, size),
            SynthClass::Metal => textures::metal(rng, size),
            SynthClass::Tile => textures::tile(rng, size),
            SynthClass::Cap => objects::cap(rng, size),
            SynthClass::Nut => objects::nut(rng, size),
            SynthClass::Screw => objects::screw(rng, size),
            SynthClass::Pcb => pcb::pcb(rng, size),
        }
    }
}

/// What `generate` writes. Defaults are sized for quick tests: 4 classes, 40 train, 10 good
/// and 20 defective test images per class, 256x256, seed 0.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// How many classes, the first N of [`SynthClass::ALL`] (1..=8).
    pub classes: usize,
    pub seed: u64,
    /// Normal training images per class (at least 1).
    pub train: usize,
    /// Normal test images per class.
    pub test_good: usize,
    /// Defective test images per class, spread round-robin over the class's defect types.
    pub test_bad: usize,
    /// Image side in pixels (32..=4096).
    pub size: usize,
    /// Replace an existing non-empty output folder (only one made by `generate`).
    pub force: bool,
}

impl Default for SynthConfig {
    fn default() -> SynthConfig {
        SynthConfig {
            classes: 4,
            seed: 0,
            train: 40,
            test_good: 10,
            test_bad: 20,
            size: 256,
            force: false,
        }
    }
}

/// The most images of one kind per class (keeps a typo from filling the disk).
pub const MAX_PER_FOLDER: usize = 100_000;

impl SynthConfig {
    pub fn validate(&self) -> Result<()> {
        let n = SynthClass::ALL.len();
        if !(1..=n).contains(&self.classes) {
            return Err(Error::invalid(format!(
                "classes must be 1..={n}, got {}",
                self.classes
            )));
        }
        if !(32..=4096).contains(&self.size) {
            return Err(Error::invalid(format!(
                "image size must be 32..=4096, got {}",
                self.size
            )));
        }
        if self.train == 0 {
            return Err(Error::invalid(
                "at least one training image per class is needed",
            ));
        }
        for (what, v) in [
            ("train", self.train),
            ("test-good", self.test_good),
            ("test-bad", self.test_bad),
        ] {
            if v > MAX_PER_FOLDER {
                return Err(Error::invalid(format!(
                    "{what} count {v} is over {MAX_PER_FOLDER}"
                )));
            }
        }
        Ok(())
    }

    /// The classes this configuration generates.
    pub fn class_list(&self) -> &'static [SynthClass] {
        &SynthClass::ALL[..self.classes.min(SynthClass::ALL.len())]
    }
}

/// One rendered image with its defect-free base and its mask (all false for normal images).
/// Outside the mask, `image` and `base` are identical pixel for pixel.
#[derive(Clone, Debug)]
pub struct Sample {
    pub base: RgbImage,
    pub image: RgbImage,
    pub mask: Vec<bool>,
}

/// Renders one image of `class` from its own `seed`: normal when `defect` is `None`.
/// (`Missing` on a texture class falls back to a hole: textures have no parts.)
pub fn render_sample(
    class: SynthClass,
    size: usize,
    seed: u64,
    defect: Option<DefectKind>,
) -> Sample {
    let (image, base, mask) = render(class, size, seed, defect, true);
    let base = base.unwrap_or_else(|| image.clone());
    Sample { base, image, mask }
}

/// The image (and, if `want_base`, its defect-free base) and the mask.
fn render(
    class: SynthClass,
    size: usize,
    seed: u64,
    defect: Option<DefectKind>,
    want_base: bool,
) -> (RgbImage, Option<RgbImage>, Vec<bool>) {
    let mut rng = Rng::new(seed);
    let scene = class.scene(&mut rng, size);
    // The camera's draws come from their own stream so base and defect see the same ones.
    let camera_seed = rng.next_u64();
    let shoot =
        |c: &canvas::Canvas| finish::camera(c, &mut Rng::new(camera_seed), class.grayscale());
    match defect {
        None => (shoot(&scene.image), None, vec![false; size * size]),
        Some(kind) => {
            let (defective, alpha) = defects::apply(&mut rng, &scene, kind);
            let base = want_base.then(|| shoot(&scene.image));
            (
                shoot(&defective),
                base,
                alpha.iter().map(|&a| a > 0.0).collect(),
            )
        }
    }
}

/// Which folder an image goes to, for its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    TestGood,
    TestDefect(DefectKind),
}

/// The seed of image `index` of `split` of `class` in a dataset of seed `seed`. Depends on the
/// class itself, not on how many classes are generated, so `--classes 4` and `--classes 8`
/// share their first four classes exactly.
pub fn image_seed(seed: u64, class: SynthClass, split: Split, index: usize) -> u64 {
    let c = SynthClass::ALL
        .iter()
        .position(|&k| k == class)
        .unwrap_or(0) as u64;
    let s = match split {
        Split::Train => 0,
        Split::TestGood => 1,
        Split::TestDefect(k) => {
            2 + DefectKind::ALL.iter().position(|&d| d == k).unwrap_or(0) as u64
        }
    };
    let mut rng = Rng::new(seed);
    let key = rng.next_u64() ^ (c << 56) ^ (s << 48) ^ index as u64;
    Rng::new(key).next_u64()
}
