//! PyTorch checkpoint (`.pth` / `.pt`) import without Python.
//!
//! Two on-disk formats exist, told apart by their first bytes:
//! - **zip** (torch >= 1.6, `PK\x03\x04`): `<prefix>/data.pkl` is the pickled object and each
//!   storage is the entry `<prefix>/data/<key>` (raw little-endian elements).
//! - **legacy** (`_use_new_zipfile_serialization=False`, older torch): five things back to
//!   back: a magic-number pickle, a protocol-version pickle, a sys-info pickle, the main
//!   pickle, a pickled list of storage keys, then for each key in that order an 8-byte LE
//!   element count followed by the raw little-endian elements.
//!
//! In both, the main pickle refers to storages by *persistent id*
//! `('storage', torch.FloatStorage, key, location, numel)` and builds each tensor with
//! `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: a strided view. Views are copied
//! out into contiguous tensors here, so transposed/sliced tensors come out right and tensors
//! that shared a storage stop sharing it.
//!
//! What counts as "the state dict": the top-level dict if it holds tensors directly; otherwise
//! the one entry of the top-level dict whose value is a dict holding tensors (the usual
//! `{"state_dict": ...}` / `{"model": ...}` wrappers, next to e.g. an `"epoch"` number). Non-tensor
//! values inside the chosen dict are skipped.

use super::pickle::{self, Pickle, Value};
use super::safetensors::write_safetensors;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use half::{bf16, f16};
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;

/// The two on-disk layouts of `torch.save`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// torch >= 1.6 default: a zip archive.
    Zip,
    /// Pickles back to back followed by raw storages.
    Legacy,
}

impl CheckpointFormat {
    /// Tells the format from the first bytes of a file; `None` if it is neither.
    pub fn detect(bytes: &[u8]) -> Option<CheckpointFormat> {
        if bytes.starts_with(b"PK\x03\x04") {
            Some(CheckpointFormat::Zip)
        } else if bytes.first() == Some(&0x80) {
            // A pickle with protocol >= 2 starts with the PROTO opcode.
            Some(CheckpointFormat::Legacy)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckpointFormat::Zip => "pytorch-zip",
            CheckpointFormat::Legacy => "pytorch-legacy",
        }
    }
}

/// The legacy format's magic number 0x1950a86a20f9469cfc6c, as LONG1 stores it (little-endian).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// The largest `data.pkl` read from a zip checkpoint: guards against a zip bomb.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Reads a PyTorch checkpoint and returns its state dict's tensors in state-dict order.
///
/// The whole file is read into memory. Only tensors and dicts are understood; any other
/// Python object in the file (a pickled class, a function) is refused with an error that
/// names it, so loading an untrusted file runs no code.
pub fn load_torch_checkpoint(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_torch_checkpoint_bytes(&bytes, path)
}

/// [`load_torch_checkpoint`] on bytes already in memory; `origin` only names them in errors.
pub fn load_torch_checkpoint_bytes(bytes: &[u8], origin: &Path) -> Result<Vec<(String, Tensor)>> {
    match CheckpointFormat::detect(bytes) {
        Some(CheckpointFormat::Zip) => load_zip(bytes, origin),
        Some(CheckpointFormat::Legacy) => load_legacy(bytes, origin),
        None => Err(Error::format(
            origin,
            "not a PyTorch checkpoint: neither a zip archive nor a pickle \
             (very old tar-based torch files are not supported)",
        )),
    }
}

/// Converts a PyTorch checkpoint to a safetensors file (written atomically) and returns the
/// number of tensors. The safetensors metadata records `format: pt` and the source file name.
pub fn convert_torch_to_safetensors(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Result<usize> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    if same_file(src, dst) {
        return Err(Error::invalid(format!(
            "{}: the output is the checkpoint being converted; choose another output path \
             (e.g. {})",
            dst.display(),
            src.with_extension("safetensors").display()
        )));
    }
    let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    let tensors = load_torch_checkpoint_bytes(&bytes, src)?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    if let Some(name) = src.file_name() {
        meta.insert("source".to_string(), name.to_string_lossy().into_owned());
    }
    if let Some(f) = CheckpointFormat::detect(&bytes) {
        meta.insert("source_format".to_string(), f.name().to_string());
    }
    write_safetensors(dst, tensors.iter().map(|(n, t)| (n, t)), Some(&meta))?;
    Ok(tensors.len())
}

/// Whether `a` and `b` name the same existing file (through links or `..` as well).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// zip format

fn load_zip(bytes: &[u8], origin: &Path) -> Result<Vec<(String, Tensor)>> {
    let zip_err = |e: zip::result::ZipError| Error::format(origin, format!("zip: {e}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;

    // The pickle is `<prefix>/data.pkl`; the prefix is the archive name chosen at save time.
    let pkl_name = archive
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::format(
                origin,
                "zip archive has no data.pkl: not a PyTorch checkpoint",
            )
        })?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];

    // Files written on a big-endian machine say so; their raw storages would be byte-swapped.
    let byteorder_name = format!("{prefix}byteorder");
    if archive.index_for_name(&byteorder_name).is_some() {
        let order = read_entry(&mut archive, &byteorder_name, 16, origin)?;
        if order.trim_ascii() != b"little" {
            return Err(Error::format(
                origin,
                format!(
                    "storages are stored '{}'-endian; only little-endian is supported",
                    String::from_utf8_lossy(&order)
                ),
            ));
        }
    }

    let pkl = read_entry(&mut archive, &pkl_name, MAX_PICKLE_BYTES, origin)?;
    let (pickle, _) = pickle::parse(&pkl, origin)?;

    // Each storage once, even when several tensors view it.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for s in &pickle.storages {
        if storages.contains_key(&*s.key) {
            continue;
        }
        let nbytes = s
            .numel
            .checked_mul(s.dtype.size())
            .ok_or_else(|| Error::format(origin, format!("storage '{}' size overflows", s.key)))?;
        let name = format!("{prefix}data/{}", s.key);
        let size = archive
            .by_name(&name)
            .map_err(|e| Error::format(origin, format!("storage entry '{name}': {e}")))?
            .size();
        if size != nbytes as u64 {
            return Err(Error::format(
                origin,
                format!(
                    "storage entry '{name}' holds {size} bytes, but {} {} elements need {nbytes}",
                    s.numel, s.dtype
                ),
            ));
        }
        let data = read_entry(&mut archive, &name, nbytes as u64, origin)?;
        storages.insert(s.key.to_string(), data);
    }
    build_state_dict(&pickle, &storages, origin)
}

/// Reads a zip entry fully, refusing entries larger than `limit` bytes.
fn read_entry(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    limit: u64,
    origin: &Path,
) -> Result<Vec<u8>> {
    let entry = archive
        .by_name(name)
        .map_err(|e| Error::format(origin, format!("zip entry '{name}': {e}")))?;
    if entry.size() > limit {
        return Err(Error::format(
            origin,
            format!(
                "zip entry '{name}' is {} bytes, over the {limit}-byte limit",
                entry.size()
            ),
        ));
    }
    let mut data = Vec::with_capacity(entry.size() as usize);
    // `take` also bounds a lying size field; reading to the end makes the zip crate check CRC.
    entry
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| Error::format(origin, format!("zip entry '{name}': {e}")))?;
    if data.len() as u64 > limit {
        return Err(Error::format(
            origin,
            format!("zip entry '{name}' is larger than its declared size"),
        ));
    }
    Ok(data)
}

// ---------------------------------------------------------------------------------------------
// legacy format

fn load_legacy(bytes: &[u8], origin: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut pos = 0;

    let (magic, used) = pickle::parse(bytes, origin)?;
    pos += used;
    if *magic.root() != Value::BigInt(LEGACY_MAGIC.as_slice().into()) {
        return Err(Error::format(
            origin,
            "starts with a pickle but not with torch's magic number: not a PyTorch checkpoint",
        ));
    }

    let (version, used) = pickle::parse(&bytes[pos..], origin)?;
    pos += used;
    if *version.root() != Value::Int(1001) {
        return Err(Error::format(
            origin,
            "unsupported legacy checkpoint protocol version (expected 1001)",
        ));
    }

    let (sys_info, used) = pickle::parse(&bytes[pos..], origin)?;
    pos += used;
    for (k, v) in sys_info.dict_items(sys_info.root()).unwrap_or_default() {
        if *k == Value::Str("little_endian".into()) && *v == Value::Bool(false) {
            return Err(Error::format(
                origin,
                "written on a big-endian machine; only little-endian is supported",
            ));
        }
    }

    let (main, used) = pickle::parse(&bytes[pos..], origin)?;
    pos += used;

    let (keys, used) = pickle::parse(&bytes[pos..], origin)?;
    pos += used;
    let key_values = keys
        .seq(keys.root())
        .ok_or_else(|| Error::format(origin, "storage key list is not a list"))?;

    // dtype of each storage key, from the persistent ids of the main pickle.
    let mut dtypes: HashMap<&str, DType> = HashMap::new();
    for s in &main.storages {
        if let Some(old) = dtypes.insert(&*s.key, s.dtype)
            && old != s.dtype
        {
            return Err(Error::format(
                origin,
                format!("storage '{}' is used as both {old} and {}", s.key, s.dtype),
            ));
        }
    }

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for k in key_values {
        let Value::Str(key) = k else {
            return Err(Error::format(origin, "storage key list holds a non-string"));
        };
        let dtype = *dtypes.get(&**key).ok_or_else(|| {
            Error::format(
                origin,
                format!("storage '{key}' is listed but no tensor uses it; its size is unknown"),
            )
        })?;
        let count_bytes = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| Error::format(origin, format!("truncated before storage '{key}'")))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(count_bytes);
        let count = u64::from_le_bytes(a);
        pos += 8;
        let nbytes = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size()))
            .filter(|&n| n <= bytes.len() - pos)
            .ok_or_else(|| {
                Error::format(
                    origin,
                    format!(
                        "truncated storage '{key}': {count} {dtype} elements but {} bytes left",
                        bytes.len() - pos
                    ),
                )
            })?;
        storages.insert(key.to_string(), bytes[pos..pos + nbytes].to_vec());
        pos += nbytes;
    }
    build_state_dict(&main, &storages, origin)
}

// ---------------------------------------------------------------------------------------------
// shared: find the state dict, copy views out of storages

fn has_tensor(items: &[(&Value, &Value)]) -> bool {
    items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)))
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => format!("<{}>", other.kind()),
    }
}

/// Picks the state dict (see the module docs) and materialises its tensors in order.
fn build_state_dict(
    p: &Pickle,
    storages: &HashMap<String, Vec<u8>>,
    origin: &Path,
) -> Result<Vec<(String, Tensor)>> {
    let top = p.dict_items(p.root()).ok_or_else(|| {
        Error::format(
            origin,
            format!(
                "the checkpoint holds a {}, not a dict of tensors",
                p.root().kind()
            ),
        )
    })?;

    let chosen = if has_tensor(&top) {
        top
    } else {
        // Each distinct dict is scanned once, however often the file refers to it.
        let mut holds_tensors: HashMap<usize, bool> = HashMap::new();
        let mut nested: Vec<(String, &Value)> = Vec::new();
        for (k, v) in &top {
            let Value::Dict(id) = v else { continue };
            let yes = *holds_tensors
                .entry(*id)
                .or_insert_with(|| p.dict_items(v).is_some_and(|items| has_tensor(&items)));
            if yes {
                nested.push((key_text(k), v));
            }
        }
        match nested.len() {
            0 => return Err(Error::format(origin, "no tensors found in the checkpoint")),
            1 => p.dict_items(nested[0].1).unwrap_or_default(),
            _ => {
                let names: Vec<&str> = nested.iter().map(|(n, _)| n.as_str()).collect();
                return Err(Error::format(
                    origin,
                    format!(
                        "several dicts of tensors ({}); cannot tell which is the state dict",
                        names.join(", ")
                    ),
                ));
            }
        }
    };

    // Copying views out could need more memory than the file holds (one storage viewed by
    // many overlapping tensors). Legitimate files stay far below this budget; a hostile one
    // gets an error instead of exhausting memory.
    let storage_bytes: usize = storages.values().map(Vec::len).sum();
    let budget = storage_bytes.saturating_mul(4).saturating_add(1 << 20);
    let mut used = 0usize;
    // The same tensor object under two names (tied weights) is copied once and shared.
    let mut done: HashMap<usize, Tensor> = HashMap::new();

    let mut out = Vec::new();
    for (k, v) in chosen {
        let Value::Tensor(id) = v else {
            continue; // e.g. a stray "epoch": 3 next to the tensors
        };
        let Value::Str(name) = k else {
            return Err(Error::format(
                origin,
                format!("a tensor is stored under a {} key, not a string", k.kind()),
            ));
        };
        let t = match done.get(id) {
            Some(t) => t.clone(),
            None => {
                let t = materialise(p, *id, storages)
                    .map_err(|msg| Error::format(origin, format!("tensor '{name}': {msg}")))?;
                used = used.saturating_add(t.raw_bytes().len());
                if used > budget {
                    return Err(Error::format(
                        origin,
                        format!(
                            "tensor '{name}': the tensors need over {used} bytes, more than 4x \
                             the {storage_bytes} bytes of storage in the file (overlapping views?)"
                        ),
                    ));
                }
                done.insert(*id, t.clone());
                t
            }
        };
        out.push((name.to_string(), t));
    }
    Ok(out)
}

fn materialise(
    p: &Pickle,
    id: usize,
    storages: &HashMap<String, Vec<u8>>,
) -> std::result::Result<Tensor, String> {
    let t = p.tensors.get(id).ok_or("internal: bad tensor index")?;
    let s = p
        .storages
        .get(t.storage)
        .ok_or("internal: bad storage index")?;
    let data = storages
        .get(&*s.key)
        .ok_or_else(|| format!("storage '{}' is missing from the file", s.key))?;
    let bytes = gather(data, s.dtype.size(), t.offset, &t.shape, &t.stride)?;
    tensor_from_le_bytes(bytes, s.dtype, &t.shape).map_err(|e| e.to_string())
}

/// Copies the strided view `(offset, shape, stride)` (in elements of `elem` bytes) out of
/// `storage` into a contiguous row-major buffer. Every index is checked first.
pub(crate) fn gather(
    storage: &[u8],
    elem: usize,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
) -> std::result::Result<Vec<u8>, String> {
    let overflow = || "size overflows".to_string();
    let storage_numel = storage.len() / elem;
    let mut numel: usize = 1;
    for &d in shape {
        numel = numel.checked_mul(d).ok_or_else(overflow)?;
    }
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The farthest element the view touches must lie inside the storage.
    let mut last = offset;
    for (&d, &s) in shape.iter().zip(stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(overflow)?;
    }
    if last >= storage_numel {
        return Err(format!(
            "view (offset {offset}, size {shape:?}, stride {stride:?}) reaches element {last} \
             of a storage of {storage_numel}"
        ));
    }
    // A view with more elements than its storage must overlap itself (e.g. stride 0 from
    // `expand`); refusing it keeps a tiny hostile file from asking for a huge allocation.
    if numel > storage_numel {
        return Err(format!(
            "view of {numel} elements over a storage of {storage_numel} (overlapping strides \
             are not supported)"
        ));
    }

    // Fast path: already contiguous row-major (dims of size 1 may have any stride).
    let mut expected = 1usize;
    let mut contiguous = true;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            contiguous = false;
            break;
        }
        expected *= d; // cannot overflow: the product of all dims fit above
    }
    if contiguous {
        return Ok(storage[offset * elem..(offset + numel) * elem].to_vec());
    }

    // General case: walk the index like an odometer, last dimension fastest.
    let mut out = Vec::with_capacity(numel * elem);
    let mut index = vec![0usize; shape.len()];
    let mut src = offset;
    for _ in 0..numel {
        out.extend_from_slice(&storage[src * elem..(src + 1) * elem]);
        for dim in (0..shape.len()).rev() {
            index[dim] += 1;
            src += stride[dim];
            if index[dim] < shape[dim] {
                break;
            }
            // Wrap this digit and carry into the next one.
            src -= stride[dim] * shape[dim];
            index[dim] = 0;
        }
    }
    Ok(out)
}

/// A tensor from contiguous little-endian bytes; floats get typed storage so `f32s()` of an
/// f32 tensor borrows without copying.
fn tensor_from_le_bytes(bytes: Vec<u8>, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    match dtype {
        DType::F32 => {
            let v = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::new(v, shape)
        }
        DType::F16 => {
            let v = bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect();
            Tensor::from_f16(v, shape)
        }
        DType::BF16 => {
            let v = bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect();
            Tensor::from_bf16(v, shape)
        }
        DType::I64 | DType::I32 | DType::U8 => Tensor::from_bytes(bytes, dtype, shape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn as_f32(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn gather_contiguous_transposed_and_offset() {
        let s = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        // [[0,1,2],[3,4,5]]
        assert_eq!(
            as_f32(&gather(&s, 4, 0, &[2, 3], &[3, 1]).unwrap()),
            [0., 1., 2., 3., 4., 5.]
        );
        // Its transpose: [[0,3],[1,4],[2,5]]
        assert_eq!(
            as_f32(&gather(&s, 4, 0, &[3, 2], &[1, 3]).unwrap()),
            [0., 3., 1., 4., 2., 5.]
        );
        // A slice with an offset.
        assert_eq!(as_f32(&gather(&s, 4, 4, &[2], &[1]).unwrap()), [4., 5.]);
        // Scalar (rank 0) and empty tensors.
        assert_eq!(as_f32(&gather(&s, 4, 5, &[], &[]).unwrap()), [5.]);
        assert!(gather(&s, 4, 0, &[0, 3], &[3, 1]).unwrap().is_empty());
    }

    #[test]
    fn gather_rejects_out_of_bounds_and_overlap() {
        let s = f32_bytes(&[0., 1., 2., 3.]);
        assert!(
            gather(&s, 4, 1, &[4], &[1])
                .unwrap_err()
                .contains("reaches")
        );
        assert!(
            gather(&s, 4, 0, &[2, 2], &[3, 1])
                .unwrap_err()
                .contains("reaches")
        );
        assert!(
            gather(&s, 4, 0, &[1000], &[0])
                .unwrap_err()
                .contains("overlapping")
        );
        assert!(
            gather(&s, 4, 0, &[usize::MAX, 2], &[1, 1])
                .unwrap_err()
                .contains("overflow")
        );
    }

    #[test]
    fn detects_formats() {
        assert_eq!(
            CheckpointFormat::detect(b"PK\x03\x04rest"),
            Some(CheckpointFormat::Zip)
        );
        assert_eq!(
            CheckpointFormat::detect(b"\x80\x02"),
            Some(CheckpointFormat::Legacy)
        );
        assert_eq!(CheckpointFormat::detect(b"hello"), None);
        assert_eq!(CheckpointFormat::detect(b""), None);
    }
}
