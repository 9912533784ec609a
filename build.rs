//! Build script: turns `kernels/*.cu` into PTX for the `cuda` feature.
//!
//! * Feature off (`CARGO_FEATURE_CUDA` unset): prints `rerun-if-changed` lines and returns. It
//!   needs nothing and costs nothing.
//! * Feature on: every `kernels/*.cu` is compiled to PTX for `compute_90`, then assembled by
//!   `ptxas -arch=sm_90 -v` to catch everything the PTX front end lets through and to read
//!   registers / shared memory / spills. Any compile error fails the build with the full log.
//!   Results: `$OUT_DIR/<name>.ptx`, `$OUT_DIR/kernels.rs` (one `pub const <NAME>_PTX: &str`
//!   per file, `include_str!`-ed into `src/cuda/mod.rs`), `$OUT_DIR/ptxas_report.txt` and a copy
//!   as `kernels/PTXAS_REPORT.md`.
//!
//! Finding the compiler (first hit wins):
//! 1. `nvcc` on `PATH` (`nvcc --ptx -arch=compute_90`);
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

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

const VIRTUAL_ARCH: &str = "compute_90";
const REAL_ARCH: &str = "sm_90";
/// Kernel files whose sm_90 code must not spill registers.
const NO_SPILL: &[&str] = &["attention", "proto_nn"];

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
}

// ------------------------------------------------------------------------------- driver

struct Compiled {
    stem: String,
    ptx_path: PathBuf,
    entries: Vec<Entry>,
    ptxas_log: String,
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
                s.spawn(move || compile_one(tc, src, includes, out_dir))
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

    // Spill rule.
    let mut spills = String::new();
    for c in compiled
        .iter()
        .filter(|c| NO_SPILL.contains(&c.stem.as_str()))
    {
        for e in c
            .entries
            .iter()
            .filter(|e| e.spill_stores + e.spill_loads > 0)
        {
            let _ = writeln!(
                spills,
                "  {}: {} bytes spill stores, {} bytes spill loads",
                e.name, e.spill_stores, e.spill_loads
            );
        }
    }
    if !spills.is_empty() {
        let msg =
            format!("register spills in kernels that must not spill on {REAL_ARCH}:\n{spills}");
        if env::var_os("PMAD_ALLOW_SPILLS").is_some() {
            println!("cargo:warning={}", msg.replace('\n', " "));
        } else {
            return Err(format!("{msg}(set PMAD_ALLOW_SPILLS=1 to build anyway)"));
        }
    }

    // kernels.rs
    let mut rs = String::from("// @generated by build.rs from kernels/*.cu — do not edit.\n\n");
    for c in &compiled {
        let upper = c.stem.to_uppercase();
        let _ = writeln!(
            rs,
            "/// PTX ({VIRTUAL_ARCH}) of `kernels/{}.cu`.\npub const {upper}_PTX: &str = include_str!({:?});",
            c.stem,
            c.ptx_path.display().to_string()
        );
        let names: Vec<String> = c.entries.iter().map(|e| format!("{:?}", e.name)).collect();
        let _ = writeln!(
            rs,
            "/// Entry points of `kernels/{}.cu`.\npub const {upper}_KERNELS: &[&str] = &[{}];\n",
            c.stem,
            names.join(", ")
        );
    }
    let _ = writeln!(
        rs,
        "/// The ptxas ({REAL_ARCH}) resource report of every kernel.\npub const PTXAS_REPORT: &str = include_str!({:?});",
        out_dir.join("ptxas_report.txt").display().to_string()
    );
    fs::write(out_dir.join("kernels.rs"), rs).map_err(|e| e.to_string())?;
    Ok(())
}

fn compile_one(
    tc: &Toolchain,
    src: &Path,
    includes: &[PathBuf],
    out_dir: &Path,
) -> Result<Compiled, String> {
    let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
    let ptx_path = out_dir.join(format!("{stem}.ptx"));
    match &tc.compiler {
        Compiler::Nvcc(nvcc) => {
            let mut cmd = Command::new(nvcc);
            cmd.arg("--ptx")
                .arg(format!("-arch={VIRTUAL_ARCH}"))
                .arg("-std=c++17")
                .arg("-o")
                .arg(&ptx_path);
            for inc in includes {
                cmd.arg(format!("-I{}", inc.display()));
            }
            cmd.arg(src);
            let out = cmd
                .output()
                .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "nvcc failed on {}:\n{}{}",
                    src.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Compiler::Nvrtc(lib) => {
            let code = fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
            let mut opts = vec![
                format!("--gpu-architecture={VIRTUAL_ARCH}"),
                "--std=c++17".to_string(),
            ];
            opts.extend(includes.iter().map(|i| format!("-I{}", i.display())));
            let ptx = lib
                .compile(&code, &format!("{stem}.cu"), &opts)
                .map_err(|log| format!("NVRTC failed on {}:\n{log}", src.display()))?;
            fs::write(&ptx_path, ptx).map_err(|e| e.to_string())?;
        }
    }

    // ptxas: a real assembly for sm_90, for errors and the resource report.
    let cubin = out_dir.join(format!("{stem}.cubin"));
    let out = Command::new(&tc.ptxas)
        .arg(format!("-arch={REAL_ARCH}"))
        .arg("-v")
        .arg("-o")
        .arg(&cubin)
        .arg(&ptx_path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tc.ptxas.display()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("ptxas failed on {}:\n{log}", ptx_path.display()));
    }
    let mut entries = parse_ptxas(&log);
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Compiled {
        stem,
        ptx_path,
        entries,
        ptxas_log: log,
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

fn render_report(tc: &Toolchain, compiled: &[Compiled]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# ptxas report ({REAL_ARCH})\n");
    let _ = writeln!(
        s,
        "Generated by `build.rs` (`cargo build --features cuda`); do not edit. PTX for \
         `{VIRTUAL_ARCH}` from {}, assembled by ptxas {} with `-arch={REAL_ARCH} -v`. \
         Shared memory is static (plus any dynamic bytes given at launch). Spills must stay 0 \
         for {}.\n",
        tc.compiler_version,
        tc.ptxas_version,
        NO_SPILL.join(" and ")
    );
    let _ = writeln!(
        s,
        "| file | kernel | registers | shared mem (bytes) | stack (bytes) | spill stores (bytes) | spill loads (bytes) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for c in compiled {
        for e in &c.entries {
            let _ = writeln!(
                s,
                "| {}.cu | `{}` | {} | {} | {} | {} | {} |",
                c.stem, e.name, e.registers, e.smem, e.stack, e.spill_stores, e.spill_loads
            );
        }
    }
    let warnings: Vec<&str> = compiled
        .iter()
        .flat_map(|c| c.ptxas_log.lines())
        .filter(|l| l.contains("warning"))
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(s, "\nptxas warnings:\n");
        for w in warnings {
            let _ = writeln!(s, "    {w}");
        }
    }
    s
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
