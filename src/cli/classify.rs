//! `pmad classify [--labels FILE] IMAGE...`: ImageNet top-k of each image with the backbone.
//! A `.safetensors` argument is read as a ready network input (its `input` tensor), which is
//! how the golden fixtures are fed.

use clap::Args;
use pmad::data::{classification_input, load_rgb};
use pmad::models::{Backbone, EfficientNetLite};
use pmad::ops::softmax::softmax;
use pmad::ops::topk::topk_row;
use pmad::{Error, Result, Tensor};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Class names, one per line (a first line `background` is skipped).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Backbone weights (default: weights/efficientnet_<backbone>.safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Which EfficientNet-Lite (lite0, lite1, lite2). Default: recognised from `--weights`
    /// when given, else lite0. Images are resized to the variant's resolution (224/240/260).
    #[arg(long)]
    pub backbone: Option<Backbone>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Images (PNG/JPEG) or `.safetensors` files holding an `input` tensor [1,3,224,224].
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if lines.first().is_some_and(|l| l == "background") {
        lines.remove(0);
    }
    if lines.len() != pmad::models::efficientnet::NUM_CLASSES {
        return Err(Error::format(
            path,
            format!("expected 1000 class names, found {}", lines.len()),
        ));
    }
    Ok(lines)
}

fn read_input(path: &Path, size: usize) -> Result<Tensor> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        let st = pmad::weights::SafeTensors::open(path)?;
        let t = st.tensor("input")?;
        if t.rank() != 4 || t.dim(0) != 1 || t.dim(1) != 3 {
            return Err(Error::format(
                path,
                format!("tensor 'input' must be [1, 3, H, W], got {:?}", t.shape()),
            ));
        }
        return Tensor::new(t.f32s().into_owned(), t.shape());
    }
    Ok(classification_input(&load_rgb(path)?, size))
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    // Read everything first so a bad file fails before any output is printed.
    let labels = args.labels.as_deref().map(read_labels).transpose()?;
    let explicit = args.weights.is_some();
    let path = super::require_backbone_for(args.weights, args.backbone.unwrap_or_default())?;
    let net = match args.backbone {
        Some(b) => EfficientNetLite::load_as(&path, b)?,
        None if explicit => EfficientNetLite::load(&path)?,
        None => EfficientNetLite::load_as(&path, Backbone::Lite0)?,
    };
    let size = net.backbone().resolution();
    let inputs: Vec<Tensor> = args
        .images
        .iter()
        .map(|p| read_input(p, size))
        .collect::<Result<_>>()?;
    for (path, x) in args.images.iter().zip(&inputs) {
        let logits = net.forward(x)?;
        let probs = softmax(&logits);
        let p = probs.f32s();
        say!("{}", path.display());
        for (rank, &c) in topk_row(&p, args.top).iter().enumerate() {
            let name = labels
                .as_ref()
                .map_or_else(|| format!("class {c}"), |l| l[c].clone());
            say!("  {}. {:<40} {:.4}  ({c})", rank + 1, name, p[c]);
        }
    }
    Ok(())
}
