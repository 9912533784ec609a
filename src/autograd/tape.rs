//! The tape: every value computed in a forward pass, in creation order, each with the closure
//! that sends its gradient back to its inputs.
//!
//! Reverse-mode differentiation in three lines: the forward pass appends nodes (inputs always
//! come before the node that uses them, so creation order is a topological order); `backward`
//! seeds `dL/dL = 1` and walks the nodes from last to first; each node's closure receives
//! `dL/d(node)` and adds its contribution `dL/d(input) += dL/d(node) · d(node)/d(input)` to
//! every input (`+=`, because a value used twice receives two contributions).
//!
//! A tape lives for one step: build it, bind the parameters (copy-free), compute the loss,
//! call [`Tape::backward`], which consumes the tape and returns the gradients.

use super::params::{ParamGrads, ParamId, ParamStore};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// A handle to one node of a [`Tape`] (an index into it; cheap to copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

impl Var {
    /// Position of the node on its tape.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The backward closure of one node: given `dL/d(node)`, accumulate into its inputs' grads.
pub type BackwardFn = Box<dyn FnOnce(&[f32], &mut Grads)>;

struct Node {
    value: Arc<Vec<f32>>,
    shape: Vec<usize>,
    /// True when some parameter or variable leaf lies upstream (the gradient is wanted).
    requires_grad: bool,
    /// `None` for leaves (constants, variables, parameters).
    backward: Option<BackwardFn>,
}

/// A reverse-mode autodiff tape. Ops are methods taking `&self` (the node list sits in a
/// `RefCell`), so calls nest: `t.gelu(t.linear(x, w, Some(b))?)`.
#[derive(Default)]
pub struct Tape {
    nodes: RefCell<Vec<Node>>,
    /// Parameters bound to this tape, so each is bound once and its gradient found again.
    params: RefCell<HashMap<ParamId, Var>>,
    /// Set by [`Tape::no_grad`]: every leaf is a constant, so no backward closure is kept.
    no_grad: bool,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tape {
    pub fn new() -> Tape {
        Tape::default()
    }

    /// A tape for evaluation only: parameters and variables bind as constants, so ops keep
    /// no backward closures (and none of the inputs those would hold on to).
    pub fn no_grad() -> Tape {
        Tape {
            no_grad: true,
            ..Tape::default()
        }
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn leaf(&self, value: Arc<Vec<f32>>, shape: &[usize], requires_grad: bool) -> Result<Var> {
        if value.len() != numel(shape) {
            return Err(Error::shape(format!(
                "{} values cannot have shape {shape:?}",
                value.len()
            )));
        }
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            value,
            shape: shape.to_vec(),
            requires_grad: requires_grad && !self.no_grad,
            backward: None,
        });
        Ok(Var(nodes.len() - 1))
    }

    /// A leaf that receives no gradient (data, targets, fixed encodings).
    pub fn constant(&self, values: Vec<f32>, shape: &[usize]) -> Result<Var> {
        self.leaf(Arc::new(values), shape, false)
    }

    /// A leaf whose gradient is wanted (used by the gradient checker; models use `param`).
    pub fn variable(&self, values: Vec<f32>, shape: &[usize]) -> Result<Var> {
        self.leaf(Arc::new(values), shape, true)
    }

    /// A constant holding a copy of `t` (any float dtype is converted to f32).
    pub fn constant_tensor(&self, t: &Tensor) -> Result<Var> {
        self.constant(t.f32s().into_owned(), t.shape())
    }

    /// Binds parameter `id` of `store` as a leaf (no copy: the buffer is shared). Binding the
    /// same parameter twice returns the same `Var`, so its gradient is summed over every use.
    pub fn param_id(&self, store: &ParamStore, id: ParamId) -> Var {
        if let Some(&v) = self.params.borrow().get(&id) {
            return v;
        }
        let v = self
            .leaf(store.shared(id), store.shape(id), true)
            .expect("a ParamStore entry always matches its shape");
        self.params.borrow_mut().insert(id, v);
        v
    }

    /// Binds the parameter called `name`.
    pub fn param(&self, store: &ParamStore, name: &str) -> Result<Var> {
        let id = store
            .id(name)
            .ok_or_else(|| Error::invalid(format!("no parameter named {name:?}")))?;
        Ok(self.param_id(store, id))
    }

    /// The values of `v` (shared, no copy).
    pub fn value(&self, v: Var) -> Arc<Vec<f32>> {
        self.nodes.borrow()[v.0].value.clone()
    }

    /// A copy of the values of `v`.
    pub fn to_vec(&self, v: Var) -> Vec<f32> {
        self.nodes.borrow()[v.0].value.to_vec()
    }

    /// The single value of a one-element node (a loss).
    pub fn scalar(&self, v: Var) -> f32 {
        self.nodes.borrow()[v.0].value[0]
    }

    pub fn shape(&self, v: Var) -> Vec<usize> {
        self.nodes.borrow()[v.0].shape.clone()
    }

    /// Number of elements of `v`.
    pub fn numel(&self, v: Var) -> usize {
        self.nodes.borrow()[v.0].value.len()
    }

    /// Size of the last dimension of `v` (1 for a scalar).
    pub fn last_dim(&self, v: Var) -> usize {
        self.nodes.borrow()[v.0].shape.last().copied().unwrap_or(1)
    }

    /// `v` as a [`Tensor`] (a copy).
    pub fn tensor(&self, v: Var) -> Tensor {
        let n = &self.nodes.borrow()[v.0];
        Tensor::new(n.value.to_vec(), &n.shape).expect("node value matches its shape")
    }

    /// Whether the gradient of `v` is wanted (some parameter or variable lies upstream).
    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes.borrow()[v.0].requires_grad
    }

    /// Records an op node whose value is already shared (e.g. a reshape reusing its input's
    /// buffer, or an op whose backward needs its own output). `backward` is kept only when a
    /// gradient is wanted for some input; it is the extension point for custom ops.
    pub fn push_shared(
        &self,
        value: Arc<Vec<f32>>,
        shape: Vec<usize>,
        inputs: &[Var],
        backward: impl FnOnce(&[f32], &mut Grads) + 'static,
    ) -> Var {
        debug_assert_eq!(value.len(), numel(&shape));
        let mut nodes = self.nodes.borrow_mut();
        let requires_grad = inputs.iter().any(|i| nodes[i.0].requires_grad);
        nodes.push(Node {
            value,
            shape,
            requires_grad,
            backward: requires_grad.then(|| Box::new(backward) as BackwardFn),
        });
        Var(nodes.len() - 1)
    }

    /// Records an op node with a freshly computed value (see [`Tape::push_shared`]).
    pub fn push(
        &self,
        value: Vec<f32>,
        shape: Vec<usize>,
        inputs: &[Var],
        backward: impl FnOnce(&[f32], &mut Grads) + 'static,
    ) -> Var {
        self.push_shared(Arc::new(value), shape, inputs, backward)
    }

    /// Reverse pass from the scalar `loss`: returns `dloss/dv` for every leaf `v` that wants a
    /// gradient (parameters and variables). Consumes the tape, so the parameter buffers it
    /// shared are free again for the optimizer to update in place.
    pub fn backward(self, loss: Var) -> Result<Grads> {
        let mut nodes = self.nodes.into_inner();
        let target = &nodes[loss.0];
        if target.value.len() != 1 {
            return Err(Error::shape(format!(
                "backward needs a one-element loss, got shape {:?}",
                target.shape
            )));
        }
        if !target.requires_grad {
            return Err(Error::invalid(
                "the loss depends on no parameter or variable: nothing to differentiate",
            ));
        }
        let mut grads = Grads {
            grads: vec![None; nodes.len()],
            sizes: nodes.iter().map(|n| n.value.len()).collect(),
            wanted: nodes.iter().map(|n| n.requires_grad).collect(),
            params: self.params.into_inner().into_iter().collect(),
        };
        grads.grads[loss.0] = Some(vec![1.0]); // dL/dL = 1
        nodes.truncate(loss.0 + 1); // later nodes cannot influence the loss
        // Pop nodes last-to-first; dropping each one releases its value and closure early.
        while let Some(node) = nodes.pop() {
            let i = nodes.len();
            let Some(backward) = node.backward else {
                continue; // a leaf: its gradient stays in `grads`
            };
            let Some(dy) = grads.grads[i].take() else {
                continue; // no path from this node to the loss
            };
            backward(&dy, &mut grads);
        }
        Ok(grads)
    }
}

/// Gradients, one lazily allocated buffer per node. During `backward` op closures accumulate
/// into it; afterwards it holds the gradients of the leaves.
pub struct Grads {
    grads: Vec<Option<Vec<f32>>>,
    sizes: Vec<usize>,
    wanted: Vec<bool>,
    params: Vec<(ParamId, Var)>,
}

impl Grads {
    /// Whether `v` needs a gradient (op closures skip inputs that do not).
    pub fn wants(&self, v: Var) -> bool {
        self.wanted[v.0]
    }

    /// The gradient buffer of `v`, allocated as zeros on first use, for `+=` accumulation.
    pub fn acc(&mut self, v: Var) -> &mut [f32] {
        let size = self.sizes[v.0];
        self.grads[v.0].get_or_insert_with(|| vec![0.0; size])
    }

    /// `grad(v) += delta` element-wise (when `v` wants a gradient).
    pub fn add(&mut self, v: Var, delta: &[f32]) {
        if self.wants(v) {
            for (g, d) in self.acc(v).iter_mut().zip(delta) {
                *g += d;
            }
        }
    }

    /// The gradient of a leaf; `None` when the loss does not depend on it.
    pub fn get(&self, v: Var) -> Option<&[f32]> {
        self.grads.get(v.0)?.as_deref()
    }

    /// Moves the gradient of a leaf out.
    pub fn take(&mut self, v: Var) -> Option<Vec<f32>> {
        self.grads.get_mut(v.0)?.take()
    }

    /// The gradients of the bound parameters, indexed by [`ParamId`].
    pub fn into_params(mut self) -> ParamGrads {
        let mut out = ParamGrads::default();
        for (id, v) in std::mem::take(&mut self.params) {
            if let Some(g) = self.take(v) {
                out.set(id, g);
            }
        }
        out
    }
}
