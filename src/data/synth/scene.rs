//! What a class renders: the defect-free picture plus the geometry the defects need (where the
//! object is, and what would show if part of it were missing).

use super::canvas::Canvas;

/// The rough geometry of a class's object, used to place "missing part" cuts.
#[derive(Clone, Debug)]
pub enum Shape {
    /// A stationary texture filling the frame: no parts to remove.
    Texture,
    /// A round object (cap, nut) of radius `r` centred at `c`: cuts are sectors of the rim.
    Round { c: (f32, f32), r: f32 },
    /// An elongated object from `head` to `tip` (screw): cuts take off one end.
    Rod { head: (f32, f32), tip: (f32, f32) },
    /// Separate parts (board components): a cut removes one whole part.
    Parts(Vec<Part>),
}

/// A rotated box in pixels: centre, half extents, rotation (radians).
#[derive(Clone, Debug)]
pub struct Part {
    pub c: (f32, f32),
    pub half: (f32, f32),
    pub angle: f32,
}

/// A rendered defect-free scene (before lighting and sensor noise).
#[derive(Clone, Debug)]
pub struct Scene {
    pub image: Canvas,
    /// Where surface defects may lie: the object's coverage (all ones for textures).
    pub fg: Vec<f32>,
    /// What shows where a removable part is taken away (objects only).
    pub under: Option<Canvas>,
    /// Coverage of what a "missing part" cut may remove (objects only).
    pub removable: Vec<f32>,
    pub shape: Shape,
}

impl Scene {
    /// A texture: defects anywhere, nothing removable.
    pub fn texture(image: Canvas) -> Scene {
        let n = image.px.len();
        Scene {
            image,
            fg: vec![1.0; n],
            under: None,
            removable: Vec::new(),
            shape: Shape::Texture,
        }
    }

    /// An object over a background: `under` is the background, `cov` the object's coverage.
    pub fn object(image: Canvas, under: Canvas, cov: Vec<f32>, shape: Shape) -> Scene {
        Scene {
            image,
            fg: cov.clone(),
            under: Some(under),
            removable: cov,
            shape,
        }
    }
}
