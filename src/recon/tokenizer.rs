//! Visual tokens (METHOD.md §6): the discrete targets the masked ViT predicts.
//!
//! Neither the paper's tokenizer (DALL-E dVAE) nor the release's (BEiT-v2 VQ-KD) can be
//! obtained here, so the offline default is a [`Codebook`]: k-means over pretrained backbone
//! patch features pooled to the ViT's 14x14 grid ([`pool_to_vit_grid`]); a patch's token is the
//! id of its nearest code. Token ids produced elsewhere (e.g. by a dVAE) can be loaded instead
//! with [`load_token_ids`], and ours exported with [`save_token_ids`].

use super::{GRID, PATCHES};
use crate::error::{Error, Result};
use crate::ops::nn_search::{nearest_rows, row_sq_norms};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::weights::{SafeTensors, write_safetensors};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Largest vocabulary (the paper's |V|).
pub const MAX_VOCAB: usize = 8192;
/// Smallest vocabulary [`default_vocab`] picks.
pub const MIN_DEFAULT_VOCAB: usize = 16;
/// Average number of feature rows per code [`default_vocab`] aims at.
pub const ROWS_PER_CODE: usize = 64;
/// k-means++ seeding runs on a random subsample of at most this many rows.
pub const SEEDING_ROWS: usize = 50_000;
/// `__metadata__` kind of a codebook file.
pub const CODEBOOK_KIND: &str = "pmad-codebook";
/// `__metadata__` kind of a token-id file written by [`save_token_ids`].
pub const TOKEN_IDS_KIND: &str = "pmad-token-ids";
/// Name of the codebook tensor in its file.
const CODEBOOK_TENSOR: &str = "codebook";

/// Average-pools patch features of `n` images from a `grid x grid` map to the ViT's 14x14 grid.
///
/// `feats` is `[n, grid * grid, dim]` (row-major patches, channels last; the feature extractor
/// gives grid 28, dim 152 at 224 input); the result is `[n, 196, dim]`. Each ViT patch is the
/// mean of the `(grid/14)^2` feature cells it covers. Errors when `grid` is not a positive
/// multiple of 14, `dim` is 0, or `feats` is not a whole number of images.
pub fn pool_to_vit_grid(feats: &[f32], grid: usize, dim: usize) -> Result<Vec<f32>> {
    if grid == 0 || !grid.is_multiple_of(GRID) || dim == 0 {
        return Err(Error::shape(format!(
            "pool_to_vit_grid: a {grid}x{grid} grid of {dim} channels cannot be pooled to \
             {GRID}x{GRID} (the grid must be a positive multiple of {GRID})"
        )));
    }
    let per_image = grid * grid * dim;
    if !feats.len().is_multiple_of(per_image) {
        return Err(Error::shape(format!(
            "pool_to_vit_grid: {} values are not a whole number of [{grid}x{grid}, {dim}] maps",
            feats.len()
        )));
    }
    let f = grid / GRID;
    let scale = 1.0 / (f * f) as f32;
    let mut out = vec![0f32; feats.len() / per_image * PATCHES * dim];
    for (img, dst) in feats
        .chunks_exact(per_image)
        .zip(out.chunks_exact_mut(PATCHES * dim))
    {
        for y in 0..grid {
            for x in 0..grid {
                let src = &img[(y * grid + x) * dim..][..dim];
                let cell = &mut dst[((y / f) * GRID + x / f) * dim..][..dim];
                cell.iter_mut().zip(src).for_each(|(o, &v)| *o += v);
            }
        }
        dst.iter_mut().for_each(|v| *v *= scale);
    }
    Ok(out)
}

/// The vocabulary size "sized to the data": about [`ROWS_PER_CODE`] (64) rows per code, i.e.
/// `next_power_of_two(n_rows / 64)`, clamped to `[16, 8192]`. E.g. 200 training images x 196
/// patches = 39,200 rows -> 1024 codes; 3,600 images -> 8192. Enough rows per code keep the
/// code means stable; powers of two keep sizes comparable across runs.
pub fn default_vocab(n_rows: usize) -> usize {
    (n_rows / ROWS_PER_CODE)
        .max(1)
        .next_power_of_two()
        .clamp(MIN_DEFAULT_VOCAB, MAX_VOCAB)
}

/// Squared Euclidean distance, accumulated in 8 lanes so the compiler vectorises it.
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A k-means codebook: `k` codes of `dim` features; a row's token is its nearest code's id.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebook {
    dim: usize,
    /// `[k, dim]`, row-major.
    codes: Vec<f32>,
}

impl Codebook {
    /// A codebook from its codes `[k, dim]`. Errors when the sizes do not fit, `k` is 0 or
    /// above [`MAX_VOCAB`], or a value is not finite.
    pub fn new(codes: Vec<f32>, dim: usize) -> Result<Codebook> {
        if dim == 0 || codes.is_empty() || !codes.len().is_multiple_of(dim) {
            return Err(Error::shape(format!(
                "codebook: {} values are not a non-empty [k, {dim}] matrix",
                codes.len()
            )));
        }
        let k = codes.len() / dim;
        if k > MAX_VOCAB {
            return Err(Error::invalid(format!(
                "codebook: {k} codes, the vocabulary is at most {MAX_VOCAB}"
            )));
        }
        if let Some(i) = codes.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "codebook: code {} feature {} is {}",
                i / dim,
                i % dim,
                codes[i]
            )));
        }
        Ok(Codebook { dim, codes })
    }

    /// Fits `k` codes to `rows [n, dim]`: k-means++ seeding (D² sampling) on a random
    /// subsample of at most [`SEEDING_ROWS`] rows, then up to `iters` Lloyd iterations over all
    /// rows (GEMM nearest search; means summed in f64; stops early once no assignment
    /// changes). A code left without rows is re-seeded, deterministically, with the row
    /// farthest from its own code (the next-farthest for the next empty code, and so on).
    /// Everything random comes from `seed`.
    ///
    /// Errors when `k` is 0, above [`MAX_VOCAB`] or above the number of rows, when `rows` is
    /// not `[n, dim]`, or holds a non-finite value.
    pub fn fit(rows: &[f32], dim: usize, k: usize, iters: usize, seed: u64) -> Result<Codebook> {
        if dim == 0 || !rows.len().is_multiple_of(dim) {
            return Err(Error::shape(format!(
                "codebook fit: {} values are not rows of {dim} features",
                rows.len()
            )));
        }
        let n = rows.len() / dim;
        if k == 0 || k > MAX_VOCAB || k > n {
            return Err(Error::invalid(format!(
                "codebook fit: cannot fit {k} codes to {n} rows (need 1 <= k <= min(rows, \
                 {MAX_VOCAB}))"
            )));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "codebook fit: row {} feature {} is {}",
                i / dim,
                i % dim,
                rows[i]
            )));
        }
        let mut rng = Rng::new(seed);
        let mut codes = kmeans_pp(rows, dim, k, &mut rng);
        lloyd(rows, dim, &mut codes, iters);
        Codebook::new(codes, dim)
    }

    /// Number of codes (the vocabulary size).
    pub fn k(&self) -> usize {
        self.codes.len() / self.dim
    }

    /// Features per code.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The codes, `[k, dim]` row-major.
    pub fn codes(&self) -> &[f32] {
        &self.codes
    }

    /// The token of each row of `rows [n, dim]`: the id of its nearest code (squared
    /// Euclidean distance). Errors when `rows` is not made of `dim`-wide rows (e.g. features
    /// of another backbone than the codebook was fitted on).
    pub fn assign(&self, rows: &[f32]) -> Result<Vec<u32>> {
        if !rows.len().is_multiple_of(self.dim) {
            return Err(Error::shape(format!(
                "codebook assign: {} values are not rows of the codebook's {} features",
                rows.len(),
                self.dim
            )));
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let sq = row_sq_norms(&self.codes, self.dim);
        Ok(nearest_rows(rows, &self.codes, &sq, self.dim).index)
    }

    /// Writes the codebook atomically: tensor `codebook` `[k, dim]` F32, metadata
    /// `kind = pmad-codebook`, `k`, `dim`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let t = Tensor::new(self.codes.clone(), &[self.k(), self.dim])?;
        let meta = BTreeMap::from([
            ("kind".to_string(), CODEBOOK_KIND.to_string()),
            ("k".to_string(), self.k().to_string()),
            ("dim".to_string(), self.dim.to_string()),
        ]);
        write_safetensors(path, [(CODEBOOK_TENSOR, &t)], Some(&meta))
    }

    /// Reads a codebook written by [`save`](Self::save) (or any safetensors file with a float
    /// `codebook` tensor `[k, dim]`, 1 <= k <= 8192, and no other `kind`). Errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Codebook> {
        let path = path.as_ref();
        let st = SafeTensors::open(path)?;
        if let Some(kind) = st.metadata().get("kind")
            && kind != CODEBOOK_KIND
        {
            return Err(Error::format(
                path,
                format!("this is a '{kind}' file, not a {CODEBOOK_KIND}"),
            ));
        }
        let info = st.info(CODEBOOK_TENSOR).ok_or_else(|| {
            Error::format(
                path,
                format!("no '{CODEBOOK_TENSOR}' tensor: not a codebook file"),
            )
        })?;
        let shape = info.shape.clone();
        if shape.len() != 2 || shape[0] == 0 || shape[0] > MAX_VOCAB || shape[1] == 0 {
            return Err(Error::format(
                path,
                format!(
                    "tensor '{CODEBOOK_TENSOR}': shape {shape:?}, expected [k, dim] with \
                     1 <= k <= {MAX_VOCAB} and dim >= 1"
                ),
            ));
        }
        let codes = st
            .tensor_f32_checked(CODEBOOK_TENSOR, &shape)?
            .f32s()
            .into_owned();
        Codebook::new(codes, shape[1])
            .map_err(|e| Error::format(path, format!("tensor '{CODEBOOK_TENSOR}': {e}")))
    }
}

/// k-means++ seeding (Arthur & Vassilvitskii): the first code is a uniform row, each next one
/// a row drawn with probability proportional to its squared distance from the nearest code
/// chosen so far (D² sampling). Runs on a random subsample of at most [`SEEDING_ROWS`] rows.
/// When every remaining distance is 0 (fewer distinct rows than codes), a uniform row.
fn kmeans_pp(rows: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = rows.len() / dim;
    let sub: Vec<f32>;
    let sample: &[f32] = if n > SEEDING_ROWS {
        let mut pick: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut pick);
        pick.truncate(SEEDING_ROWS);
        pick.sort_unstable();
        sub = pick
            .iter()
            .flat_map(|&i| rows[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        &sub
    } else {
        rows
    };
    let m = sample.len() / dim;
    let row = |i: usize| &sample[i * dim..(i + 1) * dim];

    let mut codes = Vec::with_capacity(k * dim);
    let mut d2 = vec![f32::INFINITY; m];
    let mut next = rng.below(m);
    for c in 0..k {
        codes.extend_from_slice(row(next));
        if c + 1 == k {
            break;
        }
        // Fold the new code into every row's nearest distance (parallel over row blocks).
        let code = &codes[c * dim..];
        const BLOCK: usize = 1024;
        sample
            .par_chunks(BLOCK * dim)
            .zip(d2.par_chunks_mut(BLOCK))
            .for_each(|(rs, ds)| {
                for (r, d) in rs.chunks_exact(dim).zip(ds) {
                    *d = d.min(sq_dist(r, code));
                }
            });
        let total: f64 = d2.iter().map(|&v| v as f64).sum();
        next = if total > 0.0 {
            let mut target = rng.uniform() as f64 * total;
            let mut chosen = None;
            for (i, &v) in d2.iter().enumerate() {
                if v > 0.0 {
                    chosen = Some(i); // the last positive row absorbs rounding at the end
                    if target < v as f64 {
                        break;
                    }
                    target -= v as f64;
                }
            }
            chosen.unwrap_or(0)
        } else {
            rng.below(m)
        };
    }
    codes
}

/// Lloyd iterations in place: assign every row to its nearest code, move each code to the mean
/// of its rows; re-seed empty codes with the farthest rows. Stops early when an assignment
/// repeats the previous one (the means would not move).
fn lloyd(rows: &[f32], dim: usize, codes: &mut [f32], iters: usize) {
    let k = codes.len() / dim;
    let mut previous: Vec<u32> = Vec::new();
    for _ in 0..iters {
        let near = nearest_rows(rows, codes, &row_sq_norms(codes, dim), dim);
        if near.index == previous {
            break;
        }
        let mut sum = vec![0f64; k * dim];
        let mut count = vec![0usize; k];
        for (row, &a) in rows.chunks_exact(dim).zip(&near.index) {
            let a = a as usize;
            count[a] += 1;
            sum[a * dim..(a + 1) * dim]
                .iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += v as f64);
        }
        for ((code, s), &m) in codes.chunks_mut(dim).zip(sum.chunks(dim)).zip(&count) {
            if m > 0 {
                code.iter_mut()
                    .zip(s)
                    .for_each(|(c, &s)| *c = (s / m as f64) as f32);
            }
        }
        let empty: Vec<usize> = (0..k).filter(|&c| count[c] == 0).collect();
        if !empty.is_empty() {
            // Farthest rows first (ties: lower index), one per empty code.
            let mut order: Vec<usize> = (0..near.dist2.len()).collect();
            order.sort_by(|&a, &b| near.dist2[b].total_cmp(&near.dist2[a]).then(a.cmp(&b)));
            for (&c, &r) in empty.iter().zip(&order) {
                codes[c * dim..(c + 1) * dim].copy_from_slice(&rows[r * dim..(r + 1) * dim]);
            }
        }
        previous = near.index;
    }
}

/// Reads token ids made elsewhere (or by [`save_token_ids`]): a safetensors file with one
/// integer tensor per image, named by the image's path relative to the data root (e.g.
/// `bottle/train/good/000.png`), of shape `[196]` or `[14, 14]` (row-major patches) and dtype
/// I32, I64 or U8 (the dtypes our safetensors reader knows; a U32/I16 file is refused when
/// opened, with the tensor named).
///
/// With `vocab = Some(v)` every id must be `< v`. Errors name the file and the tensor: a
/// float dtype, a wrong shape, a negative or out-of-vocabulary id.
pub fn load_token_ids(path: &Path, vocab: Option<usize>) -> Result<BTreeMap<String, Vec<u32>>> {
    let st = SafeTensors::open(path)?;
    let mut out = BTreeMap::new();
    for name in st.names() {
        let bad = |msg: String| Error::format(path, format!("tensor '{name}': {msg}"));
        let t = st.tensor(name)?;
        let shape = t.shape();
        if shape != [PATCHES] && shape != [GRID, GRID] {
            return Err(bad(format!(
                "shape {shape:?}, expected [{PATCHES}] or [{GRID}, {GRID}] token ids"
            )));
        }
        let bytes = t.raw_bytes();
        let ids: Vec<i64> = match t.dtype() {
            DType::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
            DType::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4-byte chunk")) as i64)
                .collect(),
            DType::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(bad(format!(
                    "dtype {other}, token ids must be integers (I32, I64 or U8)"
                )));
            }
        };
        let limit = vocab.map_or(u32::MAX as i64 + 1, |v| v as i64);
        if let Some(p) = ids.iter().position(|&id| id < 0 || id >= limit) {
            return Err(bad(match vocab {
                Some(v) => format!(
                    "patch {p} has token id {}, outside the vocabulary [0, {v})",
                    ids[p]
                ),
                None => format!("patch {p} has token id {}, not a valid id", ids[p]),
            }));
        }
        out.insert(
            name.to_string(),
            ids.into_iter().map(|id| id as u32).collect(),
        );
    }
    Ok(out)
}

/// Writes token ids for [`load_token_ids`]: one I32 tensor `[196]` per image (the map's key is
/// the tensor name), metadata `kind = pmad-token-ids`; atomic. Errors when a list is not 196
/// long, an id does not fit an I32, or a name is reserved / duplicated.
pub fn save_token_ids(path: &Path, ids: &BTreeMap<String, Vec<u32>>) -> Result<()> {
    let mut tensors = Vec::with_capacity(ids.len());
    for (name, list) in ids {
        if list.len() != PATCHES {
            return Err(Error::invalid(format!(
                "{}: image '{name}' has {} token ids, expected {PATCHES}",
                path.display(),
                list.len()
            )));
        }
        let mut bytes = Vec::with_capacity(PATCHES * 4);
        for &id in list {
            let id = i32::try_from(id).map_err(|_| {
                Error::invalid(format!(
                    "{}: image '{name}' has token id {id}, too large for I32",
                    path.display()
                ))
            })?;
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        tensors.push((
            name.as_str(),
            Tensor::from_bytes(bytes, DType::I32, &[PATCHES])?,
        ));
    }
    let meta = BTreeMap::from([("kind".to_string(), TOKEN_IDS_KIND.to_string())]);
    write_safetensors(path, tensors, Some(&meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pmad_tok_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// `per` rows around each of `centres`, Gaussian noise of std `sigma`, interleaved.
    fn blobs(centres: &[Vec<f32>], per: usize, sigma: f32, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut x = Vec::new();
        for _ in 0..per {
            for c in centres {
                x.extend(c.iter().map(|&v| v + sigma * rng.normal()));
            }
        }
        x
    }

    #[test]
    fn pool_to_vit_grid_averages_each_window() {
        // One 28x28 image, 2 channels: channel 0 = cell index, channel 1 = 1.
        let (g, d) = (28, 2);
        let feats: Vec<f32> = (0..g * g).flat_map(|i| [i as f32, 1.0]).collect();
        let out = pool_to_vit_grid(&feats, g, d).unwrap();
        assert_eq!(out.len(), PATCHES * d);
        // ViT patch (r, c) covers cells (2r..2r+2, 2c..2c+2).
        for r in 0..GRID {
            for c in 0..GRID {
                let base = (2 * r * g + 2 * c) as f32;
                let want = (4.0 * base + 1.0 + g as f32 + g as f32 + 1.0) / 4.0;
                assert_eq!(out[(r * GRID + c) * d], want);
                assert_eq!(out[(r * GRID + c) * d + 1], 1.0);
            }
        }
        // grid 14 is the identity; two images keep their order.
        let two: Vec<f32> = (0..2 * PATCHES * 3).map(|i| i as f32).collect();
        assert_eq!(pool_to_vit_grid(&two, 14, 3).unwrap(), two);
        assert!(pool_to_vit_grid(&feats, 20, d).is_err());
        assert!(pool_to_vit_grid(&feats[1..], g, d).is_err());
    }

    #[test]
    fn default_vocab_is_sized_to_the_data() {
        assert_eq!(default_vocab(0), 16);
        assert_eq!(default_vocab(100), 16);
        assert_eq!(default_vocab(200 * 196), 1024);
        assert_eq!(default_vocab(10_000_000), MAX_VOCAB);
        for n in [1, 5000, 123_456, 1 << 20] {
            assert!(default_vocab(n).is_power_of_two());
        }
    }

    #[test]
    fn fit_recovers_separated_blobs_and_assign_is_the_argmin() {
        let d = 12;
        let mut rng = Rng::new(77);
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..d).map(|_| rng.range(-20.0, 20.0)).collect())
            .collect();
        let x = blobs(&centres, 60, 0.3, 1);
        let cb = Codebook::fit(&x, d, 8, 20, 3).unwrap();
        assert_eq!((cb.k(), cb.dim()), (8, d));
        let ids = cb.assign(&x).unwrap();
        // Row i belongs to blob i % 8: each blob maps to one code, distinct blobs to distinct
        // codes.
        let mut code_of = [u32::MAX; 8];
        for (i, &id) in ids.iter().enumerate() {
            let b = i % 8;
            if code_of[b] == u32::MAX {
                code_of[b] = id;
            }
            assert_eq!(code_of[b], id, "blob {b} split");
        }
        let mut distinct = code_of.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "two blobs share a code");

        // assign == brute-force argmin on random rows.
        let q: Vec<f32> = (0..50 * d).map(|_| rng.range(-25.0, 25.0)).collect();
        let got = cb.assign(&q).unwrap();
        for (qi, row) in q.chunks(d).enumerate() {
            let dists: Vec<f32> = cb.codes().chunks(d).map(|c| sq_dist(row, c)).collect();
            let best = dists.iter().copied().fold(f32::INFINITY, f32::min);
            assert!(
                dists[got[qi] as usize] <= best * (1.0 + 1e-4) + 1e-4,
                "row {qi}"
            );
        }
        assert!(cb.assign(&q[1..]).is_err());
        // Same seed, same codebook.
        assert_eq!(Codebook::fit(&x, d, 8, 20, 3).unwrap(), cb);
    }

    #[test]
    fn fit_handles_duplicates_and_bad_arguments() {
        // 3 distinct rows, 5 codes: empty clusters are re-seeded, nothing panics.
        let x: Vec<f32> = [0.0, 0.0, 5.0, 5.0, 9.0, 0.0].repeat(4);
        let cb = Codebook::fit(&x, 2, 5, 5, 1).unwrap();
        assert_eq!(cb.k(), 5);
        let ids = cb.assign(&x).unwrap();
        for (i, row) in x.chunks(2).enumerate() {
            let c = &cb.codes()[ids[i] as usize * 2..][..2];
            assert_eq!(c, row, "a distinct row must get an exact code");
        }
        assert!(Codebook::fit(&x, 2, 0, 5, 1).is_err());
        assert!(Codebook::fit(&x, 2, 13, 5, 1).is_err());
        assert!(Codebook::fit(&x[1..], 2, 2, 5, 1).is_err());
        let mut nan = x.clone();
        nan[3] = f32::NAN;
        assert!(
            Codebook::fit(&nan, 2, 2, 5, 1)
                .unwrap_err()
                .to_string()
                .contains("row 1")
        );
    }

    #[test]
    fn codebook_save_load_round_trip_and_bad_files() {
        let cb = Codebook::new((0..24).map(|i| i as f32 * 0.5).collect(), 6).unwrap();
        let p = temp_path("cb.safetensors");
        cb.save(&p).unwrap();
        assert_eq!(Codebook::load(&p).unwrap(), cb);

        let garbage = temp_path("garbage.safetensors");
        std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
        let e = Codebook::load(&garbage).unwrap_err().to_string();
        assert!(e.contains("garbage.safetensors"), "{e}");

        let flat = temp_path("flat.safetensors");
        let t = Tensor::new(vec![1.0; 6], &[6]).unwrap();
        write_safetensors(&flat, [("codebook", &t)], None).unwrap();
        let e = Codebook::load(&flat).unwrap_err().to_string();
        assert!(
            e.contains("flat.safetensors") && e.contains("shape [6]"),
            "{e}"
        );

        let other = temp_path("other.safetensors");
        write_safetensors(&other, [("weights", &t)], None).unwrap();
        let e = Codebook::load(&other).unwrap_err().to_string();
        assert!(
            e.contains("other.safetensors") && e.contains("no 'codebook'"),
            "{e}"
        );

        let ids = temp_path("ids_not_cb.safetensors");
        save_token_ids(
            &ids,
            &BTreeMap::from([("a.png".to_string(), vec![0; PATCHES])]),
        )
        .unwrap();
        let e = Codebook::load(&ids).unwrap_err().to_string();
        assert!(e.contains("pmad-token-ids"), "{e}");

        let missing = temp_path("missing.safetensors");
        assert!(
            Codebook::load(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn token_ids_round_trip_and_validation() {
        let mut ids = BTreeMap::new();
        ids.insert(
            "bottle/train/good/000.png".to_string(),
            (0..PATCHES as u32).collect::<Vec<_>>(),
        );
        ids.insert("cable/train/good/001.png".to_string(), vec![7u32; PATCHES]);
        let p = temp_path("ids.safetensors");
        save_token_ids(&p, &ids).unwrap();
        assert_eq!(load_token_ids(&p, Some(PATCHES)).unwrap(), ids);
        assert_eq!(load_token_ids(&p, None).unwrap(), ids);

        // Out of vocabulary: names file, tensor and patch.
        let e = load_token_ids(&p, Some(100)).unwrap_err().to_string();
        assert!(
            e.contains("ids.safetensors")
                && e.contains("bottle/train/good/000.png")
                && e.contains("patch 100"),
            "{e}"
        );

        // Other integer dtypes and the [14, 14] layout are read.
        let ext = temp_path("ext.safetensors");
        let i64s: Vec<u8> = (0..PATCHES as i64).flat_map(|v| v.to_le_bytes()).collect();
        let u8s: Vec<u8> = (0..PATCHES as u8).collect();
        let a = Tensor::from_bytes(i64s, DType::I64, &[GRID, GRID]).unwrap();
        let b = Tensor::from_bytes(u8s, DType::U8, &[PATCHES]).unwrap();
        write_safetensors(&ext, [("a.png", &a), ("b.png", &b)], None).unwrap();
        let got = load_token_ids(&ext, Some(8192)).unwrap();
        let want: Vec<u32> = (0..PATCHES as u32).collect();
        assert_eq!(got["a.png"], want);
        assert_eq!(got["b.png"], want);

        // Wrong shape, float dtype, negative id.
        let bad = temp_path("bad.safetensors");
        let short = Tensor::from_bytes(vec![0; 4 * 10], DType::I32, &[10]).unwrap();
        write_safetensors(&bad, [("x.png", &short)], None).unwrap();
        let e = load_token_ids(&bad, None).unwrap_err().to_string();
        assert!(
            e.contains("bad.safetensors") && e.contains("'x.png'") && e.contains("[10]"),
            "{e}"
        );
        let float = Tensor::new(vec![0.0; PATCHES], &[PATCHES]).unwrap();
        write_safetensors(&bad, [("y.png", &float)], None).unwrap();
        let e = load_token_ids(&bad, None).unwrap_err().to_string();
        assert!(e.contains("'y.png'") && e.contains("F32"), "{e}");
        let mut neg: Vec<u8> = 0i32.to_le_bytes().repeat(PATCHES);
        neg[..4].copy_from_slice(&(-3i32).to_le_bytes());
        let neg = Tensor::from_bytes(neg, DType::I32, &[PATCHES]).unwrap();
        write_safetensors(&bad, [("z.png", &neg)], None).unwrap();
        let e = load_token_ids(&bad, None).unwrap_err().to_string();
        assert!(e.contains("'z.png'") && e.contains("-3"), "{e}");

        // The writer checks lengths.
        let short = BTreeMap::from([("s.png".to_string(), vec![1u32; 3])]);
        assert!(save_token_ids(&bad, &short).is_err());
    }

    /// Timing of the speed target: `cargo test --release --lib fit_timing -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn fit_timing_100k_rows_k1024() {
        let (n, d, k) = (100_000, 152, 1024);
        let mut rng = Rng::new(1);
        let centres: Vec<Vec<f32>> = (0..2000)
            .map(|_| (0..d).map(|_| rng.range(-1.0, 1.0)).collect())
            .collect();
        let x = blobs(&centres, n / 2000, 0.2, 2);
        let t = std::time::Instant::now();
        let cb = Codebook::fit(&x, d, k, 10, 0).unwrap();
        eprintln!("fit k={k} on {n}x{d}, 10 iters: {:.2?}", t.elapsed());
        assert_eq!(cb.k(), k);
    }
}
