//! Matrix products: `matmul` (`A·B`) and `linear` (`x·Wᵀ + b`, PyTorch's `[out, in]` weight
//! layout). Both treat every leading dimension of the left operand as rows, and run forward
//! and backward on the `ops::matmul::gemm` kernel, accumulating gradients with `beta = 1`.

use super::tape::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::matmul::{Trans, gemm, linear_rows};

impl Tape {
    /// `a[.., K] · b[K, N]` -> `[.., N]`. `da = dy·bᵀ`, `db = aᵀ·dy`.
    pub fn matmul(&self, a: Var, b: Var) -> Result<Var> {
        let (sa, sb) = (self.shape(a), self.shape(b));
        if sa.is_empty() || sb.len() != 2 || sa[sa.len() - 1] != sb[0] {
            return Err(Error::shape(format!("matmul {sa:?} x {sb:?}")));
        }
        let (k, n) = (sb[0], sb[1]);
        let m = self.numel(a) / k.max(1);
        let (av, bv) = (self.value(a), self.value(b));
        let mut y = vec![0.0; m * n];
        gemm(m, n, k, &av, Trans::N, &bv, Trans::N, &mut y, 0.0);
        let mut shape = sa;
        *shape.last_mut().unwrap() = n;
        Ok(self.push(y, shape, &[a, b], move |dy, g| {
            if g.wants(a) {
                // da[m,k] += dy[m,n] · bᵀ   (b stored [k,n], read transposed)
                gemm(m, k, n, dy, Trans::N, &bv, Trans::T, g.acc(a), 1.0);
            }
            if g.wants(b) {
                // db[k,n] += aᵀ · dy        (a stored [m,k], read transposed)
                gemm(k, n, m, &av, Trans::T, dy, Trans::N, g.acc(b), 1.0);
            }
        }))
    }

    /// `y = x·Wᵀ + b` over the last dimension: `x[.., in]`, `w[out, in]`, `b[out]`.
    /// `dx = dy·W`, `dW = dyᵀ·x` (summed over rows), `db = Σ_rows dy`.
    pub fn linear(&self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let (sx, sw) = (self.shape(x), self.shape(w));
        let bias_ok = b.is_none_or(|b| self.numel(b) == sw.first().copied().unwrap_or(0));
        if sx.is_empty() || sw.len() != 2 || sw[1] != sx[sx.len() - 1] || !bias_ok {
            return Err(Error::shape(format!(
                "linear: x {sx:?}, weight {sw:?}, bias {:?}",
                b.map(|b| self.shape(b))
            )));
        }
        let (d_out, d_in) = (sw[0], sw[1]);
        let rows = self.numel(x) / d_in.max(1);
        let (xv, wv) = (self.value(x), self.value(w));
        let bv = b.map(|b| self.value(b));
        let mut y = vec![0.0; rows * d_out];
        linear_rows(
            &xv,
            &wv,
            bv.as_deref().map(|v| &v[..]),
            rows,
            d_in,
            d_out,
            &mut y,
        );
        let mut shape = sx;
        *shape.last_mut().unwrap() = d_out;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok(self.push(y, shape, &inputs, move |dy, g| {
            if g.wants(x) {
                // dx[rows,in] += dy[rows,out] · W[out,in]
                gemm(
                    rows,
                    d_in,
                    d_out,
                    dy,
                    Trans::N,
                    &wv,
                    Trans::N,
                    g.acc(x),
                    1.0,
                );
            }
            if g.wants(w) {
                // dW[out,in] += dyᵀ · x     (dy stored [rows,out], read transposed)
                gemm(
                    d_out,
                    d_in,
                    rows,
                    dy,
                    Trans::T,
                    &xv,
                    Trans::N,
                    g.acc(w),
                    1.0,
                );
            }
            if let Some(b) = b.filter(|&b| g.wants(b)) {
                let gb = g.acc(b);
                for row in dy.chunks(d_out) {
                    for (gb, &d) in gb.iter_mut().zip(row) {
                        *gb += d;
                    }
                }
            }
        }))
    }
}
