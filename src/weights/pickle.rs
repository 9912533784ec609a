//! A minimal, *safe* pickle reader: just enough of Python's pickle VM to read PyTorch state
//! dicts, with no Python and no code execution.
//!
//! Python's unpickler can import and call any function named in the stream (`os.system` ...),
//! which is why loading an untrusted `.pth` with Python is dangerous. This reader instead knows
//! a short whitelist of globals (see [`resolve_global`]) and models what they would build
//! (an `OrderedDict`, a tensor view of a storage, ...). Any other global is refused with
//! "unsupported pickle global 'module.name'".
//!
//! Design notes, for whoever extends this:
//! - Python containers are mutable and shared: a dict may be stored in the memo and filled
//!   afterwards. Tuples, lists and dicts therefore live in arenas (`seqs`, `dicts`) and a
//!   [`Value`] only holds their index, so a memo entry sees later changes, exactly like Python.
//! - Values are flat (no `Box` inside), so dropping a hostile, deeply nested structure cannot
//!   overflow the stack, and nothing here recurses over user data. Strings and bytes are
//!   `Rc`-shared, so pushing a memoized 1 MB string a million times costs no memory.
//! - Every read is bounds-checked; a truncated or corrupt stream is an `Err`, never a panic.
//!   Memory use is linear in the input: each opcode creates at most one object, lengths are
//!   checked against the bytes actually left before anything is allocated, and the tuples a
//!   call reads are length-capped before they are copied.

use crate::error::{Error, Result};
use crate::tensor::DType;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

/// The callables and classes a checkpoint may name. Everything else is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`: the state dict itself and tensors' `backward_hooks`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`: a tensor as a view of a storage.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter` (and `_with_state`): an `nn.Parameter` wrapping a tensor.
    RebuildParameter,
    /// `torch.FloatStorage` etc.: only ever a tag inside a storage's persistent id.
    StorageType(DType),
    /// `torch.Size`: a tuple subclass.
    TorchSize,
}

/// Maps `module.name` to a whitelisted global, or `None` (the caller then refuses the file).
pub(crate) fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameter,
        ("torch", "FloatStorage") => Global::StorageType(DType::F32),
        ("torch", "HalfStorage") => Global::StorageType(DType::F16),
        ("torch", "BFloat16Storage") => Global::StorageType(DType::BF16),
        ("torch", "LongStorage") => Global::StorageType(DType::I64),
        ("torch", "IntStorage") => Global::StorageType(DType::I32),
        ("torch", "ByteStorage") => Global::StorageType(DType::U8),
        ("torch", "Size") => Global::TorchSize,
        _ => return None,
    })
}

/// One value on the pickle stack. Containers, storages and tensors are indices into the
/// arenas of the [`Pickle`] being built.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (LONG1/LONG4): little-endian two's complement bytes.
    /// The legacy torch format's magic number is one.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    /// Index into [`Pickle::seqs`].
    Tuple(usize),
    /// Index into [`Pickle::seqs`].
    List(usize),
    /// Index into [`Pickle::dicts`].
    Dict(usize),
    /// Index into [`Pickle::storages`].
    Storage(usize),
    /// Index into [`Pickle::tensors`].
    Tensor(usize),
}

impl Value {
    /// A short name of the kind of value, for error messages (never prints contents).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Global(_) => "global",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// A storage named by a persistent id `('storage', torch.XStorage, key, location, numel[, view])`.
/// The bytes themselves live outside the pickle (zip entry or after the legacy pickles).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StorageRef {
    /// Shared: a stream may name the same storage many times.
    pub key: Rc<str>,
    pub dtype: DType,
    pub numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    /// Index into [`Pickle::storages`].
    pub storage: usize,
    /// In elements, not bytes.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// In elements, one per dimension.
    pub stride: Vec<usize>,
}

/// Everything one pickle stream built.
#[derive(Debug, Default)]
pub(crate) struct Pickle {
    pub root: Option<Value>,
    /// Contents of tuples and lists.
    pub seqs: Vec<Vec<Value>>,
    /// Contents of dicts, as (key, value) pairs in insertion order. A key set twice appears
    /// twice; readers take the last value (see [`Pickle::dict_items`]).
    pub dicts: Vec<Vec<(Value, Value)>>,
    pub storages: Vec<StorageRef>,
    pub tensors: Vec<TensorRef>,
}

impl Pickle {
    /// The value `STOP` returned.
    pub(crate) fn root(&self) -> &Value {
        // `parse` only returns a Pickle after STOP set the root.
        self.root.as_ref().unwrap_or(&Value::None)
    }

    /// The items of a tuple or list, or `None` for any other value.
    pub(crate) fn seq(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Tuple(id) | Value::List(id) => self.seqs.get(*id).map(|s| s.as_slice()),
            _ => None,
        }
    }

    /// A dict's items with Python semantics for repeated keys: a key set twice keeps its
    /// first position and its last value. `None` if `v` is not a dict.
    pub(crate) fn dict_items(&self, v: &Value) -> Option<Vec<(&Value, &Value)>> {
        let Value::Dict(id) = v else { return None };
        let pairs = self.dicts.get(*id)?;
        let mut out: Vec<(&Value, &Value)> = Vec::with_capacity(pairs.len());
        // Only string keys are deduplicated: they are the only keys a state dict uses.
        let mut position: HashMap<&str, usize> = HashMap::new();
        for (k, val) in pairs {
            if let Value::Str(s) = k {
                if let Some(&i) = position.get(&**s) {
                    out[i].1 = val;
                    continue;
                }
                position.insert(&**s, out.len());
            }
            out.push((k, val));
        }
        Some(out)
    }
}

// Opcodes (names as in CPython's Lib/pickle.py).
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const BINFLOAT: u8 = b'G';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
// Protocol 2.
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
// Protocol 4.
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

/// Highest pickle protocol this reader accepts (5 adds only out-of-band buffers, unused by torch).
const MAX_PROTOCOL: u8 = 5;

/// torch tensors have at most 64 dimensions.
const MAX_DIMS: usize = 64;

/// Longest storage key accepted (torch writes decimal numbers).
const MAX_KEY_LEN: usize = 256;

/// The whitelisted callables take at most 7 arguments (`_rebuild_tensor_v2` with metadata).
const MAX_CALL_ARGS: usize = 8;

/// Runs one pickle stream that starts at `data[0]` and ends with STOP. Returns what it built
/// and how many bytes it consumed (the legacy torch format puts several pickles back to back).
/// `path` only names the file in error messages.
pub(crate) fn parse(data: &[u8], path: &Path) -> Result<(Pickle, usize)> {
    let mut vm = Vm {
        data,
        pos: 0,
        path,
        out: Pickle::default(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    vm.run()?;
    Ok((vm.out, vm.pos))
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    out: Pickle,
    stack: Vec<Value>,
    /// Stack lengths at each open MARK. Like Python's metastack: a MARK starts a fresh
    /// stack, so nothing may pop below the innermost mark.
    marks: Vec<usize>,
    memo: HashMap<usize, Value>,
}

impl Vm<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("pickle: {msg} (at byte {})", self.pos))
    }

    // ---- reading the stream ----

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let bytes = &self.data[self.pos..end];
                self.pos = end;
                Ok(bytes)
            }
            None => Err(self.err(format!(
                "truncated stream: needed {n} more bytes, {} left",
                self.data.len() - self.pos
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length prefix that must fit in what is left of the stream.
    fn len_from(&self, n: u64) -> Result<usize> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!(
                "truncated stream: a {n}-byte item but only {left} bytes left"
            )));
        }
        Ok(n as usize)
    }

    /// A text line ending in '\n' (GLOBAL's operands), without the newline.
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("truncated stream: unterminated text line"));
        };
        let text = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.err("GLOBAL name is not UTF-8"))?
            .to_string();
        self.pos += n + 1;
        Ok(text)
    }

    fn utf8(&mut self, n: usize) -> Result<String> {
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.err("string is not valid UTF-8"))
    }

    // ---- the stack ----

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn peek(&self) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.err("stack underflow"))
    }

    /// Everything pushed since the innermost MARK, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err("no MARK to pop to"));
        };
        // `pop` never goes below a mark, so `mark <= len` holds; `min` keeps it panic-free anyway.
        let at = mark.min(self.stack.len());
        Ok(self.stack.split_off(at))
    }

    fn new_tuple(&mut self, items: Vec<Value>) -> Value {
        self.out.seqs.push(items);
        Value::Tuple(self.out.seqs.len() - 1)
    }

    fn new_list(&mut self, items: Vec<Value>) -> Value {
        self.out.seqs.push(items);
        Value::List(self.out.seqs.len() - 1)
    }

    fn new_dict(&mut self, pairs: Vec<(Value, Value)>) -> Value {
        self.out.dicts.push(pairs);
        Value::Dict(self.out.dicts.len() - 1)
    }

    fn memo_put(&mut self, index: usize) -> Result<()> {
        let v = self.peek()?.clone();
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: usize) -> Result<()> {
        match self.memo.get(&index) {
            Some(v) => {
                let v = v.clone();
                self.push(v);
                Ok(())
            }
            None => Err(self.err(format!("memo entry {index} is not set"))),
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Value> {
        match resolve_global(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None => Err(self.err(format!(
                "unsupported pickle global '{module}.{name}' (only PyTorch tensors and \
                 dicts are read; this file may not be a plain state dict, or may be malicious)"
            ))),
        }
    }

    // ---- the interpreter loop ----

    fn run(&mut self) -> Result<()> {
        loop {
            let op = match self.u8() {
                Ok(op) => op,
                Err(_) => return Err(self.err("truncated stream: no STOP opcode")),
            };
            match op {
                PROTO => {
                    let version = self.u8()?;
                    if version > MAX_PROTOCOL {
                        return Err(self.err(format!("unsupported pickle protocol {version}")));
                    }
                }
                FRAME => {
                    // Frames only help buffered readers; the whole stream is in memory.
                    self.u64()?;
                }
                STOP => {
                    let root = self.pop()?;
                    self.out.root = Some(root);
                    return Ok(());
                }
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    // Like CPython: POP right after a MARK discards the mark.
                    if self.stack.len() > self.floor() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let v = self.peek()?.clone();
                    self.push(v);
                }

                // -- scalars --
                NONE => self.push(Value::None),
                NEWTRUE => self.push(Value::Bool(true)),
                NEWFALSE => self.push(Value::Bool(false)),
                BININT => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64));
                }
                BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                BININT2 => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                LONG1 => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_value(bytes));
                }
                LONG4 => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("LONG4 with a negative byte count"));
                    }
                    let n = self.len_from(n as u64)?;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_value(bytes));
                }
                BINFLOAT => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    // The one big-endian field in pickle.
                    self.push(Value::Float(f64::from_be_bytes(a)));
                }

                // -- strings and bytes --
                SHORT_BINUNICODE => {
                    let n = self.u8()? as usize;
                    let s = self.utf8(n)?;
                    self.push(Value::Str(s.into()));
                }
                BINUNICODE => {
                    let n = self.u32()? as u64;
                    let n = self.len_from(n)?;
                    let s = self.utf8(n)?;
                    self.push(Value::Str(s.into()));
                }
                BINUNICODE8 => {
                    let n = self.u64()?;
                    let n = self.len_from(n)?;
                    let s = self.utf8(n)?;
                    self.push(Value::Str(s.into()));
                }
                SHORT_BINSTRING | BINSTRING => {
                    // Python 2 `str`: bytes; decode as Latin-1 so any byte is accepted.
                    let n = if op == SHORT_BINSTRING {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    let n = self.len_from(n)?;
                    let s: String = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.push(Value::Str(s.into()));
                }
                SHORT_BINBYTES | BINBYTES | BINBYTES8 => {
                    let n = match op {
                        SHORT_BINBYTES => self.u8()? as u64,
                        BINBYTES => self.u32()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_from(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b.into()));
                }

                // -- containers --
                EMPTY_TUPLE => {
                    let t = self.new_tuple(Vec::new());
                    self.push(t);
                }
                TUPLE => {
                    let items = self.pop_mark()?;
                    let t = self.new_tuple(items);
                    self.push(t);
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = (op - TUPLE1 + 1) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let t = self.new_tuple(items);
                    self.push(t);
                }
                EMPTY_LIST => {
                    let l = self.new_list(Vec::new());
                    self.push(l);
                }
                LIST => {
                    let items = self.pop_mark()?;
                    let l = self.new_list(items);
                    self.push(l);
                }
                APPEND => {
                    let v = self.pop()?;
                    let id = self.top_list()?;
                    self.out.seqs[id].push(v);
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    let id = self.top_list()?;
                    self.out.seqs[id].extend(items);
                }
                EMPTY_DICT => {
                    let d = self.new_dict(Vec::new());
                    self.push(d);
                }
                DICT => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let d = self.new_dict(pairs);
                    self.push(d);
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let id = self.top_dict()?;
                    self.out.dicts[id].push((k, v));
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let id = self.top_dict()?;
                    self.out.dicts[id].extend(pairs);
                }

                // -- memo --
                BINPUT => {
                    let i = self.u8()? as usize;
                    self.memo_put(i)?;
                }
                LONG_BINPUT => {
                    let i = self.u32()? as usize;
                    self.memo_put(i)?;
                }
                MEMOIZE => {
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                BINGET => {
                    let i = self.u8()? as usize;
                    self.memo_get(i)?;
                }
                LONG_BINGET => {
                    let i = self.u32()? as usize;
                    self.memo_get(i)?;
                }

                // -- objects --
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.push(g);
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(&module, &name)?;
                    self.push(g);
                }
                REDUCE | NEWOBJ => {
                    // REDUCE calls f(*args); NEWOBJ calls cls.__new__(cls, *args). For the
                    // whitelisted globals both mean "build this object from these args".
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                BUILD => {
                    // Sets attributes (`OrderedDict._metadata`, a tensor's python attrs).
                    // They carry nothing a state dict's tensors need, so the state is dropped.
                    self.pop()?;
                    self.peek()?;
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                other => {
                    // Step back so the error points at the opcode itself.
                    self.pos -= 1;
                    return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}")));
                }
            }
        }
    }

    fn top_list(&self) -> Result<usize> {
        match self.peek()? {
            Value::List(id) => Ok(*id),
            other => Err(self.err(format!("APPEND to a {}, not a list", other.kind()))),
        }
    }

    fn top_dict(&self) -> Result<usize> {
        match self.peek()? {
            Value::Dict(id) => Ok(*id),
            other => Err(self.err(format!("SETITEM on a {}, not a dict", other.kind()))),
        }
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    /// A copy of a tuple's items; refuses tuples longer than `max_len` before copying, so a
    /// hostile stream cannot make each call copy a huge tuple.
    fn tuple_items(&self, v: &Value, what: &str, max_len: usize) -> Result<Vec<Value>> {
        let Value::Tuple(id) = v else {
            return Err(self.err(format!("{what} must be a tuple, got a {}", v.kind())));
        };
        let items = &self.out.seqs[*id];
        if items.len() > max_len {
            return Err(self.err(format!(
                "{what} has {} items, more than the {max_len} expected",
                items.len()
            )));
        }
        Ok(items.clone())
    }

    fn usize_of(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) if *i >= 0 => usize::try_from(*i)
                .map_err(|_| self.err(format!("{what} {i} does not fit this machine"))),
            Value::Int(i) => Err(self.err(format!("{what} is negative ({i})"))),
            other => Err(self.err(format!("{what} must be an int, got a {}", other.kind()))),
        }
    }

    fn usizes_of(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        let items = self.tuple_items(v, what, MAX_DIMS)?;
        items.iter().map(|x| self.usize_of(x, what)).collect()
    }

    /// What calling a whitelisted global with `args` would build.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = callable else {
            return Err(self.err(format!("cannot call a {}", callable.kind())));
        };
        let args = self.tuple_items(&args, "call arguments", MAX_CALL_ARGS)?;
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.err("OrderedDict(...) with arguments is not supported"));
                }
                Ok(self.new_dict(Vec::new()))
            }
            Global::TorchSize => match args.as_slice() {
                [sizes @ Value::Tuple(_)] => Ok(sizes.clone()),
                _ => Err(self.err("torch.Size(...) expects one tuple")),
            },
            Global::RebuildParameter => match args.first() {
                // _rebuild_parameter(data, requires_grad, backward_hooks[, state])
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.err("_rebuild_parameter expects a tensor as first argument")),
            },
            Global::RebuildTensorV2 => {
                // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                //                    backward_hooks[, metadata])
                if args.len() < 4 {
                    return Err(self.err(format!(
                        "_rebuild_tensor_v2 expects at least 4 arguments, got {}",
                        args.len()
                    )));
                }
                let Value::Storage(storage) = args[0] else {
                    return Err(self.err(format!(
                        "_rebuild_tensor_v2: first argument is a {}, not a storage",
                        args[0].kind()
                    )));
                };
                let offset = self.usize_of(&args[1], "storage offset")?;
                let shape = self.usizes_of(&args[2], "tensor size")?;
                let stride = self.usizes_of(&args[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err(format!(
                        "tensor size has {} dims but stride has {}",
                        shape.len(),
                        stride.len()
                    )));
                }
                self.out.tensors.push(TensorRef {
                    storage,
                    offset,
                    shape,
                    stride,
                });
                Ok(Value::Tensor(self.out.tensors.len() - 1))
            }
            Global::StorageType(dt) => Err(self.err(format!(
                "calling a storage type ({dt}) is not supported; storages must be persistent ids"
            ))),
        }
    }

    /// torch's persistent id for a storage:
    /// `('storage', torch.XStorage, key, location, numel)` (+ a 6th `view_metadata`, always
    /// `None` in files written by torch >= 0.4, in the legacy format).
    fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let items = self.tuple_items(&pid, "persistent id", 6)?;
        if !(items.len() == 5 || items.len() == 6) {
            return Err(self.err(format!(
                "persistent id has {} fields, expected 5 or 6",
                items.len()
            )));
        }
        if items[0] != Value::Str("storage".into()) {
            return Err(self.err("persistent id is not a ('storage', ...) tuple"));
        }
        let Value::Global(Global::StorageType(dtype)) = items[1] else {
            return Err(self.err("persistent id does not name a storage type"));
        };
        let key: Rc<str> = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string().into(),
            other => {
                return Err(self.err(format!("storage key is a {}", other.kind())));
            }
        };
        // torch keys are short numbers; a long one is corrupt (and would be slow to look up).
        if key.len() > MAX_KEY_LEN {
            return Err(self.err(format!("storage key of {} bytes is too long", key.len())));
        }
        let numel = self.usize_of(&items[4], "storage size")?;
        if items.len() == 6 && items[5] != Value::None {
            return Err(self.err(format!(
                "storage '{key}' is a view of another storage (pre-0.4 PyTorch); not supported"
            )));
        }
        self.out.storages.push(StorageRef { key, dtype, numel });
        Ok(Value::Storage(self.out.storages.len() - 1))
    }
}

/// LONG1/LONG4 operand: little-endian two's complement of any width.
fn long_value(bytes: Vec<u8>) -> Value {
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0x00 };
    // Fits in i64 when every byte past the 8th only repeats the sign.
    let fits = bytes.len() <= 8
        || bytes[8..].iter().all(|&b| b == fill) && {
            let top = bytes[7];
            (top & 0x80 != 0) == negative
        };
    if !fits {
        return Value::BigInt(bytes.into());
    }
    let mut a = [fill; 8];
    for (dst, src) in a.iter_mut().zip(bytes.iter()) {
        *dst = *src;
    }
    Value::Int(i64::from_le_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<(Pickle, usize)> {
        parse(bytes, Path::new("test.pkl"))
    }

    #[test]
    fn scalars_and_containers() {
        // pickle.dumps({'a': [1, 300, -2, 70000], 'b': (True, None, 1.5)}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01M,\x01J\xfe\xff\xff\xffJp\x11\x01\x00eX\x01\x00\x00\x00bq\x03\x88NG?\xf8\x00\x00\x00\x00\x00\x00\x87q\x04u.";
        let (p, used) = run(bytes).unwrap();
        assert_eq!(used, bytes.len());
        let items = p.dict_items(p.root()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0, &Value::Str("a".into()));
        let list = p.seq(items[0].1).unwrap();
        assert_eq!(
            list,
            &[
                Value::Int(1),
                Value::Int(300),
                Value::Int(-2),
                Value::Int(70000)
            ]
        );
        let tuple = p.seq(items[1].1).unwrap();
        assert_eq!(tuple, &[Value::Bool(true), Value::None, Value::Float(1.5)]);
    }

    #[test]
    fn memo_sees_later_mutation() {
        // d = {}; [d, d] where d is filled after being memoized:
        // PROTO 2, EMPTY_LIST, MARK, EMPTY_DICT, BINPUT 0, 'k' 1 SETITEM, BINGET 0, APPENDS, STOP
        let bytes = b"\x80\x02](}q\x00X\x01\x00\x00\x00kK\x01sh\x00e.";
        let (p, _) = run(bytes).unwrap();
        let list = p.seq(p.root()).unwrap();
        assert_eq!(list.len(), 2);
        for d in list {
            let items = p.dict_items(d).unwrap();
            assert_eq!(items, vec![(&Value::Str("k".into()), &Value::Int(1))]);
        }
    }

    #[test]
    fn long_values() {
        assert_eq!(long_value(vec![]), Value::Int(0));
        assert_eq!(long_value(vec![0xff]), Value::Int(-1));
        assert_eq!(long_value(vec![0x00, 0x80, 0x00]), Value::Int(0x8000));
        assert_eq!(long_value(vec![0xff; 12]), Value::Int(-1));
        // The legacy torch magic number does not fit i64.
        let magic = vec![0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        assert_eq!(long_value(magic.clone()), Value::BigInt(magic.into()));
        // 2^63 needs a 9th byte and is not an i64.
        let big = vec![0, 0, 0, 0, 0, 0, 0, 0x80, 0];
        assert_eq!(long_value(big.clone()), Value::BigInt(big.into()));
    }

    #[test]
    fn unsupported_global_is_refused() {
        // pickle.dumps(os.system('ls')) style payload: GLOBAL 'posix system', 'ls', TUPLE1, REDUCE
        let bytes = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        let e = run(bytes).unwrap_err().to_string();
        assert!(
            e.contains("unsupported pickle global 'posix.system'"),
            "{e}"
        );
        assert!(e.contains("test.pkl"), "{e}");
        // Same through STACK_GLOBAL (protocol 4).
        let bytes = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let e = run(bytes).unwrap_err().to_string();
        assert!(
            e.contains("unsupported pickle global 'builtins.eval'"),
            "{e}"
        );
    }

    #[test]
    fn malformed_streams_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "no STOP"),
            (b"\x80\x02", "no STOP"),
            (b"\x80\x09N.", "protocol 9"),
            (b"\x80\x02.", "underflow"),
            (b"\x80\x02(.", "underflow"),
            (b"\x80\x02NNa.", "not a list"),
            (b"\x80\x02h\x05.", "memo entry 5"),
            (b"\x80\x02X\xff\xff\xff\x00ab.", "truncated"),
            (b"\x80\x02\xffN.", "opcode 0xff"),
            (b"\x80\x02t.", "no MARK"),
            (b"\x80\x02}(K\x01u.", "odd number"),
            (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "UTF-8"),
        ];
        for (bytes, want) in cases {
            let e = run(bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn hostile_shapes_stay_cheap() {
        // A 1 MB string pushed 400k more times from the memo: shared, not copied (a copy
        // each time would need 400 GB).
        let mut b = vec![0x80, 0x02, b'X'];
        b.extend_from_slice(&(1u32 << 20).to_le_bytes());
        b.extend(std::iter::repeat_n(b'a', 1 << 20));
        b.extend_from_slice(b"q\x00");
        for _ in 0..400_000 {
            b.extend_from_slice(b"h\x00");
        }
        b.push(b'.');
        let (p, _) = run(&b).unwrap();
        assert!(matches!(p.root(), Value::Str(s) if s.len() == 1 << 20));

        // A million nested tuples: built and dropped without recursion.
        let mut b = vec![0x80, 0x02, b'N'];
        b.extend(std::iter::repeat_n(TUPLE1, 1_000_000));
        b.push(b'.');
        let (p, _) = run(&b).unwrap();
        assert_eq!(p.seqs.len(), 1_000_000);

        // An absurd storage key is refused.
        let mut b = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX".to_vec();
        b.extend_from_slice(&1000u32.to_le_bytes());
        b.extend(std::iter::repeat_n(b'7', 1000));
        b.extend_from_slice(b"X\x03\x00\x00\x00cpuK\x01tQ.");
        let e = run(&b).unwrap_err().to_string();
        assert!(e.contains("storage key of 1000 bytes"), "{e}");
    }

    #[test]
    fn random_bytes_never_panic() {
        // A tiny xorshift generator: deterministic, no dependency.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        // Opcodes worth hitting often, so random streams get past the first byte.
        let ops = b"()}]NKJMXqhrjtesuR\x85\x86\x87\x88\x89\x8a\x8c\x93\x94\x95Q.b0123a";
        let mut errors = 0;
        for case in 0..5000 {
            let len = (next() % 64) as usize;
            let mut bytes = vec![0x80, 0x02];
            for _ in 0..len {
                let r = next();
                bytes.push(if r % 3 == 0 {
                    (r >> 8) as u8
                } else {
                    ops[(r >> 8) as usize % ops.len()]
                });
            }
            if case % 2 == 0 {
                bytes.push(b'.');
            }
            if run(&bytes).is_err() {
                errors += 1;
            }
        }
        // Most random streams are invalid; all of them returned instead of panicking.
        assert!(errors > 2500, "{errors}");
    }
}
