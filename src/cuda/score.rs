//! Launchers of `kernels/score.cu`: the scoring chain after the nearest-prototype search, on
//! the device (issue 11 item 3). Each launcher names the CPU function it mirrors; the backend
//! op set (`crate::backend`'s `ScoreOps`) calls them, and `tests/seam_parity.rs` holds each to
//! its CPU twin. Index buffers are `u32` (row ids below 2³¹, read as `int` by the kernels).

use cudarc::driver::LaunchConfig;

use super::CudaSlice;
use super::launch::KernelArg::{In, Out, Params};
use super::launch::launch;
use super::params::ScoreParams;
use super::{
    CudaDevice, CudaError, CudaResult, KernelModule, block_per_item, check_len, grid_stride, to_i32,
};

/// Launches `name` of score.cu over `items` work items with `args` (nothing for none).
fn run(
    dev: &CudaDevice,
    name: &str,
    cfg: LaunchConfig,
    items: usize,
    args: &mut [super::launch::KernelArg<'_>],
) -> CudaResult<()> {
    if items == 0 {
        return Ok(());
    }
    // SAFETY: every caller passes the buffers in the kernel's parameter order with the
    // lengths its comment states, checked by the caller against `ScoreParams`.
    unsafe { launch(dev, KernelModule::Score, name, cfg, args) }
}

/// `sqrt(x)` elementwise (the distance of a squared distance, as `f32::sqrt`).
pub fn sqrt(dev: &CudaDevice, x: &CudaSlice<f32>) -> CudaResult<CudaSlice<f32>> {
    let n = x.len();
    let mut y = dev.alloc_out::<f32>(n)?;
    let p = ScoreParams {
        n: to_i32(n, "sqrt n")?,
        ..Default::default()
    };
    run(
        dev,
        "sqrt_f32",
        grid_stride(dev, n)?,
        n,
        &mut [In(x), Out(&mut y), Params(&p)],
    )?;
    Ok(y)
}

/// Per image, a `grid x grid` map brought to `vgrid x vgrid` by the max of each window
/// (`crate::recon::masking::downsample_max`).
pub fn downsample_max(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    images: usize,
    grid: usize,
    vgrid: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("downsample_max", "x", x.len(), images * grid * grid)?;
    if vgrid == 0 {
        return Err(CudaError::Invalid(
            "downsample_max: empty target grid".into(),
        ));
    }
    let n = images * vgrid * vgrid;
    let mut y = dev.alloc_out::<f32>(n)?;
    let p = ScoreParams {
        images: to_i32(images, "images")?,
        grid: to_i32(grid, "grid")?,
        vgrid: to_i32(vgrid, "vgrid")?,
        ..Default::default()
    };
    to_i32(images * grid * grid, "downsample_max input")?;
    run(
        dev,
        "downsample_max_f32",
        grid_stride(dev, n)?,
        n,
        &mut [In(x), Out(&mut y), Params(&p)],
    )?;
    Ok(y)
}

/// The `k` row ids `b·n + i` (ascending `i`) of each image's set flags in `mask [images, n]`;
/// every image must have exactly `k` (a top-k mask).
pub fn masked_rows(
    dev: &CudaDevice,
    mask: &CudaSlice<u32>,
    images: usize,
    n: usize,
    k: usize,
) -> CudaResult<CudaSlice<u32>> {
    check_len("masked_rows", "mask", mask.len(), images * n)?;
    if k > n {
        return Err(CudaError::Invalid(format!(
            "masked_rows: k = {k} > n = {n}"
        )));
    }
    let mut rows = dev.alloc_out::<u32>(images * k)?;
    let p = ScoreParams {
        images: to_i32(images, "images")?,
        n: to_i32(n, "n")?,
        k: to_i32(k, "k")?,
        ..Default::default()
    };
    to_i32(images * n, "masked_rows images*n")?;
    run(
        dev,
        "masked_rows_u32",
        grid_stride(dev, images)?,
        images * k,
        &mut [In(mask), Out(&mut rows), Params(&p)],
    )?;
    Ok(rows)
}

/// Feature rows `[images, grid², dim]` -> `[images, vgrid², dim]`, the mean of each cell
/// (`crate::recon::tokenizer::pool_to_vit_grid`); `grid` a multiple of `vgrid`.
pub fn pool_cells(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    images: usize,
    grid: usize,
    vgrid: usize,
    dim: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("pool_cells", "x", x.len(), images * grid * grid * dim)?;
    if vgrid == 0 || !grid.is_multiple_of(vgrid) {
        return Err(CudaError::Invalid(format!(
            "pool_cells: grid {grid} is not a multiple of {vgrid}"
        )));
    }
    let n = images * vgrid * vgrid * dim;
    let mut y = dev.alloc_out::<f32>(n)?;
    let p = ScoreParams {
        images: to_i32(images, "images")?,
        grid: to_i32(grid, "grid")?,
        vgrid: to_i32(vgrid, "vgrid")?,
        dim: to_i32(dim, "dim")?,
        ..Default::default()
    };
    to_i32(x.len(), "pool_cells input")?;
    run(
        dev,
        "pool_cells_f32",
        grid_stride(dev, n)?,
        n,
        &mut [In(x), Out(&mut y), Params(&p)],
    )?;
    Ok(y)
}

/// `y [len]` zero but `y[idx[r]] = v[r]` (indices outside `0..len` are skipped).
pub fn scatter_rows(
    dev: &CudaDevice,
    v: &CudaSlice<f32>,
    idx: &CudaSlice<u32>,
    len: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("scatter_rows", "idx", idx.len(), v.len())?;
    let mut y = dev.zeros::<f32>(len)?;
    let p = ScoreParams {
        n: to_i32(v.len(), "values")?,
        k: to_i32(len, "len")?,
        ..Default::default()
    };
    run(
        dev,
        "scatter_rows_f32",
        grid_stride(dev, v.len())?,
        v.len(),
        &mut [In(v), In(idx), Out(&mut y), Params(&p)],
    )?;
    Ok(y)
}

/// Per image, `e [vgrid²]` upsampled (nearest) to `grid²`, times `a [grid²]` when given
/// (`crate::detector::stage2::vit_to_feature_grid`, then the full-PMAD product).
pub fn upsample_product(
    dev: &CudaDevice,
    e: &CudaSlice<f32>,
    a: Option<&CudaSlice<f32>>,
    images: usize,
    vgrid: usize,
    grid: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("upsample_product", "e", e.len(), images * vgrid * vgrid)?;
    let n = images * grid * grid;
    if let Some(a) = a {
        check_len("upsample_product", "a", a.len(), n)?;
    }
    let mut y = dev.alloc_out::<f32>(n)?;
    let p = ScoreParams {
        images: to_i32(images, "images")?,
        grid: to_i32(grid, "grid")?,
        vgrid: to_i32(vgrid, "vgrid")?,
        flag: a.is_some() as i32,
        ..Default::default()
    };
    to_i32(n, "upsample_product output")?;
    // Without `a`, `e` stands in for it (the kernel does not read it).
    let a = a.unwrap_or(e);
    run(
        dev,
        "upsample_product_f32",
        grid_stride(dev, n)?,
        n,
        &mut [In(e), In(a), Out(&mut y), Params(&p)],
    )?;
    Ok(y)
}

/// Per plane of `maps [planes, n]`, the mean of its `k` largest values (`1 <= k <= n`; `k = 1`
/// is the max): `crate::detector::scoring::ImageScore::of`.
pub fn image_score(
    dev: &CudaDevice,
    maps: &CudaSlice<f32>,
    planes: usize,
    n: usize,
    k: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("image_score", "maps", maps.len(), planes * n)?;
    if k == 0 || k > n {
        return Err(CudaError::Invalid(format!(
            "image_score: k = {k} outside 1..={n}"
        )));
    }
    let mut s = dev.alloc_out::<f32>(planes)?;
    let p = ScoreParams {
        n: to_i32(n, "n")?,
        k: to_i32(k, "k")?,
        ..Default::default()
    };
    to_i32(planes * n, "image_score planes*n")?;
    run(
        dev,
        "image_score_f32",
        block_per_item(planes)?,
        planes,
        &mut [In(maps), Out(&mut s), Params(&p)],
    )?;
    Ok(s)
}

/// Records the non-finite values of `x [images, per]` into slot `slot` of each image's row
/// of `flags [images, slots]` (left as it is where every value is finite).
pub fn record_nonfinite(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    per: usize,
    flags: &mut CudaSlice<f32>,
    slots: usize,
    slot: usize,
) -> CudaResult<()> {
    if per == 0 || !x.len().is_multiple_of(per) || slot >= slots {
        return Err(CudaError::Invalid(format!(
            "record_nonfinite: {} values in images of {per}, slot {slot} of {slots}",
            x.len()
        )));
    }
    let images = x.len() / per;
    check_len("record_nonfinite", "flags", flags.len(), images * slots)?;
    let p = ScoreParams {
        images: to_i32(images, "images")?,
        n: to_i32(per, "per")?,
        dim: to_i32(slots, "slots")?,
        k: to_i32(slot, "slot")?,
        ..Default::default()
    };
    to_i32(x.len(), "record_nonfinite values")?;
    run(
        dev,
        "nonfinite_f32",
        grid_stride(dev, x.len())?,
        x.len(),
        &mut [In(x), Out(flags), Params(&p)],
    )
}
