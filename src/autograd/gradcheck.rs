//! A finite-difference gradient checker, for tests of every differentiable op and model.
//!
//! For a scalar function `L(inputs)` built on a fresh tape, the analytic gradient from
//! [`Tape::backward`] is compared, element by element, with the central difference
//! `(L(x + h) - L(x - h)) / (2h)` (error `O(h²)`), the difference taken in f64 over the
//! exact perturbation f32 could represent. An element passes when
//! `|analytic - numeric| <= atol + rtol·|numeric|`; the report names the worst element.

use super::tape::{Tape, Var};
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::fmt;

/// Step and tolerances of a check.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Finite-difference step `h`.
    pub eps: f32,
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    pub fn new(eps: f32, atol: f64, rtol: f64) -> Tolerance {
        Tolerance { eps, atol, rtol }
    }
}

impl Default for Tolerance {
    /// `h = 1e-3`, `atol = 1e-3`, `rtol = 1e-2`: what f32 forward passes of O(1) losses allow.
    fn default() -> Tolerance {
        Tolerance::new(1e-3, 1e-3, 1e-2)
    }
}

/// The element whose analytic and numeric gradients disagree the most (relative to the
/// tolerance).
#[derive(Clone, Copy, Debug, Default)]
pub struct Worst {
    /// Which input, and which element of it.
    pub input: usize,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
    /// `|analytic - numeric| - (atol + rtol·|numeric|)`: positive means a failure.
    pub excess: f64,
}

#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// Number of elements compared.
    pub checked: usize,
    pub worst: Worst,
    /// Largest `|analytic - numeric|` and largest `|numeric|` over all elements (context).
    pub max_abs_diff: f64,
    pub max_abs_numeric: f64,
    pub tol: Tolerance,
}

impl GradCheckReport {
    pub fn passed(&self) -> bool {
        self.worst.excess <= 0.0
    }

    /// Panics with the report when a gradient is off.
    pub fn assert_ok(&self) {
        assert!(self.passed(), "gradient check failed: {self}");
    }
}

impl fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.worst;
        write!(
            f,
            "{} elements (max |diff| {:.3e}, max |grad| {:.3e}); closest to failing: input {} \
             element {}: analytic {:.6e} vs numeric {:.6e} (|diff| {:.3e}, allowed {:.3e}; \
             h {}, atol {}, rtol {})",
            self.checked,
            self.max_abs_diff,
            self.max_abs_numeric,
            w.input,
            w.index,
            w.analytic,
            w.numeric,
            (w.analytic - w.numeric).abs(),
            self.tol.atol + self.tol.rtol * w.numeric.abs(),
            self.tol.eps,
            self.tol.atol,
            self.tol.rtol
        )
    }
}

/// Builds `build(tape, vars)` on a fresh tape with `values` bound as variables.
fn run<F>(values: &[(Vec<f32>, Vec<usize>)], build: &F) -> Result<(Tape, Vec<Var>, Var)>
where
    F: Fn(&Tape, &[Var]) -> Result<Var>,
{
    let tape = Tape::new();
    let vars = values
        .iter()
        .map(|(v, s)| tape.variable(v.clone(), s))
        .collect::<Result<Vec<_>>>()?;
    let loss = build(&tape, &vars)?;
    Ok((tape, vars, loss))
}

/// Checks the gradient of the scalar `build(tape, vars)` with respect to every element of
/// every input (`vars[i]` is `inputs[i]`, bound as a variable leaf).
pub fn gradcheck<F>(inputs: &[Tensor], tol: Tolerance, build: F) -> Result<GradCheckReport>
where
    F: Fn(&Tape, &[Var]) -> Result<Var>,
{
    let mut values: Vec<(Vec<f32>, Vec<usize>)> = inputs
        .iter()
        .map(|t| (t.f32s().into_owned(), t.shape().to_vec()))
        .collect();
    // Analytic gradients (zeros for an input the loss does not reach).
    let (tape, vars, loss) = run(&values, &build)?;
    let grads = tape.backward(loss)?;
    let analytic: Vec<Vec<f32>> = vars
        .iter()
        .zip(&values)
        .map(|(&v, (x, _))| {
            grads
                .get(v)
                .map_or_else(|| vec![0.0; x.len()], <[f32]>::to_vec)
        })
        .collect();
    let eval = |values: &[(Vec<f32>, Vec<usize>)]| -> Result<f64> {
        let (tape, _, loss) = run(values, &build)?;
        Ok(tape.scalar(loss) as f64)
    };
    let mut worst = Worst {
        excess: f64::NEG_INFINITY,
        ..Worst::default()
    };
    let mut checked = 0;
    let (mut max_abs_diff, mut max_abs_numeric) = (0.0f64, 0.0f64);
    for (input, grad) in analytic.iter().enumerate() {
        for (index, &a) in grad.iter().enumerate() {
            let a = a as f64;
            let x = values[input].0[index];
            let (up, down) = (x + tol.eps, x - tol.eps);
            values[input].0[index] = up;
            let l_up = eval(&values)?;
            values[input].0[index] = down;
            let l_down = eval(&values)?;
            values[input].0[index] = x;
            let numeric = (l_up - l_down) / (up as f64 - down as f64);
            max_abs_diff = max_abs_diff.max((a - numeric).abs());
            max_abs_numeric = max_abs_numeric.max(numeric.abs());
            let mut excess = (a - numeric).abs() - (tol.atol + tol.rtol * numeric.abs());
            if excess.is_nan() {
                excess = f64::INFINITY;
            }
            if excess > worst.excess {
                worst = Worst {
                    input,
                    index,
                    analytic: a,
                    numeric,
                    excess,
                };
            }
            checked += 1;
        }
    }
    Ok(GradCheckReport {
        checked,
        worst,
        max_abs_diff,
        max_abs_numeric,
        tol,
    })
}

/// A generic scalar loss for checking a non-scalar output: `Σ out ⊙ c` with `c` a fixed
/// random tensor (uniform in [-1, 1) from `seed`), so no symmetry hides a wrong gradient
/// (a plain `sum` of a layer norm's output, for instance, is constant).
pub fn probe_loss(tape: &Tape, out: Var, seed: u64) -> Result<Var> {
    let mut rng = Rng::new(seed);
    let c: Vec<f32> = (0..tape.numel(out)).map(|_| rng.range(-1.0, 1.0)).collect();
    let c = tape.constant(c, &tape.shape(out))?;
    let prod = tape.mul(out, c)?;
    Ok(tape.sum(prod))
}
