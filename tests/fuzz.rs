//! Seeded mutation fuzzing of pmad's parsers, run as an ordinary test on stable Rust.
//!
//! For each target of `fuzz/targets.rs` this replays `fuzz/regressions/<target>/` and the
//! seed corpus `fuzz/corpus/<target>/`, then mutates the corpus for a fixed time budget:
//! bit flips, interesting bytes and integers, inserted/deleted/duplicated ranges,
//! truncation, splicing, plus format-aware mutations (JSON trees, the safetensors header,
//! zip entries of torch checkpoints, PNG chunks with their CRCs fixed). Every input runs
//! under `catch_unwind`; a panic is a failure, and the input is written to
//! `target/fuzz-crashes/<target>-<hash>.bin`.
//!
//! - `PMAD_FUZZ_SECS`: seconds per target (default 12);
//! - `PMAD_FUZZ_SEED`: the seed (default fixed, so a CI run is reproducible up to timing).
//!
//! Coverage-guided long runs use the same targets through cargo-fuzz; see `fuzz/README.md`.

#[path = "../fuzz/targets.rs"]
mod targets;

use serde_json::Value;
use std::io::{Cursor, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mutated inputs are capped at this size, so no single input can run for long.
const MAX_INPUT: usize = 64 << 10;
/// Stop a target after this many crashes (they are all reported).
const MAX_CRASHES: usize = 20;
const DEFAULT_SECS: f64 = 12.0;
const DEFAULT_SEED: u64 = 0x706d_6164_5f66_757a; // "pmad_fuz"

// ---------------------------------------------------------------------------------------------
// the four targets

#[test]
fn fuzz_safetensors() {
    fuzz("safetensors", targets::safetensors, Format::Safetensors);
    targets::remove_scratch_file();
}

#[test]
fn fuzz_torch() {
    fuzz("torch", targets::torch, Format::Torch);
}

#[test]
fn fuzz_model_dir() {
    fuzz("model_dir", targets::model_dir, Format::Json);
}

#[test]
fn fuzz_image() {
    fuzz("image", targets::image, Format::Image);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Torch,
    Json,
    Image,
}

// ---------------------------------------------------------------------------------------------
// driver

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted by name, without README files.
fn read_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("README"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a valid value")),
        Err(_) => default,
    }
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

fn crash_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; crashes go next to it.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("fuzz-crashes")
}

struct Stats {
    execs: u64,
    crashes: Vec<String>,
    slowest: Duration,
    slowest_len: usize,
}

impl Stats {
    /// Runs one input; a panic is recorded (and the input saved) instead of propagated.
    fn run(&mut self, name: &str, target: fn(&[u8]), input: &[u8], what: &str) {
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| target(input)));
        let dt = t0.elapsed();
        self.execs += 1;
        if dt > self.slowest {
            self.slowest = dt;
            self.slowest_len = input.len();
        }
        if let Err(payload) = result {
            let msg = panic_message(&*payload);
            let dir = crash_dir();
            let file = dir.join(format!("{name}-{:016x}.bin", fnv1a(input)));
            let saved = std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&file, input))
                .map(|_| file.display().to_string())
                .unwrap_or_else(|e| format!("<not saved: {e}>"));
            let line = format!(
                "fuzz {name}: PANIC on {what} ({} bytes): {msg}\n  input saved to {saved}",
                input.len()
            );
            eprintln!("{line}");
            self.crashes.push(line);
        }
    }
}

fn fuzz(name: &str, target: fn(&[u8]), format: Format) {
    let secs: f64 = env_or("PMAD_FUZZ_SECS", DEFAULT_SECS);
    let seed = match std::env::var("PMAD_FUZZ_SEED") {
        Ok(s) => parse_seed(&s).unwrap_or_else(|| panic!("PMAD_FUZZ_SEED={s:?} is not a u64")),
        Err(_) => DEFAULT_SEED,
    };
    let start = Instant::now();
    let mut stats = Stats {
        execs: 0,
        crashes: Vec::new(),
        slowest: Duration::ZERO,
        slowest_len: 0,
    };

    // Saved crash inputs first: each must now be handled without a panic.
    let regressions = read_files(&fuzz_dir().join("regressions").join(name));
    for (path, bytes) in &regressions {
        stats.run(
            name,
            target,
            bytes,
            &format!("regression {}", path.display()),
        );
    }

    let regressions_len = regressions.len();
    let corpus: Vec<Vec<u8>> = read_files(&fuzz_dir().join("corpus").join(name))
        .into_iter()
        .map(|(_, b)| b)
        .chain(regressions.into_iter().map(|(_, b)| b))
        .collect();
    assert!(
        corpus.len() > regressions_len,
        "fuzz/corpus/{name}/ is empty: the seed corpus is missing"
    );
    // The seeds (the regressions, also part of the mutation corpus, already ran).
    let n_seeds = corpus.len() - regressions_len;
    for (i, bytes) in corpus[..n_seeds].iter().enumerate() {
        stats.run(name, target, bytes, &format!("corpus file #{i}"));
    }

    let target_seed = seed ^ fnv1a(name.as_bytes());
    let mut rng = Rng::new(target_seed);
    let mut m = Mutator {
        rng: &mut rng,
        corpus: &corpus,
        format,
    };
    let budget = Duration::from_secs_f64(secs.max(0.0));
    let mut iteration: u64 = 0;
    let mut current: Vec<u8> = Vec::new();
    while start.elapsed() < budget && stats.crashes.len() < MAX_CRASHES {
        // Mostly restart from a corpus file; sometimes keep mutating the last input.
        if current.is_empty() || m.rng.chance(2, 3) {
            current = m.pick().to_vec();
        }
        let rounds = 1 + m.rng.below(4);
        for _ in 0..rounds {
            m.mutate(&mut current);
        }
        current.truncate(MAX_INPUT);
        stats.run(
            name,
            target,
            &current,
            &format!("iteration {iteration} (PMAD_FUZZ_SEED={seed:#x})"),
        );
        iteration += 1;
    }

    println!(
        "fuzz {name}: {} executions, {} crashes, {:.1} s (slowest input {:.1} ms, {} bytes; \
         seed {seed:#x})",
        stats.execs,
        stats.crashes.len(),
        start.elapsed().as_secs_f64(),
        stats.slowest.as_secs_f64() * 1e3,
        stats.slowest_len,
    );
    assert!(
        stats.crashes.is_empty(),
        "fuzz {name}: {} crash(es):\n{}",
        stats.crashes.len(),
        stats.crashes.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// randomness

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A length skewed towards small values.
    fn small_len(&mut self, max: usize) -> usize {
        let cap = match self.below(4) {
            0 => 4,
            1 => 16,
            2 => 256,
            _ => max,
        };
        1 + self.below(cap.min(max).max(1))
    }
}

// ---------------------------------------------------------------------------------------------
// mutations

const INTERESTING_8: &[u8] = &[0, 1, 2, 0x7f, 0x80, 0x81, 0xfe, 0xff, 16, 32, 64, 100];

/// Raw JSON number texts that stress numeric parsing and range checks.
const WEIRD_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "8",
    "64",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1e30",
    "-1e30",
    "1e38",
    "3.5e38",
    "1e308",
    "1e400",
    "-1e400",
    "1e-45",
    "1e-400",
    "0.5",
    "0.99",
    "1.0000001",
    "-0.0",
    "NaN",
    "Infinity",
    "-Infinity",
    "1.5",
    "1e",
    "0x10",
    "00",
    "1.",
];

const WEIRD_STRINGS: &[&str] = &[
    "",
    "F32",
    "F16",
    "BF16",
    "I64",
    "I32",
    "U8",
    "F64",
    "BOOL",
    "__metadata__",
    "distance",
    "flow",
    "flow-nll",
    "product",
    "entropy",
    "product-ce",
    "cross-entropy",
    "proposal",
    "random",
    "blockwise",
    "tiny",
    "small",
    "base",
    "blocks.4",
    "blocks.10",
    "blocks.99",
    "stem",
    "..",
    "../../etc/passwd",
    "a/b",
    "\u{0}",
    "\u{fffd}",
    "é",
];

/// Pickle opcodes (with no argument or a short one) to splice into torch inputs.
const PICKLE_TOKENS: &[&[u8]] = &[
    b"(",
    b".",
    b"0",
    b"1",
    b"2",
    b"N",
    b"\x88",
    b"\x89",
    b"}",
    b"]",
    b")",
    b"t",
    b"l",
    b"d",
    b"a",
    b"e",
    b"s",
    b"u",
    b"b",
    b"R",
    b"Q",
    b"\x81",
    b"\x85",
    b"\x86",
    b"\x87",
    b"\x93",
    b"\x94",
    b"h\x00",
    b"h\x01",
    b"q\x00",
    b"q\xff",
    b"j\xff\xff\xff\xff",
    b"r\xff\xff\xff\xff",
    b"K\x00",
    b"K\xff",
    b"M\xff\xff",
    b"J\xff\xff\xff\x7f",
    b"J\xff\xff\xff\xff",
    b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00",
    b"\x8b\xff\xff\xff\x7f",
    b"X\xff\xff\xff\xff",
    b"\x8c\x07storage",
    b"\x8c\x05torch\x8c\x0cFloatStorage\x93",
    b"\x8c\x05torch\x8c\x0bHalfStorage\x93",
    b"\x8c\x05torch\x8c\x0bLongStorage\x93",
    b"\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93",
    b"ccollections\nOrderedDict\n",
    b"ctorch\nSize\n",
    b"\x80\x02",
    b"\x80\x05",
    b"\x80\x06",
    b"\x95\x00\x00\x00\x00\x00\x00\x00\x00",
];

const IMAGE_TOKENS: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n",
    b"IHDR",
    b"IDAT",
    b"IEND",
    b"PLTE",
    b"tRNS",
    b"acTL",
    b"fcTL",
    b"\xff\xd8",
    b"\xff\xd9",
    b"\xff\xc0",
    b"\xff\xc2",
    b"\xff\xc4",
    b"\xff\xdb",
    b"\xff\xda",
    b"\xff\xdd\x00\x04\x00\x01",
    b"\xff\xe0",
    b"\xff\xee",
];

const JSON_TOKENS: &[&[u8]] = &[
    b"{", b"}", b"[", b"]", b",", b":", b"\"", b"null", b"true", b"-", b"1e999", b"\\u0000",
    b"\\ud800",
];

struct Mutator<'a> {
    rng: &'a mut Rng,
    corpus: &'a [Vec<u8>],
    format: Format,
}

impl Mutator<'_> {
    fn pick(&mut self) -> &[u8] {
        let i = self.rng.below(self.corpus.len());
        &self.corpus[i]
    }

    fn mutate(&mut self, data: &mut Vec<u8>) {
        let structured = match self.format {
            Format::Json => self.rng.chance(1, 2) && json_mutate(self.rng, data),
            Format::Safetensors => self.rng.chance(1, 2) && safetensors_mutate(self.rng, data),
            Format::Torch => self.rng.chance(1, 2) && zip_mutate(self.rng, data),
            Format::Image => self.rng.chance(1, 2) && png_mutate(self.rng, data),
        };
        if !structured {
            self.byte_mutate(data);
        }
    }

    fn tokens(&self) -> &'static [&'static [u8]] {
        match self.format {
            Format::Torch => PICKLE_TOKENS,
            Format::Image => IMAGE_TOKENS,
            Format::Json | Format::Safetensors => JSON_TOKENS,
        }
    }

    fn byte_mutate(&mut self, data: &mut Vec<u8>) {
        let tokens = self.tokens();
        let rng = &mut *self.rng;
        let len = data.len();
        match rng.below(12) {
            // Flip one bit.
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            // An interesting byte.
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = *rng.pick(INTERESTING_8);
            }
            // A small add/subtract.
            2 if len > 0 => {
                let i = rng.below(len);
                let d = 1 + rng.below(16) as u8;
                data[i] = if rng.chance(1, 2) {
                    data[i].wrapping_add(d)
                } else {
                    data[i].wrapping_sub(d)
                };
            }
            // An interesting 16/32/64-bit integer, either endianness.
            3 if len > 0 => {
                let width = *rng.pick(&[2usize, 4, 8]);
                let v = interesting_int(rng, len);
                let le = v.to_le_bytes();
                let be = v.to_be_bytes();
                let bytes = if rng.chance(1, 2) {
                    &le[..width]
                } else {
                    &be[8 - width..]
                };
                let i = rng.below(len);
                let n = width.min(len - i);
                data[i..i + n].copy_from_slice(&bytes[..n]);
            }
            // Insert random bytes or a run of one byte.
            4 => {
                let i = rng.below(len + 1);
                let n = rng.small_len(1024);
                let ins = if rng.chance(1, 2) {
                    rng.bytes(n)
                } else {
                    vec![*rng.pick(INTERESTING_8); n]
                };
                data.splice(i..i, ins);
            }
            // Delete a range.
            5 if len > 0 => {
                let i = rng.below(len);
                let n = rng.small_len(len - i);
                data.drain(i..i + n);
            }
            // Duplicate a range somewhere else.
            6 if len > 0 => {
                let i = rng.below(len);
                let n = rng.small_len(len - i);
                let copy = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            // Overwrite a range with another range of the input.
            7 if len > 1 => {
                let i = rng.below(len);
                let n = rng.small_len(len - i);
                let copy = data[i..i + n].to_vec();
                let at = rng.below(len);
                let n = n.min(len - at);
                data[at..at + n].copy_from_slice(&copy[..n]);
            }
            // Truncate.
            8 if len > 0 => {
                data.truncate(rng.below(len));
            }
            // Splice with another corpus file.
            9 => {
                let i = rng.below(self.corpus.len());
                let other = &self.corpus[i];
                let a = rng.below(data.len() + 1);
                let b = rng.below(other.len() + 1);
                data.truncate(a);
                data.extend_from_slice(&other[b..]);
            }
            // A format token.
            10 => {
                let tok = *rng.pick(tokens);
                let i = rng.below(len + 1);
                if rng.chance(1, 2) || i + tok.len() > len {
                    data.splice(i..i, tok.iter().copied());
                } else {
                    data[i..i + tok.len()].copy_from_slice(tok);
                }
            }
            // Several random bytes.
            _ => {
                for _ in 0..1 + rng.below(8) {
                    if data.is_empty() {
                        break;
                    }
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
            }
        }
    }
}

/// Integers near type limits, powers of two and lengths related to the input.
fn interesting_int(rng: &mut Rng, len: usize) -> u64 {
    let len = len as u64;
    match rng.below(6) {
        0 => *rng.pick(&[
            0,
            1,
            u64::MAX,
            i64::MAX as u64,
            1 << 63,
            u32::MAX as u64,
            i32::MAX as u64,
            1 << 31,
            u16::MAX as u64,
            0x7fff,
            0x8000,
        ]),
        1 => 1 << rng.below(64),
        2 => len.wrapping_add(rng.below(17) as u64).wrapping_sub(8),
        3 => (rng.below(65) as u64).wrapping_sub(32),
        4 => rng.next(),
        _ => rng.below(len as usize * 2 + 2) as u64,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON tree mutations (model.json, class.json, the safetensors header)

/// Marks a raw JSON text to substitute after serialising (serde_json cannot write NaN etc.).
const RAW_MARK: &str = "@@pmad-raw@@";

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `k`-th node in pre-order.
fn nth_mut<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut Value> {
    if *k == 0 {
        return Some(v);
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|x| nth_mut(x, k)),
        Value::Object(o) => o.values_mut().find_map(|x| nth_mut(x, k)),
        _ => None,
    }
}

fn random_leaf(rng: &mut Rng, raws: &mut Vec<String>, data_len: usize) -> Value {
    match rng.below(7) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => Value::String(rng.pick(WEIRD_STRINGS).to_string()),
        3 => Value::from(rng.below(data_len * 2 + 8) as u64),
        4 => Value::Array(Vec::new()),
        5 => Value::Object(Default::default()),
        _ => raw(raws, rng.pick(WEIRD_NUMBERS).to_string()),
    }
}

fn raw(raws: &mut Vec<String>, text: String) -> Value {
    raws.push(text);
    Value::String(format!("{RAW_MARK}{}", raws.len() - 1))
}

/// One random change to a JSON tree; `data_len` scales the random integers (offsets).
fn mutate_tree(rng: &mut Rng, root: &mut Value, raws: &mut Vec<String>, data_len: usize) {
    let mut k = rng.below(count_nodes(root));
    let Some(node) = nth_mut(root, &mut k) else {
        return;
    };
    match node {
        Value::Object(o) if !o.is_empty() && rng.chance(2, 3) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            match rng.below(4) {
                0 => {
                    o.remove(&key);
                }
                1 => {
                    // Rename a key (a misspelt or unknown field).
                    if let Some(v) = o.remove(&key) {
                        let new = format!("{key}{}", rng.pick(&["_", "x", "s", ""]));
                        o.insert(new, v);
                    }
                }
                2 => {
                    let new = rng.pick(WEIRD_STRINGS).to_string();
                    let v = random_leaf(rng, raws, data_len);
                    o.insert(new, v);
                }
                _ => {
                    // Copy one field's value into another.
                    let other = rng.pick(&keys).clone();
                    if let Some(v) = o.get(&other).cloned() {
                        o.insert(key, v);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() && rng.chance(2, 3) => {
            let i = rng.below(a.len());
            match rng.below(5) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let v = a[i].clone();
                    for _ in 0..1 + rng.below(3) {
                        a.insert(i, v.clone());
                    }
                }
                2 => a.clear(),
                3 => {
                    let v = random_leaf(rng, raws, data_len);
                    a.push(v);
                }
                _ => {
                    let j = rng.below(a.len());
                    a.swap(i, j);
                }
            }
        }
        Value::Number(n) if rng.chance(3, 4) => {
            *node = match rng.below(4) {
                0 => raw(raws, rng.pick(WEIRD_NUMBERS).to_string()),
                1 => Value::from(interesting_int(rng, data_len)),
                2 => {
                    // Near the current value.
                    let x = n.as_i64().unwrap_or(0);
                    Value::from(x.wrapping_add(rng.below(9) as i64 - 4))
                }
                _ => Value::String(n.to_string()),
            };
        }
        Value::String(s) if !s.starts_with(RAW_MARK) && rng.chance(3, 4) => {
            *node = match rng.below(4) {
                0 => Value::String(rng.pick(WEIRD_STRINGS).to_string()),
                1 => raw(raws, rng.pick(WEIRD_NUMBERS).to_string()),
                2 => Value::String(s.repeat(1 + rng.below(64))),
                _ => {
                    let keep = rng.below(s.chars().count() + 1);
                    Value::String(s.chars().take(keep).collect())
                }
            };
        }
        _ => {
            *node = match rng.below(4) {
                0 => Value::Array(vec![node.clone()]),
                1 => {
                    // Deep nesting.
                    let mut v = node.clone();
                    for _ in 0..rng.below(200) {
                        v = Value::Array(vec![v]);
                    }
                    v
                }
                _ => random_leaf(rng, raws, data_len),
            };
        }
    }
}

fn serialise(root: &Value, raws: &[String], pretty: bool) -> Vec<u8> {
    let mut text = if pretty {
        serde_json::to_string_pretty(root)
    } else {
        serde_json::to_string(root)
    }
    .unwrap_or_default();
    for (i, r) in raws.iter().enumerate().rev() {
        text = text.replace(&format!("\"{RAW_MARK}{i}\""), r);
    }
    text.into_bytes()
}

/// Mutates `data` as a JSON document; false if it does not parse as one.
fn json_mutate(rng: &mut Rng, data: &mut Vec<u8>) -> bool {
    // A model_dir input may start with its selector byte.
    let (prefix, body) = match data.first() {
        Some(b'{') | Some(b'[') | None => (None, &data[..]),
        Some(&b) => (Some(b), &data[1..]),
    };
    let Ok(mut root) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let mut raws = Vec::new();
    for _ in 0..1 + rng.below(3) {
        mutate_tree(rng, &mut root, &mut raws, 1024);
    }
    let mut out = serialise(&root, &raws, rng.chance(1, 2));
    if let Some(b) = prefix {
        out.insert(0, b);
    } else if rng.chance(1, 8) {
        out.insert(0, rng.next() as u8);
    }
    *data = out;
    true
}

/// Mutates the JSON header of a safetensors file (and usually fixes its length field), or its
/// data section; false if the input has no parsable header.
fn safetensors_mutate(rng: &mut Rng, data: &mut Vec<u8>) -> bool {
    let Some(len8) = data.get(..8) else {
        return false;
    };
    let n = u64::from_le_bytes(len8.try_into().unwrap_or([0; 8])) as usize;
    if n > data.len() - 8 {
        return false;
    }
    let Ok(mut root) = serde_json::from_slice::<Value>(&data[8..8 + n]) else {
        return false;
    };
    let tail = data[8 + n..].to_vec();
    let mut tail_len = tail.len();
    let mut raws = Vec::new();
    match rng.below(6) {
        // Grow or shrink the data section.
        0 => tail_len = rng.below(tail.len() * 2 + 16),
        _ => {
            for _ in 0..1 + rng.below(3) {
                mutate_tree(rng, &mut root, &mut raws, tail.len());
            }
        }
    }
    let mut header = serialise(&root, &raws, false);
    if rng.chance(1, 3) {
        // Pad like the writer does, so the data section stays aligned.
        while !(8 + header.len()).is_multiple_of(64) {
            header.push(b' ');
        }
    }
    let len = if rng.chance(7, 8) {
        header.len() as u64
    } else {
        interesting_int(rng, header.len())
    };
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    let mut tail = tail;
    tail.resize(tail_len, 0x3f);
    out.extend_from_slice(&tail);
    *data = out;
    true
}

// ---------------------------------------------------------------------------------------------
// zip-aware mutations (torch checkpoints): entries are rewritten so their CRCs stay valid

fn zip_mutate(rng: &mut Rng, data: &mut Vec<u8>) -> bool {
    if !data.starts_with(b"PK\x03\x04") {
        return false;
    }
    let Ok(mut archive) = zip::ZipArchive::new(Cursor::new(&data[..])) else {
        return false;
    };
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..archive.len() {
        let Ok(mut e) = archive.by_index(i) else {
            return false;
        };
        let name = e.name().to_string();
        let mut bytes = Vec::new();
        if e.size() > MAX_INPUT as u64 || e.read_to_end(&mut bytes).is_err() {
            return false;
        }
        entries.push((name, bytes));
    }
    if entries.is_empty() {
        return false;
    }
    let pkl = entries
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .unwrap_or(0);
    let i = if rng.chance(2, 3) {
        pkl
    } else {
        rng.below(entries.len())
    };
    match rng.below(8) {
        // Mutate an entry's bytes (mostly the pickle) with the byte mutations.
        0..=3 => {
            let e = &mut entries[i].1;
            for _ in 0..1 + rng.below(3) {
                // Splicing reads the corpus: let it splice the entry with itself.
                let corpus = [e.clone()];
                Mutator {
                    rng: &mut *rng,
                    corpus: &corpus,
                    format: Format::Torch,
                }
                .byte_mutate(e);
            }
        }
        // Resize a storage entry.
        4 => {
            let n = entries[i].1.len();
            let new = match rng.below(3) {
                0 => n.saturating_sub(1 + rng.below(8)),
                1 => n + 1 + rng.below(8),
                _ => rng.below(n * 2 + 8),
            };
            entries[i].1.resize(new, 0x41);
        }
        // Remove an entry.
        5 => {
            entries.remove(i);
        }
        // Rename an entry.
        6 => {
            let name = &mut entries[i].0;
            *name = match rng.below(4) {
                0 => format!("{name}x"),
                1 => name.replace("archive/", ""),
                2 => format!("other/{name}"),
                _ => name[..name.len() / 2].to_string(),
            };
        }
        // Duplicate an entry under a new name.
        _ => {
            let (name, bytes) = entries[i].clone();
            entries.push((format!("{name}.{}", rng.below(10)), bytes));
        }
    }
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let method = if rng.chance(1, 4) {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in &entries {
        if w.start_file(name.as_str(), options).is_err() || w.write_all(bytes).is_err() {
            return false;
        }
    }
    match w.finish() {
        Ok(c) => {
            *data = c.into_inner();
            true
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// PNG-aware mutations: chunks are edited and their CRCs recomputed, or a PNG is synthesised

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for part in parts {
        for &b in *part {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        out.push(if chunks.peek().is_none() { 1 } else { 0 });
        let n = c.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn png_chunks(data: &[u8]) -> Option<Vec<([u8; 4], Vec<u8>)>> {
    let mut rest = data.strip_prefix(PNG_SIGNATURE)?;
    let mut chunks = Vec::new();
    while rest.len() >= 12 {
        let n = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        if n > rest.len() - 12 {
            return None;
        }
        let kind: [u8; 4] = rest[4..8].try_into().ok()?;
        chunks.push((kind, rest[8..8 + n].to_vec()));
        rest = &rest[12 + n..];
    }
    Some(chunks)
}

fn png_bytes(chunks: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = PNG_SIGNATURE.to_vec();
    for (kind, data) in chunks {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
    }
    out
}

/// A PNG with random header fields and stored-deflate pixel data of about the right size.
fn png_synth(rng: &mut Rng) -> Vec<u8> {
    let (color, depths): (u8, &[u8]) = *rng.pick(&[
        (0u8, &[1u8, 2, 4, 8, 16][..]),
        (2, &[8, 16]),
        (3, &[1, 2, 4, 8]),
        (4, &[8, 16]),
        (6, &[8, 16]),
    ]);
    let depth = if rng.chance(1, 16) {
        rng.next() as u8
    } else {
        *rng.pick(depths)
    };
    let color = if rng.chance(1, 16) {
        rng.next() as u8
    } else {
        color
    };
    let dim = |rng: &mut Rng| -> u32 {
        match rng.below(8) {
            0 => *rng.pick(&[0u32, 1 << 16, 1 << 24, 0x7fff_ffff, u32::MAX, 100_000]),
            1 => 1 + rng.below(300) as u32,
            _ => 1 + rng.below(24) as u32,
        }
    };
    let (w, h) = (dim(rng), dim(rng));
    let interlace = if rng.chance(1, 4) { 1 } else { 0 };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, interlace]);
    let mut chunks = vec![(*b"IHDR", ihdr)];
    if color == 3 || rng.chance(1, 8) {
        let n = if rng.chance(7, 8) {
            1 + rng.below(256)
        } else {
            rng.below(300)
        };
        chunks.push((*b"PLTE", rng.bytes(n * 3)));
    }
    if rng.chance(1, 4) {
        let n = rng.below(10);
        chunks.push((*b"tRNS", rng.bytes(n)));
    }
    let channels = match color {
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 1,
    };
    let row = (w as usize)
        .min(4096)
        .saturating_mul(channels * depth.max(1) as usize)
        .div_ceil(8)
        + 1;
    let rows = (h as usize).min(4096);
    let mut size = row.saturating_mul(rows).min(48 << 10);
    if rng.chance(1, 4) {
        size = rng.below(size + 16);
    }
    let mut raw = rng.bytes(size);
    if rng.chance(3, 4) {
        // Valid filter bytes at the start of each row.
        for r in (0..raw.len()).step_by(row.max(1)) {
            raw[r] %= 5;
        }
    }
    let z = zlib_stored(&raw);
    if rng.chance(1, 3) {
        let cut = rng.below(z.len()) + 1;
        let (a, b) = z.split_at(cut);
        chunks.push((*b"IDAT", a.to_vec()));
        chunks.push((*b"IDAT", b.to_vec()));
    } else {
        chunks.push((*b"IDAT", z));
    }
    chunks.push((*b"IEND", Vec::new()));
    png_bytes(&chunks)
}

fn png_mutate(rng: &mut Rng, data: &mut Vec<u8>) -> bool {
    if rng.chance(1, 4) {
        *data = png_synth(rng);
        return true;
    }
    let Some(mut chunks) = png_chunks(data) else {
        return false;
    };
    if chunks.is_empty() {
        return false;
    }
    let i = rng.below(chunks.len());
    match rng.below(6) {
        // A header field.
        0 => {
            if let Some((_, ihdr)) = chunks.iter_mut().find(|(k, _)| k == b"IHDR")
                && ihdr.len() >= 13
            {
                match rng.below(4) {
                    0 => {
                        let v = *rng.pick(&[0u32, 1, 2, 7, 8, 255, 256, 65535, 1 << 16, u32::MAX]);
                        let at = 4 * rng.below(2);
                        ihdr[at..at + 4].copy_from_slice(&v.to_be_bytes());
                    }
                    1 => ihdr[8] = *rng.pick(&[0u8, 1, 2, 3, 4, 8, 16, 32]),
                    2 => ihdr[9] = *rng.pick(&[0u8, 1, 2, 3, 4, 5, 6, 7]),
                    _ => ihdr[10 + rng.below(3)] = *rng.pick(&[0u8, 1, 2, 0xff]),
                }
            }
        }
        // Bytes of a chunk's data (the CRC is fixed afterwards).
        1 | 2 => {
            let d = &mut chunks[i].1;
            if !d.is_empty() {
                for _ in 0..1 + rng.below(4) {
                    let j = rng.below(d.len());
                    d[j] = if rng.chance(1, 2) {
                        rng.next() as u8
                    } else {
                        *rng.pick(INTERESTING_8)
                    };
                }
            } else {
                let n = rng.small_len(64);
                d.extend(rng.bytes(n));
            }
        }
        3 => {
            chunks.remove(i);
        }
        4 => {
            let c = chunks[i].clone();
            chunks.insert(rng.below(chunks.len() + 1), c);
        }
        _ => {
            let j = rng.below(chunks.len());
            chunks.swap(i, j);
        }
    }
    *data = png_bytes(&chunks);
    true
}

// ---------------------------------------------------------------------------------------------
// the harness's own checks

#[test]
fn mutators_keep_structure() {
    let mut rng = Rng::new(1);
    // The stored zlib stream and CRC helpers produce a PNG the decoder accepts.
    let mut px = Vec::new();
    for _ in 0..2 {
        px.extend_from_slice(&[0, 1, 2]); // filter 0, two gray pixels
    }
    let mut ihdr = 2u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&2u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let png = png_bytes(&[
        (*b"IHDR", ihdr),
        (*b"IDAT", zlib_stored(&px)),
        (*b"IEND", vec![]),
    ]);
    let img = pmad::data::image::decode_rgb(&png, Path::new("t.png")).expect("valid png");
    assert_eq!((img.width, img.height), (2, 2));
    assert_eq!(png_chunks(&png).map(|c| c.len()), Some(3));

    // JSON mutations yield text (raw numbers substituted, no marker left behind).
    let mut doc = br#"{"a":1,"b":[1,2,{"c":"x"}],"d":0.5}"#.to_vec();
    for _ in 0..200 {
        if !json_mutate(&mut rng, &mut doc) {
            doc = br#"{"a":1}"#.to_vec();
        }
        assert!(!String::from_utf8_lossy(&doc).contains(RAW_MARK));
    }
    for _ in 0..200 {
        let mut x = vec![0u8; 8];
        Mutator {
            rng: &mut rng,
            corpus: &[vec![1, 2, 3]],
            format: Format::Torch,
        }
        .byte_mutate(&mut x);
    }
}

// ---------------------------------------------------------------------------------------------
// the seed corpus

/// Rewrites `fuzz/corpus/` (run by hand: `cargo test --release --test fuzz --
/// --ignored regenerate_seed_corpus`). Every seed is checked to parse.
#[test]
#[ignore]
fn regenerate_seed_corpus() {
    use pmad::Tensor;
    use pmad::detector::model_dir::{ModelConfig, parse_class_info, parse_config};
    use std::collections::BTreeMap;

    let root = fuzz_dir().join("corpus");
    let dir = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // safetensors: every dtype, metadata, scalar and empty shapes, an unaligned data section.
    let d = dir("safetensors");
    let f32s = |v: &[f32], s: &[usize]| Tensor::new(v.to_vec(), s).unwrap();
    let half: Vec<half::f16> = [1.0f32, -2.5, 65504.0, 1e-7]
        .iter()
        .map(|&x| half::f16::from_f32(x))
        .collect();
    let bhalf: Vec<half::bf16> = [1.0f32, -3.0, 1e30, 0.0]
        .iter()
        .map(|&x| half::bf16::from_f32(x))
        .collect();
    let i64s: Vec<u8> = [1i64, -1, i64::MAX]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i32s: Vec<u8> = [7i32, -7].iter().flat_map(|x| x.to_le_bytes()).collect();
    let all = vec![
        (
            "w.f32",
            f32s(&[0.0, 1.0, -1.0, 2.5, f32::MAX, 1e-30], &[2, 3]),
        ),
        ("w.f16", Tensor::from_f16(half, &[4]).unwrap()),
        ("w.bf16", Tensor::from_bf16(bhalf, &[2, 2]).unwrap()),
        (
            "ids.i64",
            Tensor::from_bytes(i64s, pmad::DType::I64, &[3]).unwrap(),
        ),
        (
            "n.i32",
            Tensor::from_bytes(i32s, pmad::DType::I32, &[2]).unwrap(),
        ),
        (
            "mask.u8",
            Tensor::from_bytes(vec![0, 1, 2, 3, 255], pmad::DType::U8, &[5]).unwrap(),
        ),
    ];
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("source".to_string(), "seed".to_string());
    pmad::weights::write_safetensors(d.join("all_dtypes.safetensors"), all, Some(&meta)).unwrap();
    let shapes = vec![
        ("scalar", f32s(&[3.0], &[])),
        ("empty", f32s(&[], &[0, 3])),
        ("row", f32s(&[1.0, 2.0], &[1, 2])),
    ];
    pmad::weights::write_safetensors(d.join("shapes.safetensors"), shapes, None).unwrap();
    pmad::weights::write_safetensors(
        d.join("metadata_only.safetensors"),
        Vec::<(&str, Tensor)>::new(),
        Some(&meta),
    )
    .unwrap();
    // By hand: no padding, so the F32 data starts at an odd offset.
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[8,10]}}"#;
    let mut raw = (header.len() as u64).to_le_bytes().to_vec();
    raw.extend_from_slice(header.as_bytes());
    raw.extend_from_slice(&1.5f32.to_le_bytes());
    raw.extend_from_slice(&(-2.0f32).to_le_bytes());
    raw.extend_from_slice(&half::bf16::from_f32(0.5).to_le_bytes());
    std::fs::write(d.join("unaligned.safetensors"), raw).unwrap();
    for (path, _) in read_files(&d) {
        pmad::weights::SafeTensors::open(&path)
            .unwrap_or_else(|e| panic!("seed {}: {e}", path.display()));
    }

    // torch: the tiny real checkpoints of the torch import tests.
    let d = dir("torch");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for (path, bytes) in read_files(&src) {
        if path.extension().is_some_and(|e| e == "pt") {
            pmad::weights::load_torch_checkpoint_bytes(&bytes, &path).unwrap();
            std::fs::write(d.join(path.file_name().unwrap()), bytes).unwrap();
        }
    }

    // model_dir: model.json (default, with a flow, with the reconstruction stage), class.json.
    let d = dir("model_dir");
    let config = ModelConfig::default();
    let (_, dim) = config.features.geometry().unwrap();
    let base = serde_json::to_value(&config).unwrap();
    let mut with_flow = base.clone();
    with_flow["flow"] = serde_json::to_value(pmad::detector::flow::FlowConfig::new(dim)).unwrap();
    with_flow["score"] = "flow-nll".into();
    let mut with_recon = base.clone();
    with_recon["score"] = "product".into();
    with_recon["recon"] = serde_json::json!({
        "preset": "tiny",
        "vit": pmad::recon::vit::VitConfig::preset("tiny", 64).unwrap(),
        "vocab": 64,
        "mask_ratio": 0.25,
        "tokens": "codebook",
        "trained_on": ["bottle", "screw"],
    });
    let class = serde_json::json!({
        "name": "bottle",
        "n_train_images": 20,
        "n_prototypes": 150,
        "thresholds": {"distance": 3.25, "product": 0.5},
        "normal_scores": {"distance": [1.0, 2.0, 3.5], "product": [0.1, 0.2]},
        "flow_ref_ll": null,
    });
    let class_flow = serde_json::json!({
        "name": "screw_2",
        "n_train_images": 3,
        "n_prototypes": 1,
        "thresholds": {"flow-nll": -1.5, "flow": 0.01, "distance": 0.0},
        "normal_scores": {"flow-nll": [-2.0, -1.75]},
        "flow_ref_ll": -0.5,
        "mask_ratio": 0.1,
    });
    let text = |v: &Value| serde_json::to_vec_pretty(v).unwrap();
    for (name, v) in [
        ("model_default.json", &base),
        ("model_flow.json", &with_flow),
        ("model_recon.json", &with_recon),
    ] {
        parse_config(&text(v), Path::new(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(d.join(name), text(v)).unwrap();
    }
    for (name, v) in [("class.json", &class), ("class_flow.json", &class_flow)] {
        parse_class_info(&text(v), Path::new(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(d.join(name), text(v)).unwrap();
    }
    // With the selector byte of `targets::model_dir` (0: model.json, 1: class.json).
    let mut sel = vec![0u8];
    sel.extend(serde_json::to_vec(&base).unwrap());
    std::fs::write(d.join("selector_model.bin"), sel).unwrap();
    let mut sel = vec![1u8];
    sel.extend(serde_json::to_vec(&class).unwrap());
    std::fs::write(d.join("selector_class.bin"), sel).unwrap();

    // image: PNGs of every colour type and depth, palette and interlaced by hand, JPEGs.
    let d = dir("image");
    let enc = |img: image::DynamicImage, format: image::ImageFormat| {
        let mut c = Cursor::new(Vec::new());
        img.write_to(&mut c, format).unwrap();
        c.into_inner()
    };
    let png = image::ImageFormat::Png;
    let gray = image::GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 40 + y * 7) as u8]));
    let rgb = image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 60, y as u8 * 60, 9]));
    let rgba = image::RgbaImage::from_fn(3, 5, |x, y| image::Rgba([x as u8, y as u8, 200, 128]));
    let graya = image::GrayAlphaImage::from_fn(2, 3, |x, _| image::LumaA([x as u8 * 99, 7]));
    let gray16 = image::ImageBuffer::from_fn(4, 4, |x, y| image::Luma([(x * 9000 + y) as u16]));
    let rgba16 = image::ImageBuffer::from_fn(2, 2, |x, y| {
        image::Rgba([x as u16 * 30000, y as u16, 65535, 1])
    });
    let files = [
        ("gray8.png", enc(gray.clone().into(), png)),
        ("rgb8.png", enc(rgb.clone().into(), png)),
        ("rgba8.png", enc(rgba.into(), png)),
        ("graya8.png", enc(graya.into(), png)),
        (
            "gray16.png",
            enc(image::DynamicImage::ImageLuma16(gray16), png),
        ),
        (
            "rgba16.png",
            enc(image::DynamicImage::ImageRgba16(rgba16), png),
        ),
        ("rgb8.jpg", enc(rgb.into(), image::ImageFormat::Jpeg)),
        ("gray8.jpg", enc(gray.into(), image::ImageFormat::Jpeg)),
    ];
    for (name, bytes) in files {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    let ihdr = |w: u32, h: u32, depth: u8, color: u8, interlace: u8| {
        let mut v = w.to_be_bytes().to_vec();
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[depth, color, 0, 0, interlace]);
        v
    };
    // 4x4, 2-bit palette of 4 colours, with tRNS.
    let rows: Vec<u8> = (0..4u8).flat_map(|y| [0, 0b00_01_10_11 ^ y]).collect();
    let palette = png_bytes(&[
        (*b"IHDR", ihdr(4, 4, 2, 3, 0)),
        (*b"PLTE", vec![0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]),
        (*b"tRNS", vec![255, 128]),
        (*b"IDAT", zlib_stored(&rows)),
        (*b"IEND", vec![]),
    ]);
    std::fs::write(d.join("palette2.png"), palette).unwrap();
    // 1x1 Adam7-interlaced gray (only the first pass has a pixel).
    let interlaced = png_bytes(&[
        (*b"IHDR", ihdr(1, 1, 8, 0, 1)),
        (*b"IDAT", zlib_stored(&[0, 0x80])),
        (*b"IEND", vec![]),
    ]);
    std::fs::write(d.join("interlaced1x1.png"), interlaced).unwrap();
    for (path, bytes) in read_files(&d) {
        pmad::data::image::decode_rgb(&bytes, &path)
            .unwrap_or_else(|e| panic!("seed {}: {e}", path.display()));
    }
}
