//! The engine's tensor: a shape plus a reference-counted, contiguous, row-major buffer.
//!
//! A tensor is cheap to clone (the buffer is shared) and immutable once built; ops produce new
//! tensors. The buffer may be owned f32 (the compute type), owned f16/bf16 (compact storage),
//! or a window into a memory-mapped file (weights), which is read without a copy whenever the
//! bytes are aligned for the element type.

mod dtype;

pub use dtype::DType;

use crate::error::{Error, Result};
use half::{bf16, f16};
use std::borrow::Cow;
use std::sync::Arc;

/// Bytes of a memory-mapped file shared by every tensor that views it.
pub type SharedMap = Arc<memmap2::Mmap>;

#[derive(Clone)]
enum Storage {
    F32(Arc<Vec<f32>>),
    F16(Arc<Vec<f16>>),
    BF16(Arc<Vec<bf16>>),
    /// Raw little-endian bytes of any dtype: a window of a memory map, or owned integer data.
    Bytes {
        bytes: ByteSource,
        dtype: DType,
    },
}

#[derive(Clone)]
enum ByteSource {
    Mapped {
        map: SharedMap,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl ByteSource {
    fn as_slice(&self) -> &[u8] {
        match self {
            ByteSource::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            ByteSource::Owned(v) => v,
        }
    }
}

#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype())
    }
}

fn numel_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// An f32 tensor owning `data`; errors if `data.len()` is not the product of `shape`.
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel_of(shape) {
            return Err(Error::shape(format!(
                "{} values cannot have shape {:?}",
                data.len(),
                shape
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::F32(Arc::new(data)),
        })
    }

    /// Builds an f32 tensor whose length the caller has already made right (internal ops).
    pub(crate) fn from_parts(data: Vec<f32>, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(data.len(), numel_of(&shape));
        Tensor {
            shape,
            storage: Storage::F32(Arc::new(data)),
        }
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::from_parts(vec![0.0; numel_of(shape)], shape.to_vec())
    }

    pub fn from_f16(data: Vec<f16>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel_of(shape) {
            return Err(Error::shape(format!(
                "{} values vs shape {:?}",
                data.len(),
                shape
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::F16(Arc::new(data)),
        })
    }

    pub fn from_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel_of(shape) {
            return Err(Error::shape(format!(
                "{} values vs shape {:?}",
                data.len(),
                shape
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::BF16(Arc::new(data)),
        })
    }

    /// A tensor of any dtype over owned little-endian bytes (e.g. integer token ids).
    pub fn from_bytes(bytes: Vec<u8>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        if bytes.len() != numel_of(shape) * dtype.size() {
            return Err(Error::shape(format!(
                "{} bytes cannot hold {dtype} of shape {shape:?}",
                bytes.len()
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Bytes {
                bytes: ByteSource::Owned(Arc::new(bytes)),
                dtype,
            },
        })
    }

    /// A zero-copy view of `len` bytes at `offset` of a memory map. The caller (the
    /// safetensors reader) has checked that the window lies inside the map.
    pub fn from_mapped(
        map: SharedMap,
        offset: usize,
        len: usize,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > map.len()) {
            return Err(Error::shape(format!(
                "window {offset}+{len} lies outside a map of {} bytes",
                map.len()
            )));
        }
        if len != numel_of(shape) * dtype.size() {
            return Err(Error::shape(format!(
                "{len} bytes cannot hold {dtype} of shape {shape:?}"
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Bytes {
                bytes: ByteSource::Mapped { map, offset, len },
                dtype,
            },
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Size of dimension `i`; negative `i` counts from the end.
    pub fn dim(&self, i: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[if i < 0 { (r + i) as usize } else { i as usize }]
    }

    pub fn numel(&self) -> usize {
        numel_of(&self.shape)
    }

    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::Bytes { dtype, .. } => *dtype,
        }
    }

    /// True when this tensor views a memory map instead of owning its buffer.
    pub fn is_mapped(&self) -> bool {
        matches!(
            self.storage,
            Storage::Bytes {
                bytes: ByteSource::Mapped { .. },
                ..
            }
        )
    }

    /// The values as f32: borrowed when stored as (aligned) f32, converted otherwise.
    /// Integer tensors are converted too (token ids, counters).
    pub fn f32s(&self) -> Cow<'_, [f32]> {
        match &self.storage {
            Storage::F32(v) => Cow::Borrowed(v.as_slice()),
            Storage::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            Storage::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            Storage::Bytes { bytes, dtype } => {
                let b = bytes.as_slice();
                match dtype {
                    DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(b) {
                        Ok(s) => Cow::Borrowed(s),
                        Err(_) => Cow::Owned(
                            b.chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect(),
                        ),
                    },
                    DType::F16 => Cow::Owned(
                        b.chunks_exact(2)
                            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                            .collect(),
                    ),
                    DType::BF16 => Cow::Owned(
                        b.chunks_exact(2)
                            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                            .collect(),
                    ),
                    DType::I64 => Cow::Owned(
                        b.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                            .collect(),
                    ),
                    DType::I32 => Cow::Owned(
                        b.chunks_exact(4)
                            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                            .collect(),
                    ),
                    DType::U8 => Cow::Owned(b.iter().map(|&x| x as f32).collect()),
                }
            }
        }
    }

    /// The values as i64 (integer tensors such as token ids; floats are truncated).
    pub fn i64s(&self) -> Vec<i64> {
        match &self.storage {
            Storage::Bytes {
                bytes,
                dtype: DType::I64,
            } => bytes
                .as_slice()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            _ => self.f32s().iter().map(|&x| x as i64).collect(),
        }
    }

    /// Owned f32 values, without a copy when this tensor is the only owner of an f32 buffer.
    pub fn into_f32_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::F32(v) => Arc::try_unwrap(v).unwrap_or_else(|v| (*v).clone()),
            _ => self.f32s().into_owned(),
        }
    }

    /// The little-endian bytes of the stored elements (what a safetensors writer stores).
    pub fn raw_bytes(&self) -> Cow<'_, [u8]> {
        match &self.storage {
            Storage::F32(v) => Cow::Borrowed(bytemuck::cast_slice(v.as_slice())),
            Storage::F16(v) => Cow::Borrowed(bytemuck::cast_slice(v.as_slice())),
            Storage::BF16(v) => Cow::Borrowed(bytemuck::cast_slice(v.as_slice())),
            Storage::Bytes { bytes, .. } => Cow::Borrowed(bytes.as_slice()),
        }
    }

    /// Same buffer, new shape (same number of elements).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel_of(shape) != self.numel() {
            return Err(Error::shape(format!(
                "cannot reshape {:?} to {:?}",
                self.shape, shape
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
        })
    }

    /// A copy stored as `dtype` (float dtypes only; f32 is the compute type).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        let v = self.f32s();
        let shape = self.shape.clone();
        let storage = match dtype {
            DType::F32 => Storage::F32(Arc::new(v.into_owned())),
            DType::F16 => Storage::F16(Arc::new(v.iter().map(|&x| f16::from_f32(x)).collect())),
            DType::BF16 => Storage::BF16(Arc::new(v.iter().map(|&x| bf16::from_f32(x)).collect())),
            other => {
                return Err(Error::invalid(format!(
                    "cannot convert a tensor to {other}: only float storage is supported"
                )));
            }
        };
        Ok(Tensor { shape, storage })
    }

    /// Rows `start..end` of the first dimension (a copy).
    pub fn narrow0(&self, start: usize, end: usize) -> Result<Tensor> {
        if self.shape.is_empty() || start > end || end > self.shape[0] {
            return Err(Error::shape(format!(
                "rows {start}..{end} of a tensor of shape {:?}",
                self.shape
            )));
        }
        let row: usize = self.shape[1..].iter().product();
        let v = self.f32s();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(Tensor::from_parts(
            v[start * row..end * row].to_vec(),
            shape,
        ))
    }

    /// Concatenates tensors along the first dimension.
    pub fn cat0(parts: &[Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("cat0 of no tensors"))?;
        let tail = &first.shape[1..];
        let mut rows = 0;
        let mut data = Vec::new();
        for p in parts {
            if p.rank() == 0 || &p.shape[1..] != tail {
                return Err(Error::shape(format!(
                    "cat0: {:?} does not fit {:?}",
                    p.shape, first.shape
                )));
            }
            rows += p.shape[0];
            data.extend_from_slice(&p.f32s());
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor::from_parts(data, shape))
    }

    /// Largest absolute value (0 for an empty tensor).
    pub fn max_abs(&self) -> f32 {
        self.f32s().iter().fold(0.0f32, |m, &x| m.max(x.abs()))
    }

    /// Largest absolute element-wise difference with `other` (shapes must match).
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(Error::shape(format!(
                "compare {:?} with {:?}",
                self.shape, other.shape
            )));
        }
        let (a, b) = (self.f32s(), other.f32s());
        Ok(a.iter()
            .zip(b.iter())
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_shares_and_checks() {
        let t = Tensor::new((0..6).map(|x| x as f32).collect(), &[2, 3]).unwrap();
        let r = t.reshape(&[3, 2]).unwrap();
        assert_eq!(r.shape(), &[3, 2]);
        assert_eq!(r.f32s()[5], 5.0);
        assert!(t.reshape(&[4, 2]).is_err());
        assert!(Tensor::new(vec![1.0; 5], &[2, 3]).is_err());
    }

    #[test]
    fn half_storage_round_trips() {
        let t = Tensor::new(vec![1.0, -2.5, 0.125, 3.0], &[4]).unwrap();
        for dt in [DType::F16, DType::BF16] {
            let h = t.to_dtype(dt).unwrap();
            assert_eq!(h.dtype(), dt);
            assert_eq!(h.raw_bytes().len(), 8);
            assert_eq!(h.f32s().as_ref(), t.f32s().as_ref());
        }
    }

    #[test]
    fn narrow_and_cat() {
        let t = Tensor::new((0..8).map(|x| x as f32).collect(), &[4, 2]).unwrap();
        let a = t.narrow0(0, 1).unwrap();
        let b = t.narrow0(1, 4).unwrap();
        let c = Tensor::cat0(&[a, b]).unwrap();
        assert_eq!(c.f32s().as_ref(), t.f32s().as_ref());
        assert!(t.narrow0(3, 5).is_err());
    }
}
