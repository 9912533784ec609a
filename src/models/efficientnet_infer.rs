//! The patch-feature extraction ([`FeatureExtractor`]) written once over the backend op set
//! [`ConvOps`]: the frozen EfficientNet-Lite ([`super::efficientnet`], BN folded) up to the
//! deepest tap, then the PaDiM aggregation — each tapped map bilinearly resized to the grid,
//! averaged over the pooling window, projected where the tap says `NAME:DIM`, and scattered
//! channels-last into its columns of the `[B · grid², dim]` feature rows. The CPU runs it on
//! `src/ops` ([`CpuOps`](crate::backend::CpuOps): [`FeatureExtractor::extract`]), the CUDA
//! backend on its launchers (`crate::backend`'s `CudaOps`; nothing leaves the device between
//! the input upload and the feature rows).
//!
//! Per MBConv block: [expand 1x1 + ReLU6] -> depthwise kxk/s + ReLU6 (TF-"same" padding) ->
//! project 1x1 (linear) [+ the block input, when the block skips]. Taps read the stem, a
//! block's output (`blocks.N`) or its two inner points (`blocks.N.expand`, `blocks.N.dw`). A
//! tap's projection (a fixed `[C, DIM]` matrix) is applied as a bias-free 1x1 conv to the
//! pooled map: the same product, per patch. The input normalisation is host work on the input
//! before it goes to the backend: `per-image` standardises each image's planes, `both` runs
//! the network twice and writes the second view into the second half of the columns.
//! [`EfficientNetLite::forward`](super::EfficientNetLite::forward) (`pmad classify`'s
//! logits) keeps its own CPU pass.

use crate::backend::{Conv, ConvOps, MbConv};
use crate::detector::features::{FeatureExtractor, InputNorm, split_tap, standardise_planes_host};
use crate::error::{Error, Result};
use crate::models::efficientnet::{ConvBn, TapPoint};
use crate::ops::conv::Activation;

/// One entry of the spec's taps.
struct Tap<W> {
    point: TapPoint,
    /// Channels of the tapped map.
    channels: usize,
    /// First feature column (within one view).
    column: usize,
    /// The tap's projection `[DIM, C]`, as a bias-free 1x1 conv.
    projection: Option<Conv<W>>,
}

/// A [`FeatureExtractor`]'s backbone (up to its deepest tap) and aggregation, held by a
/// backend `O`.
pub struct InferFeatures<O: ConvOps> {
    ops: O,
    stem: Conv<O::Weight>,
    blocks: Vec<MbConv<O::Weight>>,
    taps: Vec<Tap<O::Weight>>,
    input_size: usize,
    grid: usize,
    dim: usize,
    pool: usize,
    norm: InputNorm,
}

/// A folded conv as backend weights (shared on the CPU, uploaded on a device).
fn conv<O: ConvOps>(ops: &O, c: &ConvBn) -> Result<Conv<O::Weight>> {
    Ok(Conv {
        weight: ops.weight(&c.weight, 0..c.weight.len())?,
        bias: Some(ops.weight(&c.bias, 0..c.bias.len())?),
        c_in: c.c_in,
        c_out: c.c_out,
        kernel: c.kernel,
        stride: c.stride,
        groups: c.groups,
        act: c.act,
    })
}

impl<O: ConvOps> InferFeatures<O> {
    /// `fx`'s backbone layers (up to its deepest tap) and projections as backend `ops` holds
    /// them (a device uploads them here, once).
    pub fn new(ops: O, fx: &FeatureExtractor) -> Result<InferFeatures<O>> {
        let spec = fx.spec();
        let net = fx.net();
        let n_blocks = net.blocks.len();
        let mut column = 0;
        let mut depth = 0; // blocks to run
        let mut taps = Vec::with_capacity(spec.taps.len());
        for (i, t) in spec.taps.iter().enumerate() {
            let (name, _) = split_tap(t)?;
            let unknown = || Error::invalid(format!("unknown {} tap '{t}'", net.backbone()));
            let point = TapPoint::parse(name).ok_or_else(unknown)?;
            let channels = match point {
                TapPoint::Stem => net.stem.c_out,
                TapPoint::Block(n) if n < n_blocks => net.blocks[n].project.c_out,
                TapPoint::Expand(n) if n < n_blocks => {
                    net.blocks[n].expand.as_ref().ok_or_else(unknown)?.c_out
                }
                TapPoint::Depthwise(n) if n < n_blocks => net.blocks[n].depthwise.c_out,
                _ => return Err(unknown()),
            };
            let projection = match fx.projection(i) {
                Some(p) => Some(Conv {
                    weight: ops.weight(p, 0..p.len())?,
                    bias: None,
                    c_in: channels,
                    c_out: p.len() / channels,
                    kernel: 1,
                    stride: 1,
                    groups: 1,
                    act: Activation::None,
                }),
                None => None,
            };
            if let Some(n) = point.block() {
                depth = depth.max(n + 1);
            }
            let tap = Tap {
                point,
                channels,
                column,
                projection,
            };
            column += tap.width();
            taps.push(tap);
        }
        let views = spec.input_norm.views();
        if column * views != fx.dim() {
            return Err(Error::invalid(format!(
                "feature extraction: the taps give {column} x {views} columns, the spec {}",
                fx.dim()
            )));
        }
        let blocks = net.blocks[..depth]
            .iter()
            .map(|b| {
                Ok(MbConv {
                    expand: b.expand.as_ref().map(|e| conv(&ops, e)).transpose()?,
                    depthwise: conv(&ops, &b.depthwise)?,
                    project: conv(&ops, &b.project)?,
                    skip: b.skip,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(InferFeatures {
            stem: conv(&ops, &net.stem)?,
            blocks,
            taps,
            input_size: spec.input_size,
            grid: fx.grid(),
            dim: fx.dim(),
            pool: spec.pool,
            norm: spec.input_norm,
            ops,
        })
    }

    /// Feature rows `[batch · grid², dim]` of the network inputs `x` (`[batch, 3, S, S]` on
    /// the host), left on the backend.
    pub fn extract(&self, x: &[f32], batch: usize) -> Result<O::Act> {
        let s = self.input_size;
        if x.len() != batch * 3 * s * s {
            return Err(Error::shape(format!(
                "feature input: {} values for [{batch}, 3, {s}, {s}]",
                x.len()
            )));
        }
        let mut rows = Rows {
            rows: None,
            pending: Vec::new(),
        };
        let half = self.dim / 2;
        let ran = match self.norm {
            InputNorm::Imagenet => self.view(x, batch, 0, &mut rows),
            InputNorm::PerImage => {
                self.view(&standardise_planes_host(x, s * s), batch, 0, &mut rows)
            }
            InputNorm::Both => self.view(x, batch, 0, &mut rows).and_then(|()| {
                self.view(&standardise_planes_host(x, s * s), batch, half, &mut rows)
            }),
        };
        // The network's maps are dropped by now: the spares they left (`recycle`) are freed,
        // on success or error, before the rows are allocated.
        self.ops.release();
        ran?;
        let mut out = self.rows(&mut rows.rows, batch)?;
        let g2 = self.grid * self.grid;
        for (map, width, col) in rows.pending {
            self.ops
                .nchw_to_rows(&map, &mut out, batch, width, g2, self.dim, col)?;
        }
        Ok(out)
    }

    /// The feature rows, allocated on first use.
    fn rows(&self, rows: &mut Option<O::Act>, batch: usize) -> Result<O::Act> {
        match rows.take() {
            Some(r) => Ok(r),
            None => self.ops.zeros(batch * self.grid * self.grid * self.dim),
        }
    }

    /// One view: the network on the (normalised) input `x`, its taps written from column
    /// `col0` on.
    fn view(&self, x: &[f32], batch: usize, col0: usize, rows: &mut Rows<O::Act>) -> Result<()> {
        let ops = &self.ops;
        let s = self.input_size;
        let mut cur = ops.conv2d_host(x, &self.stem, batch, (s, s))?;
        let mut hw = (self.stem.out_side(s), self.stem.out_side(s));
        self.write(TapPoint::Stem, &cur, batch, self.stem.c_out, hw, col0, rows)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let inner_tapped = self
                .taps
                .iter()
                .any(|t| t.point == TapPoint::Expand(i) || t.point == TapPoint::Depthwise(i));
            let d = &b.depthwise;
            let dhw = (d.out_side(hw.0), d.out_side(hw.1));
            let next = if inner_tapped {
                self.block_tapped(i, b, &cur, batch, hw, col0, rows)?
            } else {
                // The block as one op (fused on the CPU).
                ops.mbconv(&cur, b, batch, hw)?
            };
            ops.recycle(std::mem::replace(&mut cur, next));
            hw = dhw;
            let c_out = b.project.c_out;
            self.write(TapPoint::Block(i), &cur, batch, c_out, hw, col0, rows)?;
        }
        Ok(())
    }

    /// Block `i` as its convs, writing the taps of its inner maps.
    #[allow(clippy::too_many_arguments)]
    fn block_tapped(
        &self,
        i: usize,
        b: &MbConv<O::Weight>,
        x: &O::Act,
        batch: usize,
        hw: (usize, usize),
        col0: usize,
        rows: &mut Rows<O::Act>,
    ) -> Result<O::Act> {
        let ops = &self.ops;
        let expanded = match &b.expand {
            Some(e) => {
                let y = ops.conv2d(x, e, batch, hw, None)?;
                self.write(TapPoint::Expand(i), &y, batch, e.c_out, hw, col0, rows)?;
                Some(y)
            }
            None => None,
        };
        let d = &b.depthwise;
        let dw = ops.conv2d(expanded.as_ref().unwrap_or(x), d, batch, hw, None)?;
        let dhw = (d.out_side(hw.0), d.out_side(hw.1));
        self.write(TapPoint::Depthwise(i), &dw, batch, d.c_out, dhw, col0, rows)?;
        if let Some(e) = expanded {
            ops.recycle(e);
        }
        let next = ops.conv2d(&dw, &b.project, batch, dhw, b.skip.then_some(x))?;
        ops.recycle(dw);
        Ok(next)
    }

    /// Writes `map` (`[batch, channels, hw]`, the value at `point`) into the columns of every
    /// tap of it: resized to the grid, pooled, projected.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        point: TapPoint,
        map: &O::Act,
        batch: usize,
        channels: usize,
        hw: (usize, usize),
        col0: usize,
        rows: &mut Rows<O::Act>,
    ) -> Result<()> {
        let (ops, g) = (&self.ops, self.grid);
        for tap in self.taps.iter().filter(|t| t.point == point) {
            if tap.channels != channels {
                return Err(Error::shape(format!(
                    "feature extraction: tap {point:?} has {channels} channels, not {}",
                    tap.channels
                )));
            }
            let planes = batch * channels;
            let on_grid = ops.resample(map, planes, hw, (g, g), self.pool)?;
            let src = on_grid.as_ref().unwrap_or(map);
            let projected = match &tap.projection {
                Some(p) => Some(ops.conv2d(src, p, batch, (g, g), None)?),
                None => None,
            };
            let (col, width) = (col0 + tap.column, tap.width());
            match projected.or(on_grid) {
                Some(m) => rows.pending.push((m, width, col)),
                // The map itself (on the grid, no pooling, no projection): written now.
                None => {
                    let mut out = self.rows(&mut rows.rows, batch)?;
                    ops.nchw_to_rows(map, &mut out, batch, width, g * g, self.dim, col)?;
                    rows.rows = Some(out);
                }
            }
        }
        Ok(())
    }
}

/// Feature rows under construction: the taps' maps on the grid are scattered into the rows
/// once the network is done, so the rows are allocated after its maps are freed (the CPU's
/// allocator then reuses their pages instead of faulting in fresh ones); a tap that is the
/// network's map itself (borrowed) is written at once.
struct Rows<A> {
    rows: Option<A>,
    /// (map `[batch, width, grid²]`, width, first column).
    pending: Vec<(A, usize, usize)>,
}

impl<W> Tap<W> {
    /// Feature columns of this tap.
    fn width(&self) -> usize {
        self.projection.as_ref().map_or(self.channels, |p| p.c_out)
    }
}
