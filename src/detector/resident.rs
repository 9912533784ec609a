//! Scoring a batch with every stage's result left on the backend (issue 11 item 3), written
//! once over [`ScoreOps`]: pixels go in once; features -> nearest-prototype distance ->
//! proposal mask -> (codebook tokens) -> ViT -> uncertainty x distance -> resize -> blur ->
//! image score run where the backend runs them; only the image scores (and the maps when
//! asked for) and one row of non-finite flags per image come back. On a GPU that removes
//! the round trips of the staged path (features down and up again, the search results down,
//! the mask up, the entropies down, the maps on the host).
//!
//! It covers what `inspect` scores: the `distance`, `product`, `entropy`, `product-ce` and
//! `cross-entropy` kinds with the proposal inference mask and the 1-NN patch score. The
//! flow, PatchCore's reweighting, random/blockwise masks and several kinds at once (`eval`)
//! take the staged path (`detector/patch_scores.rs`, `detector/stage2.rs`), which is also the CPU
//! backend's path; a test holds this pass on the CPU ops equal to it.
//!
//! Fail closed: each stage's values are checked finite on the backend (the flags of
//! [`ScoreOps::record_nonfinite`]) and the flags are read before any score is returned, so a
//! NaN anywhere fails the batch with the image and the stage named, as on the staged path.

use crate::backend::{DeviceBank, SCORE_STAGES, ScoreOps};
use crate::detector::class_cache::ClassModel;
use crate::detector::model_dir::{InferenceMask, ScoreKind};
use crate::detector::reweight::PatchScore;
use crate::detector::scoring::{AnomalyMap, MapSpec};
use crate::error::{Error, Result};
use crate::models::efficientnet_infer::InferFeatures;
use crate::recon::vit_infer::InferVit;

/// Whether a batch of `kind` scores can run resident under these settings (see the module
/// docs); the staged path serves the rest.
pub fn covers(kind: ScoreKind, mask: InferenceMask, spec: &MapSpec) -> bool {
    !kind.uses_flow() && mask == InferenceMask::Proposal && spec.patch_score == PatchScore::Nn
}

/// The detector's settings a resident pass reads (whatever the backend).
pub struct Settings<'a> {
    /// Feature grid side and dimension.
    pub grid: usize,
    pub dim: usize,
    /// How patch scores become maps and image scores.
    pub spec: &'a MapSpec,
    /// The class's inference mask ratio.
    pub mask_ratio: f32,
    /// The codebook `[k, dim]` and its device copy (the own-token kinds need it).
    pub codebook: Option<(&'a [f32], &'a DeviceBank)>,
}

/// A resident pass's models on one backend `O`, and the settings.
pub struct ScoreChain<'a, O: ScoreOps> {
    pub ops: &'a O,
    pub features: &'a InferFeatures<O>,
    /// The reconstruction stage's ViT on `O` (the ViT kinds need it).
    pub vit: Option<&'a InferVit<O>>,
    pub settings: Settings<'a>,
}

/// The maps of `kind` for the network inputs `x` (`[batch, 3, S, S]`, host) against `class`,
/// `O::CHUNK` images per pass; `values` empty unless `want_maps`.
pub fn score<O: ScoreOps>(
    chain: &ScoreChain<'_, O>,
    class: &ClassModel,
    x: &[f32],
    batch: usize,
    kind: ScoreKind,
    want_maps: bool,
) -> Result<Vec<AnomalyMap>> {
    let mut out = Vec::with_capacity(batch);
    let per_image = x.len().checked_div(batch).unwrap_or(0);
    for start in (0..batch).step_by(O::CHUNK.max(1)) {
        let end = (start + O::CHUNK).min(batch);
        let maps = score_chunk(
            chain,
            class,
            &x[start * per_image..end * per_image],
            end - start,
            kind,
            want_maps,
        )
        .map_err(|e| match e {
            Error::NonFinite {
                class,
                image,
                stage,
                value,
            } => Error::NonFinite {
                class,
                image: image + start,
                stage,
                value,
            },
            other => other,
        })?;
        out.extend(maps);
    }
    Ok(out)
}

/// One pass over `b` images.
fn score_chunk<O: ScoreOps>(
    chain: &ScoreChain<'_, O>,
    class: &ClassModel,
    x: &[f32],
    b: usize,
    kind: ScoreKind,
    want_maps: bool,
) -> Result<Vec<AnomalyMap>> {
    let (o, g, dim) = (chain.ops, chain.settings.grid, chain.settings.dim);
    let name = class.info.name.as_str();
    let mut flags = o.nonfinite_flags(b)?;
    let feats = chain.features.extract(x, b)?;
    o.record_nonfinite(&feats, g * g * dim, &mut flags, 0)?;
    // §3: the abnormality of a patch is its distance to the nearest normal prototype.
    let a = o.nearest_distance(class, &feats, b * g * g, dim)?;
    o.record_nonfinite(&a, g * g, &mut flags, 1)?;
    let patches = if kind.uses_vit() {
        let u = uncertainty(chain, x, &feats, &a, b, kind.uses_own_token(), name)?;
        let vgrid = grid_of(chain)?;
        o.record_nonfinite(&u, vgrid * vgrid, &mut flags, 2)?;
        // §7: full PMAD scores uncertainty x abnormality; entropy kinds the uncertainty.
        let product = matches!(kind, ScoreKind::Product | ScoreKind::ProductCe);
        o.upsample_product(&u, product.then_some(&a), b, vgrid, g)?
    } else {
        a
    };
    let spec = chain.settings.spec;
    let side = spec.size * spec.size;
    let maps = o.maps(&patches, b, g, spec)?;
    o.record_nonfinite(&maps, side, &mut flags, 3)?;
    let scores = o.image_scores(&maps, b, side, spec.image_score)?;
    // Fail closed: the flags first, then the scores; no score leaves before both pass.
    let flags = o.to_host(&flags)?;
    for (image, row) in flags.chunks(SCORE_STAGES.len()).enumerate() {
        if let Some(slot) = row.iter().position(|&v| v != 0.0) {
            return Err(Error::NonFinite {
                class: name.to_string(),
                image,
                stage: SCORE_STAGES[slot],
                value: row[slot],
            });
        }
    }
    let scores = o.to_host(&scores)?;
    if let Some(image) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::NonFinite {
            class: name.to_string(),
            image,
            stage: "map",
            value: scores[image],
        });
    }
    let values = if want_maps {
        o.to_host(&maps)?
    } else {
        Vec::new()
    };
    Ok(scores
        .iter()
        .enumerate()
        .map(|(i, &score)| AnomalyMap {
            size: spec.size,
            values: if want_maps {
                values[i * side..(i + 1) * side].to_vec()
            } else {
                Vec::new()
            },
            score,
        })
        .collect())
}

/// The ViT grid side.
fn grid_of<O: ScoreOps>(chain: &ScoreChain<'_, O>) -> Result<usize> {
    let vit = chain
        .vit
        .ok_or_else(|| Error::invalid("the product/entropy scores need a trained ViT"))?;
    let c = vit.config();
    Ok(c.image_size / c.patch.max(1))
}

/// Stage 2 (METHOD.md §4-7) on the backend: the proposal mask from the abnormality `a`, the
/// ViT's entropy (or, with `own_token`, the cross-entropy of each patch's codebook token) at
/// the masked patches, 0 elsewhere: `[b, vgrid²]`. A feature-input ViT (`pmad train`'s
/// default) reads the features pooled on the backend; a pixel-input one the pixels `x`,
/// unfolded on the host and sent up a second time.
fn uncertainty<O: ScoreOps>(
    chain: &ScoreChain<'_, O>,
    x: &[f32],
    feats: &O::Act,
    a: &O::Act,
    b: usize,
    own_token: bool,
    class: &str,
) -> Result<O::Act> {
    let (o, g, dim) = (chain.ops, chain.settings.grid, chain.settings.dim);
    let vit = chain
        .vit
        .ok_or_else(|| Error::invalid("the product/entropy scores need a trained ViT"))?;
    let vgrid = grid_of(chain)?;
    let n = vgrid * vgrid;
    let (mask, k) = o.proposal_mask(a, b, g, vgrid, chain.settings.mask_ratio)?;
    if k == 0 {
        // Nothing masked: no uncertainty anywhere.
        return o.zeros(b * n);
    }
    let rows = o.masked_rows(&mask, b, n, k)?;
    let m = b * k;
    let feature_input = vit.config().input_dim > 0;
    let pooled = if feature_input || own_token {
        Some(o.pool_cells(feats, b, g, vgrid, dim)?)
    } else {
        None
    };
    let targets = if own_token {
        let (codes, on_device) = chain.settings.codebook.ok_or_else(|| {
            Error::invalid(format!(
                "{class}: the cross-entropy scores need the model's codebook (none: trained on \
                 external token ids)"
            ))
        })?;
        if codes.len() / dim.max(1) > vit.config().vocab {
            return Err(Error::invalid(format!(
                "the codebook's {} tokens exceed the ViT's vocabulary of {}",
                codes.len() / dim.max(1),
                vit.config().vocab
            )));
        }
        let pooled = pooled.as_ref().expect("pooled above for own tokens");
        let masked = o.gather_rows(pooled, &rows, dim)?;
        Some(o.assign(codes, on_device, &masked, m, dim)?)
    } else {
        None
    };
    let input = match pooled {
        Some(p) if feature_input => p,
        // A pixel-input ViT unfolds the pixels on the host: they go up a second time.
        _ => o.input(vit.patch_rows(x))?,
    };
    let (e, ce) = vit.forward_masked(input, &mask, &rows, m, b, targets.as_ref())?;
    let per_row = if own_token {
        ce.ok_or_else(|| Error::invalid("the ViT returned no cross-entropy"))?
    } else {
        e
    };
    o.scatter_rows(&per_row, &rows, b * n)
}
