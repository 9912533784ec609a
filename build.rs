//! Build script: turns `kernels/*.cu` into portable PTX for the `cuda` feature.
//!
//! * Feature off (`CARGO_FEATURE_CUDA` unset): prints `rerun-if-changed` lines and returns. It
//!   needs nothing and costs nothing.
//! * Feature on: every `kernels/*.cu` is compiled to PTX for the lowest compute capability it
//!   needs ([`BASE_ARCH`], `compute_75`, unless the file asks for more: see "Variants"), its
//!   `.version` is set to PTX ISA [`PTX_ISA`] (see "PTX ISA"), and the PTX is assembled by
//!   `ptxas -v` for every real arch of [`CHECK_ARCHS`] (sm_75, sm_80, sm_86, sm_89, sm_90) to
//!   catch everything the PTX front end lets through and to read registers / shared memory /
//!   spills per arch. Any compile or assembly error fails the build with the full log.
//!   Results: `$OUT_DIR/<name>.cc<XX>.ptx`, `$OUT_DIR/kernels.rs` (per file a
//!   `pub const <NAME>_PTX: &[(u32, &str)]` of (capability, PTX) variants, `include_str!`-ed
//!   into `src/cuda/mod.rs`), `$OUT_DIR/ptxas_report.txt` and a copy as
//!   `kernels/PTXAS_REPORT.md` (so the table in the repository is always the last build's).
//!
//! Why compute_75: the kernels use nothing newer than sm_35 features (`shfl.sync`, 64-bit
//! `atom.min`, `cvt.f32.f16`; bf16 banks are decoded with integer shifts), so the floor is set
//! by the toolchains, not the kernels: sm_75 (Turing: T4, RTX 20xx) is the oldest architecture
//! that CUDA 13 still compiles for and that current drivers keep supporting. The driver JITs
//! compute_75 PTX for every newer GPU (A100, A10, L4, RTX 30xx/40xx, Jetson Orin, H100/H200, ...).
//!
//! PTX ISA: a driver JITs PTX only up to the ISA of the CUDA version it ships with (minor
//! version compatibility does not cover PTX). NVRTC 12.9 writes `.version 8.8`, which only
//! R575+ drivers (mid-2025) accept. PTX ISA 8.0 is CUDA 12.0's: every CUDA 12 and 13 driver,
//! R525 (late 2022) onwards — so every driver released in the last two years, including the
//! R535 long-term branch still common on production lines — JITs it, and the rest of the stack
//! (cudarc's CUDA 12 driver API, cuBLAS 12) needs a CUDA 12 driver anyway, so an older ISA
//! would widen nothing. The rewrite is checked, not trusted: ptxas rejects any instruction or
//! directive the declared ISA lacks ("Feature X requires PTX ISA .version Y"), so a kernel that
//! starts to need a newer ISA fails the build. One hint NVRTC 12.x emits is dropped first:
//! `.pragma "used_bytes_mask N";` (ISA 8.3) only lets ptxas narrow a vector load whose bytes are
//! partly unused; without it the load reads all its bytes, exactly as the instruction says.
//!
//! Variants: a file whose kernels need a newer architecture (bf16 `mma` needs sm_80, `wgmma`
//! sm_90) declares it on a line of its own, `// pmad-arch: 80` — or several capabilities,
//! `// pmad-arch: 80 90`, for per-capability versions of the same entry points. Each becomes a
//! PTX variant for `compute_<XX>`, ptxas-checked on every arch of [`CHECK_ARCHS`] at or above
//! it; at run time `src/cuda/device.rs` loads the highest variant the GPU supports and names
//! the module and the capability it needs when there is none. All variants of a file must
//! export the same entry points.
//!
//! Finding the compiler (first hit wins):
//! 1. `nvcc` on `PATH` (`nvcc --ptx -arch=compute_<XX>`);
//! 2. otherwise NVRTC, loaded in-process with `dlopen` (glibc's, already linked into every Rust
//!    program on Linux: no C compiler, no build-dependency): `$PMAD_NVRTC_LIB`, then
//!    `$PMAD_CUDA_TOOLCHAIN` or `<repo>/.cuda-toolchain` (made by `scripts/cuda_toolchain.sh`)
//!    `/nvidia/cuda_nvrtc/lib/libnvrtc.so.12`, then the same path under python3's
//!    site-packages, then `/usr/local/cuda/lib64`.
//!
//! `ptxas`: `$PMAD_PTXAS`, next to `nvcc`, on `PATH`, then the same wheel/site-packages places
//! (`nvidia/cuda_nvcc/bin/ptxas`), then `/usr/local/cuda/bin`. Extra include folders:
//! `$PMAD_CUDA_INCLUDE` (`:`-separated) plus the runtime/CCCL wheel headers when present (the
//! kernels themselves need none).
//!
//! With the feature on and no toolchain the build fails with a message to run
//! `bash scripts/cuda_toolchain.sh`: asking for the CUDA backend and silently getting a binary
//! whose kernels were never compiled would move compile errors to the (scarce) GPU machine.
//! `PMAD_ALLOW_SPILLS=1` turns the no-spill rule for attention/proto_nn into a warning.
//!
//! Emulated device (feature `cuda-emu`, which implies `cuda`): additionally, the same
//! `kernels/*.cu` are compiled as host C++ against `kernels/emu/cuda_emu.h` into a static
//! library, `libpmad_emu.a`, linked into pmad: `kernels/emu/gen_launch.py` (python3) writes the
//! host copies and the by-name launch table, `g++ -std=c++20` (`$CXX` overrides) compiles them
//! and `ar` archives them. It needs python3, a C++20 compiler and libstdc++, and is what CI
//! builds to execute the CUDA backend's host code without a GPU (`src/cuda/launch.rs`).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The compute capability (×10) every kernel file is compiled for unless it declares more.
const BASE_ARCH: u32 = 75;
/// Real architectures every PTX variant is assembled for by `ptxas -v` (those at or above the
/// variant's capability): Turing, Ampere datacenter, Ampere consumer/A10, Ada (L4, RTX 40xx),
/// Hopper.
const CHECK_ARCHS: &[u32] = &[75, 80, 86, 89, 90];
/// The PTX ISA written into every module (`.version`), see the module doc.
const PTX_ISA: (u32, u32) = (8, 0);
/// The CUDA version whose drivers first JIT [`PTX_ISA`], in `cuDriverGetVersion`'s encoding
/// (1000 * major + 10 * minor).
const PTX_ISA_MIN_DRIVER: u32 = 12000;
/// Kernel files whose code must not spill registers on any checked arch.
const NO_SPILL: &[&str] = &["attention", "attention_tc", "proto_nn"];
/// The line that declares a file's PTX variants.
const ARCH_DIRECTIVE: &str = "// pmad-arch:";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let kdir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    // The whole folder, so that a new .cu is noticed. The report written into it gets the
    // inputs' mtime (see `write_if_changed`), so it does not retrigger this script.
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "PMAD_NVRTC_LIB",
        "PMAD_PTXAS",
        "PMAD_CUDA_INCLUDE",
        "PMAD_CUDA_TOOLCHAIN",
        "PMAD_ALLOW_SPILLS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    if let Err(msg) = build_kernels(&manifest, &kdir, &out_dir) {
        panic!("\n\n===== pmad build.rs (feature `cuda`) =====\n{msg}\n");
    }
    if env::var_os("CARGO_FEATURE_CUDA_EMU").is_some() {
        println!("cargo:rerun-if-env-changed=CXX");
        if let Err(msg) = build_emulator(&kdir, &out_dir.join("emu")) {
            panic!("\n\n===== pmad build.rs (feature `cuda-emu`) =====\n{msg}\n");
        }
    }
}

/// Runs `cmd`, or returns its exit status and output as an error.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `libpmad_emu.a` in `out`: every kernel as host C++ behind `pmad_emu_launch` (see the
/// module doc), linked with libstdc++.
fn build_emulator(kdir: &Path, out: &Path) -> Result<(), String> {
    let emu = kdir.join("emu");
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    run(Command::new("python3")
        .arg(emu.join("gen_launch.py"))
        .arg(kdir)
        .arg(out))?;
    let cxx = env::var("CXX").unwrap_or_else(|_| "g++".into());
    let obj = out.join("launch.o");
    run(Command::new(&cxx)
        // _FORTIFY_SOURCE off: the fibers of cuda_emu.h longjmp between stacks.
        .args([
            "-std=c++20",
            "-O2",
            "-U_FORTIFY_SOURCE",
            "-fPIC",
            "-pthread",
            "-w",
            "-c",
        ])
        .arg(format!("-I{}", emu.display()))
        .arg(format!("-I{}", out.display()))
        .arg(out.join("launch.cpp"))
        .arg("-o")
        .arg(&obj))?;
    let lib = out.join("libpmad_emu.a");
    // A stale archive would keep removed members.
    let _ = fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).arg(&obj))?;
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=pmad_emu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    Ok(())
}

// ------------------------------------------------------------------------------- driver

/// One kernel file: its PTX variants, lowest capability first.
struct Compiled {
    stem: String,
    variants: Vec<Variant>,
}

/// The PTX of one file for one virtual arch, with ptxas' findings per real arch.
struct Variant {
    arch: u32,
    ptx_path: PathBuf,
    checks: Vec<ArchCheck>,
}

/// `ptxas -arch=sm_<arch> -v` on one variant.
struct ArchCheck {
    arch: u32,
    entries: Vec<Entry>,
    warnings: Vec<String>,
}

#[derive(Default, Clone)]
struct Entry {
    name: String,
    registers: u32,
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

fn build_kernels(manifest: &Path, kdir: &Path, out_dir: &Path) -> Result<(), String> {
    let mut sources: Vec<PathBuf> = fs::read_dir(kdir)
        .map_err(|e| format!("cannot read {}: {e}", kdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(format!("no .cu files in {}", kdir.display()));
    }
    let tc = Toolchain::find(manifest)?;
    let mut includes = vec![kdir.to_path_buf()];
    includes.extend(tc.includes.iter().cloned());

    // Compile and assemble all files in parallel (NVRTC programs are independent).
    let results: Vec<Result<Compiled, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let tc = &tc;
                let includes = &includes;
                s.spawn(move || compile_file(tc, src, includes, out_dir))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("compile thread panicked".into()))
            })
            .collect()
    });
    let mut compiled = Vec::new();
    let mut errors = String::new();
    for r in results {
        match r {
            Ok(c) => compiled.push(c),
            Err(e) => errors.push_str(&e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Report.
    let report = render_report(&tc, &compiled);
    fs::write(out_dir.join("ptxas_report.txt"), &report).map_err(|e| e.to_string())?;
    let newest_input = sources
        .iter()
        .chain([kdir.join("common.cuh"), kdir.join("params.cuh")].iter())
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    write_if_changed(&kdir.join("PTXAS_REPORT.md"), &report, newest_input)?;

    // Spill rule, on every checked arch.
    let mut spills = String::new();
    for c in compiled
        .iter()
        .filter(|c| NO_SPILL.contains(&c.stem.as_str()))
    {
        for v in &c.variants {
            for chk in &v.checks {
                for e in chk
                    .entries
                    .iter()
                    .filter(|e| e.spill_stores + e.spill_loads > 0)
                {
                    let _ = writeln!(
                        spills,
                        "  {} (compute_{} on sm_{}): {} bytes spill stores, {} bytes spill loads",
                        e.name, v.arch, chk.arch, e.spill_stores, e.spill_loads
                    );
                }
            }
        }
    }
    if !spills.is_empty() {
        let msg = format!("register spills in kernels that must not spill:\n{spills}");
        if env::var_os("PMAD_ALLOW_SPILLS").is_some() {
            println!("cargo:warning={}", msg.replace('\n', " "));
        } else {
            return Err(format!("{msg}(set PMAD_ALLOW_SPILLS=1 to build anyway)"));
        }
    }

    fs::write(
        out_dir.join("kernels.rs"),
        render_kernels_rs(&compiled, out_dir),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// `$OUT_DIR/kernels.rs`: the PTX variants and entry points of every file, the ISA facts the
/// runtime check needs, and the report.
fn render_kernels_rs(compiled: &[Compiled], out_dir: &Path) -> String {
    let mut rs = String::from("// @generated by build.rs from kernels/*.cu — do not edit.\n\n");
    for c in compiled {
        let upper = c.stem.to_uppercase();
        let variants: Vec<String> = c
            .variants
            .iter()
            .map(|v| {
                format!(
                    "({}, include_str!({:?}))",
                    v.arch,
                    v.ptx_path.display().to_string()
                )
            })
            .collect();
        let _ = writeln!(
            rs,
            "/// PTX variants of `kernels/{}.cu`: (compute capability x10, PTX), lowest first.\n\
             pub const {upper}_PTX: &[(u32, &str)] = &[{}];",
            c.stem,
            variants.join(", ")
        );
        // Every variant exports the same entry points (checked in `compile_file`).
        let names: Vec<String> = c.variants[0].checks[0]
            .entries
            .iter()
            .map(|e| format!("{:?}", e.name))
            .collect();
        let _ = writeln!(
            rs,
            "/// Entry points of `kernels/{}.cu`.\npub const {upper}_KERNELS: &[&str] = &[{}];\n",
            c.stem,
            names.join(", ")
        );
    }
    let _ = writeln!(
        rs,
        "/// The PTX ISA version (`.version`) of every module.\n\
         pub const PTX_ISA: (u32, u32) = ({}, {});\n\
         /// The oldest driver that JITs [`PTX_ISA`], as `cuDriverGetVersion` reports it\n\
         /// (1000 * major + 10 * minor of its CUDA version).\n\
         pub const PTX_ISA_MIN_DRIVER: i32 = {PTX_ISA_MIN_DRIVER};\n\
         /// The lowest compute capability (x10) any module supports.\n\
         pub const BASE_ARCH: u32 = {BASE_ARCH};\n\
         /// The real architectures (x10) ptxas checked every module for.\n\
         pub const PTXAS_ARCHS: &[u32] = &{CHECK_ARCHS:?};",
        PTX_ISA.0, PTX_ISA.1
    );
    let _ = writeln!(
        rs,
        "/// The ptxas resource report of every kernel on every checked arch.\n\
         pub const PTXAS_REPORT: &str = include_str!({:?});",
        out_dir.join("ptxas_report.txt").display().to_string()
    );
    rs
}

/// The capabilities a file's `// pmad-arch:` line asks for, or [`BASE_ARCH`] alone.
fn variant_archs(code: &str, src: &Path) -> Result<Vec<u32>, String> {
    let mut archs = Vec::new();
    for (no, line) in code.lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix(ARCH_DIRECTIVE) else {
            continue;
        };
        for word in rest.split_whitespace() {
            let cc: u32 = word.parse().map_err(|_| {
                format!(
                    "{}:{}: `{ARCH_DIRECTIVE}` expects compute capabilities such as 80 or 90, \
                     got {word:?}",
                    src.display(),
                    no + 1
                )
            })?;
            if cc < BASE_ARCH {
                return Err(format!(
                    "{}:{}: capability {cc} is below {BASE_ARCH}, the lowest the kernels are \
                     built for (every file gets compute_{BASE_ARCH} without the line)",
                    src.display(),
                    no + 1
                ));
            }
            if !CHECK_ARCHS.iter().any(|&a| a >= cc) {
                return Err(format!(
                    "{}:{}: capability {cc} is above every arch ptxas checks ({CHECK_ARCHS:?}); \
                     add it to CHECK_ARCHS in build.rs",
                    src.display(),
                    no + 1
                ));
            }
            archs.push(cc);
        }
    }
    if archs.is_empty() {
        archs.push(BASE_ARCH);
    }
    archs.sort_unstable();
    archs.dedup();
    Ok(archs)
}

/// Compiles every PTX variant of one `.cu` file and assembles each for its checked archs.
fn compile_file(
    tc: &Toolchain,
    src: &Path,
    includes: &[PathBuf],
    out_dir: &Path,
) -> Result<Compiled, String> {
    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
    let code = fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut variants = Vec::new();
    for arch in variant_archs(&code, src)? {
        let raw = compile_ptx(tc, src, &code, &stem, arch, includes, out_dir)?;
        let ptx = set_ptx_isa(&raw).map_err(|e| format!("{}: {e}", src.display()))?;
        let ptx_path = out_dir.join(format!("{stem}.cc{arch}.ptx"));
        fs::write(&ptx_path, ptx).map_err(|e| e.to_string())?;
        let mut checks = Vec::new();
        for &real in CHECK_ARCHS.iter().filter(|&&a| a >= arch) {
            checks.push(assemble(tc, &ptx_path, real)?);
        }
        variants.push(Variant {
            arch,
            ptx_path,
            checks,
        });
    }
    // The runtime picks one variant per GPU by capability: all must offer the same kernels.
    let names = |c: &ArchCheck| c.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    let first = names(&variants[0].checks[0]);
    for v in &variants {
        for chk in &v.checks {
            if names(chk) != first {
                return Err(format!(
                    "{}: the compute_{} variant exports {:?} but compute_{} exports {:?}; every \
                     variant must define the same kernels",
                    src.display(),
                    v.arch,
                    names(chk),
                    variants[0].arch,
                    first
                ));
            }
        }
    }
    Ok(Compiled { stem, variants })
}

/// CUDA C++ -> PTX text for `compute_<arch>`.
fn compile_ptx(
    tc: &Toolchain,
    src: &Path,
    code: &str,
    stem: &str,
    arch: u32,
    includes: &[PathBuf],
    out_dir: &Path,
) -> Result<String, String> {
    match &tc.compiler {
        Compiler::Nvcc(nvcc) => {
            let raw = out_dir.join(format!("{stem}.cc{arch}.nvcc.ptx"));
            let mut cmd = Command::new(nvcc);
            cmd.arg("--ptx")
                .arg(format!("-arch=compute_{arch}"))
                .arg("-std=c++17")
                .arg("-o")
                .arg(&raw);
            for inc in includes {
                cmd.arg(format!("-I{}", inc.display()));
            }
            cmd.arg(src);
            let out = cmd
                .output()
                .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "nvcc failed on {} (compute_{arch}):\n{}{}",
                    src.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            fs::read_to_string(&raw).map_err(|e| format!("{}: {e}", raw.display()))
        }
        Compiler::Nvrtc(lib) => {
            let mut opts = vec![
                format!("--gpu-architecture=compute_{arch}"),
                "--std=c++17".to_string(),
            ];
            opts.extend(includes.iter().map(|i| format!("-I{}", i.display())));
            lib.compile(code, &format!("{stem}.cu"), &opts)
                .map_err(|log| {
                    format!("NVRTC failed on {} (compute_{arch}):\n{log}", src.display())
                })
        }
    }
}

/// Lowers the PTX's `.version` to [`PTX_ISA`] (never raises it) and drops the ISA 8.3
/// `used_bytes_mask` load hints; ptxas then verifies that nothing else needs a newer ISA.
fn set_ptx_isa(ptx: &str) -> Result<String, String> {
    let target = format!(".version {}.{}", PTX_ISA.0, PTX_ISA.1);
    let mut seen = false;
    let mut out = String::with_capacity(ptx.len());
    for line in ptx.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix(".version ") {
            let parsed = v
                .split_once('.')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                .ok_or_else(|| format!("unreadable PTX version line {t:?}"))?;
            seen = true;
            out.push_str(if parsed > PTX_ISA { &target } else { line });
        } else if t.starts_with(".pragma \"used_bytes_mask ") {
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !seen {
        return Err("the compiler's PTX has no `.version` line".into());
    }
    Ok(out)
}

/// `ptxas -arch=sm_<arch> -v`: a real assembly, for errors and the resource report.
fn assemble(tc: &Toolchain, ptx_path: &Path, arch: u32) -> Result<ArchCheck, String> {
    let cubin = ptx_path.with_extension(format!("sm_{arch}.cubin"));
    let out = Command::new(&tc.ptxas)
        .arg(format!("-arch=sm_{arch}"))
        .arg("-v")
        .arg("-o")
        .arg(&cubin)
        .arg(ptx_path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tc.ptxas.display()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "ptxas -arch=sm_{arch} failed on {} (PTX ISA {}.{}):\n{log}",
            ptx_path.display(),
            PTX_ISA.0,
            PTX_ISA.1
        ));
    }
    let mut entries = parse_ptxas(&log);
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let warnings = log
        .lines()
        .filter(|l| l.contains("warning"))
        .map(|l| format!("sm_{arch}: {l}"))
        .collect();
    Ok(ArchCheck {
        arch,
        entries,
        warnings,
    })
}

/// Reads `ptxas -v` output: entry name, then "N bytes stack frame, N bytes spill stores, N bytes
/// spill loads", then "Used N registers, ..., N bytes smem, ...".
fn parse_ptxas(log: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut cur: Option<Entry> = None;
    let num_before = |line: &str, unit: &str| -> Option<u32> {
        let idx = line.find(unit)?;
        line[..idx].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(c) = cur.take() {
                out.push(c);
            }
            let name = rest.split('\'').next().unwrap_or("").to_string();
            cur = Some(Entry {
                name,
                ..Default::default()
            });
        } else if let Some(c) = cur.as_mut() {
            if line.contains("bytes stack frame") {
                c.stack = num_before(line, "bytes stack frame").unwrap_or(0);
                c.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
                c.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used ") && line.contains("registers") {
                c.registers = num_before(line, "registers").unwrap_or(0);
                c.smem = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    out
}

/// The per-arch table: one row per kernel (and variant), registers per arch; shared memory,
/// stack and spills as one value when every arch agrees, per arch otherwise.
fn render_report(tc: &Toolchain, compiled: &[Compiled]) -> String {
    let archs: Vec<String> = CHECK_ARCHS.iter().map(|a| format!("sm_{a}")).collect();
    let mut s = String::new();
    let _ = writeln!(s, "# ptxas report ({})\n", archs.join(", "));
    let _ = writeln!(
        s,
        "Generated by `build.rs` (`cargo build --features cuda`); do not edit. PTX for \
         `compute_{BASE_ARCH}` (a file's `{ARCH_DIRECTIVE}` line adds per-capability variants) \
         from {}, PTX ISA {}.{} (JIT-able by drivers for CUDA {}.{} or newer), assembled by \
         ptxas {} with `-arch=sm_XX -v` for each arch at or above the variant's. Registers are \
         per thread; shared memory is static bytes per block (plus any dynamic bytes given at \
         launch); shared memory, stack and spills are one value when every arch agrees, else \
         `arch:value` per arch. Spills must stay 0 for {} on every arch.\n",
        tc.compiler_version,
        PTX_ISA.0,
        PTX_ISA.1,
        PTX_ISA_MIN_DRIVER / 1000,
        PTX_ISA_MIN_DRIVER % 1000 / 10,
        tc.ptxas_version,
        NO_SPILL.join(" and ")
    );
    let regs_header: Vec<String> = archs.iter().map(|a| format!("{a} regs")).collect();
    let _ = writeln!(
        s,
        "| file | PTX | kernel | {} | shared mem (bytes) | stack (bytes) | spill stores/loads (bytes) |",
        regs_header.join(" | ")
    );
    let _ = writeln!(
        s,
        "|---|---|---|{}---:|---:|---:|",
        "---:|".repeat(archs.len())
    );
    for c in compiled {
        for v in &c.variants {
            for (i, first) in v.checks[0].entries.iter().enumerate() {
                // The same entry on every checked arch (names are sorted, equal across checks).
                let per_arch: Vec<(u32, &Entry)> = v
                    .checks
                    .iter()
                    .map(|chk| (chk.arch, &chk.entries[i]))
                    .collect();
                let regs: Vec<String> = CHECK_ARCHS
                    .iter()
                    .map(|a| match per_arch.iter().find(|(x, _)| x == a) {
                        Some((_, e)) => e.registers.to_string(),
                        None => "–".into(),
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "| {}.cu | compute_{} | `{}` | {} | {} | {} | {} |",
                    c.stem,
                    v.arch,
                    first.name,
                    regs.join(" | "),
                    agreed(&per_arch, |e| e.smem.to_string()),
                    agreed(&per_arch, |e| e.stack.to_string()),
                    agreed(&per_arch, |e| format!(
                        "{}/{}",
                        e.spill_stores, e.spill_loads
                    )),
                );
            }
        }
    }
    let warnings: Vec<&String> = compiled
        .iter()
        .flat_map(|c| &c.variants)
        .flat_map(|v| &v.checks)
        .flat_map(|chk| &chk.warnings)
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(s, "\nptxas warnings:\n");
        for w in warnings {
            let _ = writeln!(s, "    {w}");
        }
    }
    s
}

/// One value when every arch gives the same, else `75:a 80:b ...`.
fn agreed(per_arch: &[(u32, &Entry)], f: impl Fn(&Entry) -> String) -> String {
    let values: Vec<String> = per_arch.iter().map(|(_, e)| f(e)).collect();
    if values.windows(2).all(|w| w[0] == w[1]) {
        values[0].clone()
    } else {
        per_arch
            .iter()
            .zip(&values)
            .map(|((a, _), v)| format!("{a}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Writes only when the content differs, then stamps the file with the newest input's mtime
/// so cargo's scan of `kernels/` does not see it as a fresh change.
fn write_if_changed(path: &Path, content: &str, mtime: SystemTime) -> Result<(), String> {
    if fs::read_to_string(path).ok().as_deref() != Some(content) {
        fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Ok(f) = fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_modified(mtime);
    }
    Ok(())
}

// ---------------------------------------------------------------------------- toolchain

enum Compiler {
    Nvcc(PathBuf),
    Nvrtc(nvrtc::Nvrtc),
}

struct Toolchain {
    compiler: Compiler,
    compiler_version: String,
    ptxas: PathBuf,
    ptxas_version: String,
    includes: Vec<PathBuf>,
}

const MISSING_HINT: &str = "The `cuda` feature compiles kernels/*.cu at build time and needs \
either nvcc, or NVRTC (libnvrtc.so.12) plus ptxas. Install them into the project with\n\n    \
bash scripts/cuda_toolchain.sh\n\nor point PMAD_NVRTC_LIB / PMAD_PTXAS at existing files. \
Build without `--features cuda` for the CPU-only engine.";

impl Toolchain {
    fn find(manifest: &Path) -> Result<Self, String> {
        let wheel_roots = wheel_roots(manifest);
        let in_wheels = |rel: &str| -> Option<PathBuf> {
            wheel_roots
                .iter()
                .map(|r| r.join(rel))
                .find(|p| p.is_file())
        };

        let nvcc = find_on_path("nvcc");
        let ptxas = env::var_os("PMAD_PTXAS")
            .map(PathBuf::from)
            .or_else(|| {
                nvcc.as_ref()
                    .and_then(|n| n.parent().map(|d| d.join("ptxas")))
                    .filter(|p| p.is_file())
            })
            .or_else(|| find_on_path("ptxas"))
            .or_else(|| in_wheels("nvidia/cuda_nvcc/bin/ptxas"))
            .or_else(|| Some(PathBuf::from("/usr/local/cuda/bin/ptxas")).filter(|p| p.is_file()))
            .ok_or_else(|| format!("ptxas not found.\n{MISSING_HINT}"))?;
        let ptxas_version = Command::new(&ptxas)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                    l.split(", ")
                        .find(|w| w.starts_with('V'))
                        .map(str::to_string)
                })
            })
            .ok_or_else(|| format!("cannot run {} --version.\n{MISSING_HINT}", ptxas.display()))?;

        let mut includes: Vec<PathBuf> = env::var("PMAD_CUDA_INCLUDE")
            .map(|v| env::split_paths(&v).collect())
            .unwrap_or_default();
        for rel in ["nvidia/cuda_runtime/include", "nvidia/cuda_cccl/include"] {
            if let Some(d) = wheel_roots.iter().map(|r| r.join(rel)).find(|p| p.is_dir()) {
                includes.push(d);
            }
        }

        let (compiler, compiler_version) = if let Some(nvcc) = nvcc {
            let v = Command::new(&nvcc)
                .arg("--version")
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default();
            (Compiler::Nvcc(nvcc), format!("nvcc ({v})"))
        } else {
            let mut candidates: Vec<PathBuf> = Vec::new();
            if let Some(p) = env::var_os("PMAD_NVRTC_LIB") {
                candidates.push(PathBuf::from(p));
            }
            candidates.extend(
                wheel_roots
                    .iter()
                    .map(|r| r.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12")),
            );
            candidates.push(PathBuf::from("/usr/local/cuda/lib64/libnvrtc.so.12"));
            candidates.push(PathBuf::from("/usr/local/cuda/lib64/libnvrtc.so"));
            let lib = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "neither nvcc on PATH nor libnvrtc found (looked at: {}).\n{MISSING_HINT}",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let nv = nvrtc::Nvrtc::load(lib)?;
            let (maj, min) = nv.version();
            (Compiler::Nvrtc(nv), format!("NVRTC {maj}.{min}"))
        };
        Ok(Toolchain {
            compiler,
            compiler_version,
            ptxas,
            ptxas_version,
            includes,
        })
    }
}

/// Folders that may hold the `nvidia/...` wheel trees: the project-local install, then python's
/// site-packages.
fn wheel_roots(manifest: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    match env::var_os("PMAD_CUDA_TOOLCHAIN") {
        Some(p) => roots.push(PathBuf::from(p)),
        None => roots.push(manifest.join(".cuda-toolchain")),
    }
    let py = "import site, sys\n\
              paths = list(getattr(site, 'getsitepackages', lambda: [])())\n\
              paths.append(site.getusersitepackages())\n\
              print('\\n'.join(paths + sys.path))";
    if let Ok(out) = Command::new("python3").arg("-c").arg(py).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let p = PathBuf::from(line.trim());
            if !line.trim().is_empty() && p.join("nvidia").is_dir() && !roots.contains(&p) {
                roots.push(p);
            }
        }
    }
    roots
}

fn find_on_path(exe: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(exe))
        .find(|p| p.is_file())
}

// -------------------------------------------------------------------------------- nvrtc

/// The six NVRTC entry points build.rs needs, resolved with `dlopen`/`dlsym`.
mod nvrtc {
    use std::ffi::{CStr, CString, c_char, c_int, c_void};
    use std::path::Path;

    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *mut c_char;
    }
    const RTLD_NOW: c_int = 2;
    const RTLD_GLOBAL: c_int = 0x100;

    type Program = *mut c_void;
    type CreateFn = unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int;
    type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
    type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> c_int;
    type GetFn = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
    type DestroyFn = unsafe extern "C" fn(*mut Program) -> c_int;
    type ErrStrFn = unsafe extern "C" fn(c_int) -> *const c_char;
    type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

    pub struct Nvrtc {
        create: CreateFn,
        compile: CompileFn,
        log_size: SizeFn,
        log: GetFn,
        ptx_size: SizeFn,
        ptx: GetFn,
        destroy: DestroyFn,
        err_str: ErrStrFn,
        version: VersionFn,
    }

    fn last_dl_error() -> String {
        // SAFETY: dlerror returns NULL or a valid C string owned by libc.
        unsafe {
            let e = dlerror();
            if e.is_null() {
                "unknown dlopen error".into()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        }
    }

    impl Nvrtc {
        pub fn load(lib: &Path) -> Result<Self, String> {
            // libnvrtc dlopens libnvrtc-builtins.so.<ver> at compile time. Its RUNPATH is
            // $ORIGIN, but preloading the builtins from the same folder makes this independent
            // of how the library was installed (LD_LIBRARY_PATH cannot be changed in-process).
            if let Some(dir) = lib.parent()
                && let Ok(rd) = std::fs::read_dir(dir)
            {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("libnvrtc-builtins.so") {
                        let c = CString::new(e.path().to_string_lossy().as_bytes()).unwrap();
                        // SAFETY: valid C string; failure is harmless (NULL handle).
                        unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
                    }
                }
            }
            let c = CString::new(lib.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: valid C string.
            let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
            if h.is_null() {
                return Err(format!(
                    "cannot load {}: {}\n{}",
                    lib.display(),
                    last_dl_error(),
                    super::MISSING_HINT
                ));
            }
            let sym = |name: &str| -> Result<*mut c_void, String> {
                let c = CString::new(name).unwrap();
                // SAFETY: h is a live handle, c a valid C string.
                let p = unsafe { dlsym(h, c.as_ptr()) };
                if p.is_null() {
                    Err(format!("{}: missing symbol {name}", lib.display()))
                } else {
                    Ok(p)
                }
            };
            // SAFETY: each symbol has the C signature of the NVRTC API (nvrtc.h, CUDA 11-13).
            unsafe {
                Ok(Nvrtc {
                    create: std::mem::transmute::<*mut c_void, CreateFn>(sym(
                        "nvrtcCreateProgram",
                    )?),
                    compile: std::mem::transmute::<*mut c_void, CompileFn>(sym(
                        "nvrtcCompileProgram",
                    )?),
                    log_size: std::mem::transmute::<*mut c_void, SizeFn>(sym(
                        "nvrtcGetProgramLogSize",
                    )?),
                    log: std::mem::transmute::<*mut c_void, GetFn>(sym("nvrtcGetProgramLog")?),
                    ptx_size: std::mem::transmute::<*mut c_void, SizeFn>(sym("nvrtcGetPTXSize")?),
                    ptx: std::mem::transmute::<*mut c_void, GetFn>(sym("nvrtcGetPTX")?),
                    destroy: std::mem::transmute::<*mut c_void, DestroyFn>(sym(
                        "nvrtcDestroyProgram",
                    )?),
                    err_str: std::mem::transmute::<*mut c_void, ErrStrFn>(sym(
                        "nvrtcGetErrorString",
                    )?),
                    version: std::mem::transmute::<*mut c_void, VersionFn>(sym("nvrtcVersion")?),
                })
            }
        }

        pub fn version(&self) -> (i32, i32) {
            let (mut a, mut b) = (0, 0);
            // SAFETY: two valid out-pointers.
            unsafe { (self.version)(&mut a, &mut b) };
            (a, b)
        }

        fn err(&self, code: c_int) -> String {
            // SAFETY: nvrtcGetErrorString returns a static string for any code.
            let s = unsafe { (self.err_str)(code) };
            if s.is_null() {
                format!("nvrtc error {code}")
            } else {
                // SAFETY: non-null static C string.
                unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
            }
        }

        /// Compiles `src` to PTX; on failure returns NVRTC's log.
        pub fn compile(&self, src: &str, name: &str, opts: &[String]) -> Result<String, String> {
            let csrc = CString::new(src).map_err(|e| e.to_string())?;
            let cname = CString::new(name).unwrap();
            let copts: Vec<CString> = opts
                .iter()
                .map(|o| CString::new(o.as_str()).unwrap())
                .collect();
            let popts: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();
            let mut prog: Program = std::ptr::null_mut();
            // SAFETY: all pointers are valid for the duration of the calls; the program is
            // destroyed exactly once below.
            unsafe {
                let rc = (self.create)(
                    &mut prog,
                    csrc.as_ptr(),
                    cname.as_ptr(),
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                );
                if rc != 0 {
                    return Err(format!("nvrtcCreateProgram: {}", self.err(rc)));
                }
                let rc = (self.compile)(prog, popts.len() as c_int, popts.as_ptr());
                let mut n = 0usize;
                (self.log_size)(prog, &mut n);
                let mut log = vec![0u8; n.max(1)];
                (self.log)(prog, log.as_mut_ptr() as *mut c_char);
                let log = String::from_utf8_lossy(&log[..n.saturating_sub(1)]).into_owned();
                let result = if rc != 0 {
                    Err(format!("{}\n{log}", self.err(rc)))
                } else {
                    let mut n = 0usize;
                    (self.ptx_size)(prog, &mut n);
                    let mut ptx = vec![0u8; n.max(1)];
                    (self.ptx)(prog, ptx.as_mut_ptr() as *mut c_char);
                    ptx.truncate(n.saturating_sub(1)); // drop the NUL
                    if !log.trim().is_empty() {
                        for l in log.lines() {
                            println!("cargo:warning=nvrtc {name}: {l}");
                        }
                    }
                    String::from_utf8(ptx).map_err(|e| e.to_string())
                };
                (self.destroy)(&mut prog);
                result
            }
        }
    }
}
