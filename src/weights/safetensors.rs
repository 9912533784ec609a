//! safetensors: a memory-mapped reader that validates the whole header up front, and an
//! atomic writer.
//!
//! File layout (<https://github.com/huggingface/safetensors>):
//! `[u64 LE header length N][N bytes of JSON header][data section]`. The header maps each
//! tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` with offsets relative to
//! the start of the data section, plus an optional `"__metadata__"` map of strings.
//!
//! Alignment: the writer pads the JSON with spaces so the data section starts at a multiple of
//! 64 bytes, and stores tensors largest element size first (I64, then F32/I32, then F16/BF16,
//! then U8). Every tensor then starts at a multiple of its element size, so the reader can
//! view f32/f16 data in the map without a copy. Tensors are packed with no gaps because the
//! reference safetensors implementation rejects files with holes between tensors.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use memmap2::Mmap;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Refuse headers larger than this: a corrupt length must not make us parse gigabytes.
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// The data section starts at a multiple of this many bytes from the start of the file.
const DATA_ALIGN: usize = 64;

/// Where a tensor lives in a [`SafeTensors`] file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `[begin, end)` in bytes, relative to the start of the data section (as in the header).
    pub data_offsets: (usize, usize),
}

/// Index of the first NaN/Inf in `v`. The all-finite case (the common one) is one pass of
/// branch-free chunked checks the compiler vectorises.
pub fn first_non_finite(v: &[f32]) -> Option<usize> {
    const CHUNK: usize = 256;
    for (c, chunk) in v.chunks(CHUNK).enumerate() {
        // |x| < inf is false exactly for NaN and ±inf.
        if !chunk
            .iter()
            .fold(true, |ok, x| ok & (x.abs() < f32::INFINITY))
        {
            let i = chunk.iter().position(|x| !x.is_finite()).unwrap_or(0);
            return Some(c * CHUNK + i);
        }
    }
    None
}

/// A memory-mapped safetensors file whose header has been fully validated.
///
/// Tensors returned by [`SafeTensors::tensor`] view the map without copying and keep it alive
/// (the map is shared through an `Arc`), so they may outlive this struct.
pub struct SafeTensors {
    path: PathBuf,
    map: Arc<Mmap>,
    /// Absolute file offset of the data section.
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SafeTensors({}, {} tensors)",
            self.path.display(),
            self.tensors.len()
        )
    }
}

impl SafeTensors {
    /// Maps `path` and validates its header: sizes, dtypes, byte counts, bounds, overlaps.
    /// Any problem is an error naming the file (and the tensor, where there is one).
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensors> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if file_len < 8 {
            return Err(Error::format(
                path,
                format!("{file_len} bytes is too short for a safetensors file (truncated?)"),
            ));
        }
        // SAFETY: mapping a file is only sound while nobody changes it. We only ever read the
        // map, but another process could still truncate or rewrite the file while it is mapped,
        // which would change tensors under our feet or fault (SIGBUS) on access. This is the
        // accepted risk of every mmap-based weight loader; our own writer never modifies a file
        // in place (it writes a temp file and renames it over the target), so files it replaces
        // stay intact for readers that still map the old version.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (data_start, tensors, metadata) = parse_header(&map, path)?;
        Ok(SafeTensors {
            path: path.to_path_buf(),
            map: Arc::new(map),
            data_start,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The `__metadata__` string map (empty when the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// dtype, shape and offsets of a tensor, or `None` if there is no such tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    fn info_or_err(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| {
            Error::format(
                &self.path,
                format!(
                    "no tensor named '{name}' (the file holds {} tensors)",
                    self.tensors.len()
                ),
            )
        })
    }

    /// A zero-copy view of the tensor's bytes in the map.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self.info_or_err(name)?;
        let (begin, end) = info.data_offsets;
        // Offsets were checked against the map in `open`, so these additions cannot overflow.
        Tensor::from_mapped(
            self.map.clone(),
            self.data_start + begin,
            end - begin,
            info.dtype,
            &info.shape,
        )
        .map_err(|e| Error::format(&self.path, format!("tensor '{name}': {e}")))
    }

    /// Like [`SafeTensors::tensor`], for a float weight whose shape the caller knows: a wrong
    /// shape, a non-float dtype or a NaN/Inf value is an error naming the file and tensor
    /// (one vectorisable pass per tensor, at load: a broken weight must never reach a
    /// verdict). F16/BF16 tensors are returned as stored (still zero-copy); `f32s()` widens
    /// them when read.
    pub fn tensor_f32_checked(&self, name: &str, expected_shape: &[usize]) -> Result<Tensor> {
        let info = self.info_or_err(name)?;
        if !info.dtype.is_float() {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor '{name}': dtype {} where a float tensor (F32, F16 or BF16) is needed",
                    info.dtype
                ),
            ));
        }
        if info.shape != expected_shape {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor '{name}': shape {:?}, expected {:?}",
                    info.shape, expected_shape
                ),
            ));
        }
        let t = self.tensor(name)?;
        if let Some(i) = first_non_finite(&t.f32s()) {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor '{name}': non-finite value {} at element {i} (corrupt weights)",
                    t.f32s()[i]
                ),
            ));
        }
        Ok(t)
    }

    /// Every tensor, in name order (zero-copy views).
    pub fn load_all(&self) -> Result<Vec<(String, Tensor)>> {
        self.tensors
            .keys()
            .map(|name| Ok((name.clone(), self.tensor(name)?)))
            .collect()
    }
}

type Header = (
    usize,
    BTreeMap<String, TensorInfo>,
    BTreeMap<String, String>,
);

/// Validates the header of a safetensors file held in `bytes`; returns the data section's
/// absolute offset, the tensors and the metadata.
fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    let bad = |msg: String| Error::format(path, msg);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(bytes.get(..8).ok_or_else(|| bad("too short".into()))?);
    let header_len = u64::from_le_bytes(len8);
    let available = bytes.len() as u64 - 8;
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {header_len} is over the {MAX_HEADER_BYTES}-byte limit (corrupt file?)"
        )));
    }
    if header_len > available {
        return Err(bad(format!(
            "header length {header_len} runs past the end of the file ({available} bytes \
             after the length field; truncated?)"
        )));
    }
    let data_start = 8 + header_len as usize;
    let data_len = bytes.len() - data_start;

    let json: serde_json::Value = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(entries) = json else {
        return Err(bad("header is not a JSON object".into()));
    };

    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            let serde_json::Value::Object(map) = value else {
                return Err(bad("__metadata__ is not an object".into()));
            };
            for (k, v) in map {
                let serde_json::Value::String(s) = v else {
                    return Err(bad(format!("__metadata__ '{k}' is not a string")));
                };
                metadata.insert(k, s);
            }
            continue;
        }
        let info =
            parse_entry(&value, data_len).map_err(|msg| bad(format!("tensor '{name}': {msg}")))?;
        tensors.insert(name, info);
    }

    // No two tensors may share bytes: sort by start and compare neighbours.
    let mut ranges: Vec<(&str, usize, usize)> = tensors
        .iter()
        .map(|(n, i)| (n.as_str(), i.data_offsets.0, i.data_offsets.1))
        .collect();
    ranges.sort_by_key(|&(_, begin, end)| (begin, end));
    for pair in ranges.windows(2) {
        let (a, _, a_end) = pair[0];
        let (b, b_begin, _) = pair[1];
        if b_begin < a_end {
            return Err(bad(format!(
                "tensor '{b}': data starts at {b_begin}, inside tensor '{a}' (which ends at \
                 {a_end}); overlapping ranges"
            )));
        }
    }
    Ok((data_start, tensors, metadata))
}

/// One header entry; errors are plain messages the caller prefixes with file and tensor.
fn parse_entry(
    value: &serde_json::Value,
    data_len: usize,
) -> std::result::Result<TensorInfo, String> {
    let obj = value.as_object().ok_or("entry is not a JSON object")?;
    let dtype_name = obj
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or("missing or non-string 'dtype'")?;
    let dtype = DType::from_safetensors_name(dtype_name)
        .ok_or_else(|| format!("unsupported dtype '{dtype_name}'"))?;

    let shape_json = obj
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or("missing or non-array 'shape'")?;
    let mut shape = Vec::with_capacity(shape_json.len());
    for d in shape_json {
        let d = d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| format!("shape {shape_json:?} holds a non-integer or negative size"))?;
        shape.push(d);
    }

    let offsets = obj
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .ok_or("missing or non-array 'data_offsets'")?;
    let offset = |i: usize| {
        offsets
            .get(i)
            .and_then(|v| v.as_u64())
            .and_then(|v| usize::try_from(v).ok())
    };
    let (Some(begin), Some(end), 2) = (offset(0), offset(1), offsets.len()) else {
        return Err("'data_offsets' must be two non-negative integers".into());
    };
    if end < begin {
        return Err(format!(
            "data_offsets [{begin}, {end}] end before they begin"
        ));
    }

    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("shape has too many elements")?;
    let nbytes = numel
        .checked_mul(dtype.size())
        .ok_or("shape has too many bytes")?;
    if end - begin != nbytes {
        return Err(format!(
            "data_offsets [{begin}, {end}] span {} bytes, but {dtype} of shape {shape:?} needs \
             {nbytes}",
            end - begin
        ));
    }
    if end > data_len {
        return Err(format!(
            "data_offsets [{begin}, {end}] run past the end of the data section ({data_len} \
             bytes; truncated?)"
        ));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        data_offsets: (begin, end),
    })
}

/// Writes tensors to a safetensors file, atomically (a temp file renamed over `path`).
///
/// `tensors` is any sequence of `(name, tensor)`: a `Vec<(String, Tensor)>`, an array of
/// `(&str, &Tensor)`, or `slice.iter().map(|(n, t)| (n, t))`. Names must be unique and not
/// `__metadata__`. The header lists tensors in name order; see the module docs for the layout.
pub fn write_safetensors<I, N, T>(
    path: impl AsRef<Path>,
    tensors: I,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()>
where
    I: IntoIterator<Item = (N, T)>,
    N: AsRef<str>,
    T: Borrow<Tensor>,
{
    let path = path.as_ref();
    let mut items: Vec<(N, T)> = tensors.into_iter().collect();
    items.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    for pair in items.windows(2) {
        if pair[0].0.as_ref() == pair[1].0.as_ref() {
            return Err(Error::invalid(format!(
                "{}: duplicate tensor name '{}'",
                path.display(),
                pair[0].0.as_ref()
            )));
        }
    }
    if items.iter().any(|(n, _)| n.as_ref() == "__metadata__") {
        return Err(Error::invalid(format!(
            "{}: '__metadata__' is reserved and cannot name a tensor",
            path.display()
        )));
    }

    // Data order: largest element first, so each tensor starts aligned to its element size.
    let mut data_order: Vec<usize> = (0..items.len()).collect();
    data_order.sort_by_key(|&i| std::cmp::Reverse(items[i].1.borrow().dtype().size()));
    let mut offsets = vec![(0usize, 0usize); items.len()];
    let mut cursor = 0usize;
    for &i in &data_order {
        let t = items[i].1.borrow();
        let nbytes = t.raw_bytes().len();
        debug_assert_eq!(nbytes, t.numel() * t.dtype().size());
        offsets[i] = (cursor, cursor + nbytes);
        cursor += nbytes;
    }

    // The JSON header, built by hand so the key order is exactly what we document.
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let mut header = String::from("{");
    if let Some(meta) = metadata {
        header.push_str("\"__metadata__\":{");
        for (j, (k, v)) in meta.iter().enumerate() {
            if j > 0 {
                header.push(',');
            }
            header.push_str(&quote(k));
            header.push(':');
            header.push_str(&quote(v));
        }
        header.push('}');
        if !items.is_empty() {
            header.push(',');
        }
    }
    for (i, (name, t)) in items.iter().enumerate() {
        let t = t.borrow();
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            quote(name.as_ref()),
            t.dtype().safetensors_name(),
            shape.join(","),
            offsets[i].0,
            offsets[i].1
        ));
    }
    header.push('}');
    // Spaces are valid JSON padding; they make 8 + header a multiple of DATA_ALIGN.
    let padded = (8 + header.len()).div_ceil(DATA_ALIGN) * DATA_ALIGN - 8;
    while header.len() < padded {
        header.push(' ');
    }

    write_atomically(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for &i in &data_order {
            w.write_all(&items[i].1.borrow().raw_bytes())?;
        }
        Ok(())
    })
}

/// Distinguishes temp files of concurrent writers inside one process.
static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes `path` via a temp file in the same directory (`.NAME.tmp-PID-N`), fsynced and then
/// renamed over `path`: readers see either the old file or the complete new one, never a
/// partial write. On any error the temp file is removed and `path` is untouched.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{n}",
        file_name.to_string_lossy(),
        std::process::id()
    ));

    let result = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename itself durable. Best effort: not every platform can fsync a directory.
    #[cfg(unix)]
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(json: &str, data: &[u8]) -> Vec<u8> {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn header_checks() {
        let p = Path::new("x.safetensors");
        let ok =
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#;
        let (start, t, m) = parse_header(&header_bytes(ok, &[0; 8]), p).unwrap();
        assert_eq!(start, 8 + ok.len());
        assert_eq!(t["a"].shape, vec![2]);
        assert_eq!(m["k"], "v");

        let cases = [
            (r#"[1]"#, "not a JSON object"),
            (
                r#"{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#,
                "unsupported dtype 'F64'",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                "needs 12",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}}"#,
                "negative",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                "end before",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#,
                "two non-negative",
            ),
            (r#"{"a":{"dtype":"F32","shape":[2]}}"#, "data_offsets"),
            (r#"{"__metadata__":{"k":1}}"#, "not a string"),
            (
                r#"{"a":{"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#,
                "too many",
            ),
        ];
        for (json, want) in cases {
            let e = parse_header(&header_bytes(json, &[0; 8]), p)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.contains("x.safetensors"),
                "{json}: {e}"
            );
        }
    }
}
