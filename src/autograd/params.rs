//! Trainable parameters: named f32 tensors that outlive the per-step tapes.
//!
//! A [`ParamStore`] owns every parameter of a model (name -> values + shape, in insertion
//! order). Each step binds them to a fresh tape ([`super::Tape::param`]) without copying — the
//! buffers are reference counted — and the optimizer updates them in place once the tape is
//! gone. [`ParamStore::to_tensors`] / [`ParamStore::from_tensors`] convert to and from named
//! [`Tensor`]s, the form a safetensors writer/reader uses.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

/// Index of a parameter in its [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

#[derive(Clone, Debug)]
struct Param {
    name: String,
    shape: Vec<usize>,
    value: Arc<Vec<f32>>,
    /// Whether AdamW's decoupled weight decay applies (off for biases, norms, embeddings).
    decay: bool,
}

/// Named parameters in insertion order.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, ParamId>,
}

impl ParamStore {
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Adds a parameter. Weight decay defaults to on for matrices (rank >= 2) and off for
    /// vectors (biases, norm scales/shifts, mask tokens); change it with [`Self::set_decay`].
    pub fn add(&mut self, name: &str, values: Vec<f32>, shape: &[usize]) -> Result<ParamId> {
        if values.len() != shape.iter().product::<usize>() {
            return Err(Error::shape(format!(
                "parameter {name:?}: {} values cannot have shape {shape:?}",
                values.len()
            )));
        }
        if self.by_name.contains_key(name) {
            return Err(Error::invalid(format!("parameter {name:?} already exists")));
        }
        let id = ParamId(self.params.len());
        self.params.push(Param {
            name: name.to_string(),
            shape: shape.to_vec(),
            value: Arc::new(values),
            decay: shape.len() >= 2,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// A parameter filled with `value` (e.g. 1 for a norm scale, 0 for a bias).
    pub fn add_filled(&mut self, name: &str, shape: &[usize], value: f32) -> Result<ParamId> {
        self.add(name, vec![value; shape.iter().product()], shape)
    }

    /// A parameter drawn from `N(0, std²)`.
    pub fn add_normal(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f32,
        rng: &mut Rng,
    ) -> Result<ParamId> {
        let n = shape.iter().product();
        self.add(name, (0..n).map(|_| std * rng.normal()).collect(), shape)
    }

    /// A parameter drawn from `U(-bound, bound)`. For a `[out, in]` weight, PyTorch's
    /// `nn.Linear` default is `bound = 1/sqrt(in)`; Xavier-uniform is `sqrt(6/(in+out))`.
    pub fn add_uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        bound: f32,
        rng: &mut Rng,
    ) -> Result<ParamId> {
        let n = shape.iter().product();
        self.add(
            name,
            (0..n).map(|_| rng.range(-bound, bound)).collect(),
            shape,
        )
    }

    /// A `[out, in]` weight (Xavier-uniform) named `{prefix}.weight` and a zero `[out]` bias
    /// named `{prefix}.bias`, the layout [`super::Tape::linear`] takes.
    pub fn add_linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        rng: &mut Rng,
    ) -> Result<(ParamId, ParamId)> {
        let bound = (6.0 / (d_in + d_out) as f32).sqrt();
        let w = self.add_uniform(&format!("{prefix}.weight"), &[d_out, d_in], bound, rng)?;
        let b = self.add_filled(&format!("{prefix}.bias"), &[d_out], 0.0)?;
        Ok((w, b))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_values(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// All ids, in insertion order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + use<> {
        (0..self.params.len()).map(ParamId)
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: ParamId) -> &str {
        &self.params[id.0].name
    }

    pub fn shape(&self, id: ParamId) -> &[usize] {
        &self.params[id.0].shape
    }

    pub fn values(&self, id: ParamId) -> &[f32] {
        &self.params[id.0].value
    }

    /// Mutable values. Copies the buffer first if a live tape still shares it.
    pub fn values_mut(&mut self, id: ParamId) -> &mut [f32] {
        let v: &mut Vec<f32> = Arc::make_mut(&mut self.params[id.0].value);
        v
    }

    /// The shared buffer (what a tape binds).
    pub(crate) fn shared(&self, id: ParamId) -> Arc<Vec<f32>> {
        self.params[id.0].value.clone()
    }

    pub fn decay(&self, id: ParamId) -> bool {
        self.params[id.0].decay
    }

    pub fn set_decay(&mut self, id: ParamId, decay: bool) {
        self.params[id.0].decay = decay;
    }

    /// `(name, tensor)` pairs in insertion order (copies), ready for a safetensors writer.
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| {
                let t = Tensor::new(p.value.to_vec(), &p.shape).expect("shape checked on add");
                (p.name.clone(), t)
            })
            .collect()
    }

    /// A store holding `tensors` in the given order (any float dtype, converted to f32).
    /// Decay flags take their defaults (see [`Self::add`]).
    pub fn from_tensors(tensors: Vec<(String, Tensor)>) -> Result<ParamStore> {
        let mut store = ParamStore::new();
        for (name, t) in tensors {
            let shape = t.shape().to_vec();
            store.add(&name, t.into_f32_vec(), &shape)?;
        }
        Ok(store)
    }

    /// Overwrites the values of this store from `tensors` (e.g. a checkpoint), keeping decay
    /// flags. Every parameter must be present with its shape, and no unknown name may appear.
    pub fn load_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let mut seen = vec![false; self.len()];
        for (name, t) in tensors {
            let id = self
                .id(name)
                .ok_or_else(|| Error::invalid(format!("unknown parameter {name:?}")))?;
            if t.shape() != self.shape(id) {
                return Err(Error::shape(format!(
                    "parameter {name:?}: stored {:?}, model {:?}",
                    t.shape(),
                    self.shape(id)
                )));
            }
            self.params[id.0].value = Arc::new(t.f32s().into_owned());
            seen[id.0] = true;
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Error::invalid(format!(
                "parameter {:?} is missing",
                self.params[i].name
            )));
        }
        Ok(())
    }
}

/// Gradients of parameters, indexed by [`ParamId`] (`None` where the loss did not use one).
#[derive(Clone, Debug, Default)]
pub struct ParamGrads {
    grads: Vec<Option<Vec<f32>>>,
}

impl ParamGrads {
    pub fn get(&self, id: ParamId) -> Option<&[f32]> {
        self.grads.get(id.0)?.as_deref()
    }

    pub fn get_mut(&mut self, id: ParamId) -> Option<&mut [f32]> {
        self.grads.get_mut(id.0)?.as_deref_mut()
    }

    /// The gradient of the parameter called `name`.
    pub fn by_name<'a>(&'a self, store: &ParamStore, name: &str) -> Option<&'a [f32]> {
        self.get(store.id(name)?)
    }

    pub fn set(&mut self, id: ParamId, grad: Vec<f32>) {
        if self.grads.len() <= id.0 {
            self.grads.resize(id.0 + 1, None);
        }
        self.grads[id.0] = Some(grad);
    }

    /// `(id, gradient)` for every parameter that has one.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &[f32])> {
        self.grads
            .iter()
            .enumerate()
            .filter_map(|(i, g)| Some((ParamId(i), g.as_deref()?)))
    }

    /// Mutable `(id, gradient)` for every parameter that has one.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut [f32])> {
        self.grads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, g)| Some((ParamId(i), g.as_deref_mut()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_and_load_checks() {
        let mut rng = Rng::new(1);
        let mut s = ParamStore::new();
        let (w, b) = s.add_linear("fc", 3, 2, &mut rng).unwrap();
        assert!(s.decay(w) && !s.decay(b));
        assert!(
            s.add_filled("fc.bias", &[2], 0.0).is_err(),
            "duplicate name"
        );
        assert!(
            s.add("bad", vec![0.0; 5], &[2, 3]).is_err(),
            "length vs shape"
        );
        let t = s.to_tensors();
        assert_eq!(t[0].0, "fc.weight");
        assert_eq!(t[0].1.shape(), &[2, 3]);
        let s2 = ParamStore::from_tensors(t.clone()).unwrap();
        assert_eq!(s2.values(w), s.values(w));
        assert_eq!(s2.num_values(), 8);
        let mut s3 = s.clone();
        s3.values_mut(w).fill(7.0);
        s3.load_tensors(&t).unwrap();
        assert_eq!(s3.values(w), s.values(w));
        assert!(s3.load_tensors(&t[..1]).is_err(), "missing bias");
        let wrong = vec![("fc.weight".to_string(), Tensor::zeros(&[3, 2]))];
        assert!(s3.load_tensors(&wrong).is_err(), "wrong shape");
    }
}
