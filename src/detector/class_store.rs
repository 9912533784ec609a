//! Registered classes on disk, replaced atomically.
//!
//! ```text
//! MODEL_DIR/.lock                             advisory lock held by writers (readers never take it)
//! MODEL_DIR/classes/<name>/CURRENT            the current version's folder name, e.g. "v000003"
//! MODEL_DIR/classes/<name>/v000003/class.json             ClassInfo
//! MODEL_DIR/classes/<name>/v000003/prototypes.safetensors the bank [P, D] (+ index centroids)
//! ```
//!
//! A registration writes a new version folder under a temporary name, syncs it, renames it to
//! `vN`, loads it back and checks it, and only then replaces `CURRENT` (temp file + rename, one
//! atomic step). A reader reads `CURRENT`, then the version it names: at every instant it sees
//! either the complete old class or the complete new one, and a killed writer leaves the old
//! class current. The previous version is kept so a reader that read `CURRENT` just before a
//! swap can still open it (and a reader that loses even that race re-reads `CURRENT`); older
//! versions and the temporaries of killed writers are removed by the next writer.
//!
//! Model directories written before versioned classes keep `class.json` and the bank directly
//! in `classes/<name>/`; they are read as they are and upgraded by the next registration.

use crate::detector::model_dir::{self as md, ClassInfo};
use crate::error::{Error, Result};
use crate::fault;
use crate::tensor::Tensor;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The pointer file naming the current version of a class.
pub const CURRENT_FILE: &str = "CURRENT";
/// The writers' lock file of a model directory.
pub const LOCK_FILE: &str = ".lock";
/// Tensor name of the bank in `prototypes.safetensors`.
pub const BANK_TENSOR: &str = "prototypes";
/// Tensor name of the bank index's k-means centroids in `prototypes.safetensors`.
pub const INDEX_CENTROIDS: &str = "index_centroids";

/// Tensor name, in `prototypes.safetensors`, of the normal image (index in registration
/// order, stored as exact f32 integers) each prototype was taken from: recalibration builds
/// its k-fold banks from it (see `detector::calibrate`).
pub const SOURCE_IMAGE: &str = "prototype_source_image";

/// A class as stored: its info, its bank `[P, D]` and the saved index centroids (if any).
pub struct StoredClass {
    pub info: ClassInfo,
    pub bank: Vec<f32>,
    /// `[k, D]` centroids of the bank index, when saved and well-formed.
    pub centroids: Option<Vec<f32>>,
    /// The normal image of each prototype, when saved and well-formed (every value an
    /// integer below `info.n_train_images`).
    pub source_image: Option<Vec<u32>>,
}

/// Held while a process writes to a model directory: writers are serialised, readers never
/// wait (they only read complete, renamed-into-place files). Released on drop.
pub struct WriterLock {
    _file: File,
}

/// Takes the model directory's writer lock, waiting for another writer to finish.
pub fn lock_writer(model_dir: &Path) -> Result<WriterLock> {
    let path = model_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.lock().map_err(|e| Error::io(&path, e))?;
    Ok(WriterLock { _file: file })
}

/// Whether `class` has a stored version (current pointer or legacy layout).
pub fn exists(model_dir: &Path, class: &str) -> bool {
    let cdir = md::class_dir(model_dir, class);
    cdir.join(CURRENT_FILE).is_file() || cdir.join(md::CLASS_FILE).is_file()
}

/// The folder holding the current version's files (`None`: not registered).
fn current_dir(cdir: &Path) -> Result<Option<PathBuf>> {
    let pointer = cdir.join(CURRENT_FILE);
    match std::fs::read_to_string(&pointer) {
        Ok(text) => {
            let v = text.trim();
            if !is_version_name(v) {
                return Err(Error::format(
                    &pointer,
                    format!("'{v}' is not a class version (expected e.g. v000001)"),
                ));
            }
            Ok(Some(cdir.join(v)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Legacy layout (no versions): the files sit in the class folder itself.
            Ok(cdir
                .join(md::CLASS_FILE)
                .is_file()
                .then(|| cdir.to_path_buf()))
        }
        Err(e) => Err(Error::io(&pointer, e)),
    }
}

/// The `class.json` of the current version of `class` (for messages; the legacy location
/// when the class is not registered or unreadable).
pub fn info_path(model_dir: &Path, class: &str) -> PathBuf {
    let cdir = md::class_dir(model_dir, class);
    match current_dir(&cdir) {
        Ok(Some(v)) => v.join(md::CLASS_FILE),
        _ => cdir.join(md::CLASS_FILE),
    }
}

fn is_version_name(s: &str) -> bool {
    s.len() == 7 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Loads the current version of `class` (features of dimension `dim`), checked: a valid
/// `class.json` of this class and a finite bank with as many rows as it says.
pub fn load(model_dir: &Path, class: &str, dim: usize) -> Result<StoredClass> {
    let cdir = md::class_dir(model_dir, class);
    // A writer may swap versions between our reading CURRENT and opening the files, and a
    // second swap may remove the version we read; then CURRENT has moved on: read it again.
    let mut last_err = None;
    for _ in 0..3 {
        let Some(vdir) = current_dir(&cdir)? else {
            return Err(not_registered(model_dir, class));
        };
        match load_version(&vdir, class, dim) {
            Ok(c) => return Ok(c),
            Err(e) => {
                if current_dir(&cdir)?.as_deref() == Some(vdir.as_path()) {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| not_registered(model_dir, class)))
}

fn not_registered(model_dir: &Path, class: &str) -> Error {
    Error::ClassNotRegistered {
        class: class.to_string(),
        model_dir: model_dir.to_path_buf(),
        registered: list(model_dir).unwrap_or_default(),
    }
}

/// Loads and checks the files of one version folder.
fn load_version(vdir: &Path, class: &str, dim: usize) -> Result<StoredClass> {
    let info_path = vdir.join(md::CLASS_FILE);
    let bytes = std::fs::read(&info_path).map_err(|e| Error::io(&info_path, e))?;
    let info = md::parse_class_info(&bytes, &info_path)?;
    if info.name != class {
        return Err(Error::format(
            &info_path,
            format!(
                "field 'name': '{}' in the folder of class '{class}'",
                info.name
            ),
        ));
    }
    let bank_path = vdir.join(md::BANK_FILE);
    let st = crate::weights::SafeTensors::open(&bank_path)?;
    let rows = st
        .info(BANK_TENSOR)
        .and_then(|i| i.shape.first().copied())
        .unwrap_or(0);
    if rows == 0 {
        return Err(Error::format(
            &bank_path,
            format!("no (or an empty) '{BANK_TENSOR}' tensor: the prototype bank is missing"),
        ));
    }
    if rows != info.n_prototypes {
        return Err(Error::format(
            &bank_path,
            format!(
                "{rows} prototypes where {} says {}",
                info_path.display(),
                info.n_prototypes
            ),
        ));
    }
    // (`tensor_f32_checked` also rejects NaN/Inf values.)
    let bank = st
        .tensor_f32_checked(BANK_TENSOR, &[rows, dim])?
        .into_f32_vec();
    // The saved centroids rebuild the same index without k-means; a malformed entry is
    // ignored (the caller builds a fresh index).
    let centroids = match st.info(INDEX_CENTROIDS).map(|i| i.shape.clone()) {
        Some(shape) if shape.len() == 2 && shape[0] > 0 && shape[1] == dim => Some(
            st.tensor_f32_checked(INDEX_CENTROIDS, &shape)?
                .into_f32_vec(),
        ),
        _ => None,
    };
    // The prototypes' images: an absent or malformed entry is ignored (recalibration then
    // builds fresh fold coresets), like the centroids.
    let source_image = match st.info(SOURCE_IMAGE).map(|i| i.shape.clone()) {
        Some(shape) if shape == [rows] => {
            let v = st.tensor_f32_checked(SOURCE_IMAGE, &shape)?.into_f32_vec();
            let n = info.n_train_images as f32;
            v.iter()
                .all(|&x| x >= 0.0 && x < n && x.fract() == 0.0)
                .then(|| v.iter().map(|&x| x as u32).collect())
        }
        _ => None,
    };
    Ok(StoredClass {
        info,
        bank,
        centroids,
        source_image,
    })
}

/// Stores a new version of a class and makes it current (see the module docs). The caller
/// should hold [`lock_writer`]; this takes it itself when `lock` is `None`.
pub fn save(
    model_dir: &Path,
    info: &ClassInfo,
    bank: &[f32],
    centroids: &[f32],
    source_image: Option<&[u32]>,
    dim: usize,
    lock: Option<&WriterLock>,
) -> Result<()> {
    let _own = match lock {
        Some(_) => None,
        None => Some(lock_writer(model_dir)?),
    };
    let class = info.name.as_str();
    md::check_class_name(class)?;
    let cdir = md::class_dir(model_dir, class);
    std::fs::create_dir_all(&cdir).map_err(|e| Error::io(&cdir, e))?;
    clean_stale(model_dir, &cdir)?;

    // 1. The new version, complete, under a temporary name.
    let next = next_version(&cdir)?;
    let tmp = cdir.join(format!(".{next}.tmp-{}", std::process::id()));
    let final_dir = cdir.join(&next);
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let bank_t = Tensor::new(bank.to_vec(), &[bank.len() / dim, dim])?;
        let cent_t = Tensor::new(centroids.to_vec(), &[centroids.len() / dim, dim])?;
        let mut tensors = vec![(BANK_TENSOR, bank_t), (INDEX_CENTROIDS, cent_t)];
        if let Some(src) = source_image {
            // Image indices are far below 2^24, so f32 holds them exactly.
            let v: Vec<f32> = src.iter().map(|&i| i as f32).collect();
            tensors.push((SOURCE_IMAGE, Tensor::new(v, &[src.len()])?));
        }
        crate::weights::write_safetensors(tmp.join(md::BANK_FILE), tensors, None)?;
        fault::point("register.bank-written");
        md::write_json(&tmp.join(md::CLASS_FILE), info)?;
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(&cdir)?;
        fault::point("register.version-written");
        // 2. Read back exactly as a reader will, before anybody can see it.
        load_version(&final_dir, class, dim).map_err(|e| {
            Error::invalid(format!(
                "class '{class}': the new registration does not load back ({e}); the \
                 previous registration is kept"
            ))
        })?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&final_dir);
        return Err(e);
    }
    // 3. The swap: one atomic rename of the pointer file.
    md::write_atomic(&cdir.join(CURRENT_FILE), format!("{next}\n").as_bytes())?;
    sync_dir(&cdir)?;
    fault::point("register.swapped");
    // 4. Tidy up: versions older than the previous one, and legacy files.
    remove_old_versions(&cdir, &next)?;
    Ok(())
}

/// `v` + six digits, one more than the highest version present.
fn next_version(cdir: &Path) -> Result<String> {
    let mut top = 0u32;
    for e in std::fs::read_dir(cdir).map_err(|e| Error::io(cdir, e))? {
        let name = e.map_err(|e| Error::io(cdir, e))?.file_name();
        let name = name.to_string_lossy();
        if is_version_name(&name) {
            top = top.max(name[1..].parse().unwrap_or(0));
        }
    }
    if top >= 999_999 {
        return Err(Error::invalid(format!(
            "{}: version counter exhausted",
            cdir.display()
        )));
    }
    Ok(format!("v{:06}", top + 1))
}

/// Whether a temporary named `.<name>.tmp-<pid>[-<n>]` was left by a process that is gone
/// (on Linux, checked in /proc; elsewhere every temporary found under the lock is stale).
fn is_stale_temp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.split(".tmp-").nth(1)) else {
        return false;
    };
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if cfg!(target_os = "linux") => {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => true,
    }
}

/// Removes what killed writers left: temporary version folders and pointer files of this
/// class, temporary class folders of the pre-versioned layout (`classes/.<n>.tmp-*`), and
/// temporary files of the model directory's own files (model.json, flow, ViT).
fn clean_stale(model_dir: &Path, cdir: &Path) -> Result<()> {
    let classes = model_dir.join(md::CLASSES_DIR);
    for dir in [cdir, classes.as_path(), model_dir] {
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if is_stale_temp(&name) {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    Ok(())
}

/// Keeps `current` and the newest version before it; removes the rest and legacy files.
fn remove_old_versions(cdir: &Path, current: &str) -> Result<()> {
    let mut versions: Vec<String> = std::fs::read_dir(cdir)
        .map_err(|e| Error::io(cdir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| is_version_name(n) && n.as_str() < current)
        .collect();
    versions.sort();
    versions.pop(); // the previous version stays for readers in flight
    for v in versions {
        let p = cdir.join(v);
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    for legacy in [md::CLASS_FILE, md::BANK_FILE] {
        let p = cdir.join(legacy);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Makes renames inside `dir` durable (POSIX: a rename is durable once its folder is synced).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Class names registered in `model_dir` (sorted).
pub fn list(model_dir: &Path) -> Result<Vec<String>> {
    let cdir = model_dir.join(md::CLASSES_DIR);
    if !cdir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(&cdir).map_err(|e| Error::io(&cdir, e))? {
        let e = e.map_err(|e| Error::io(&cdir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && exists(model_dir, &name) {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_temporaries_of_dead_processes_are_stale() {
        assert!(!is_stale_temp("v000001"));
        assert!(!is_stale_temp("CURRENT"));
        assert!(!is_stale_temp(&format!(
            ".v000002.tmp-{}",
            std::process::id()
        )));
        // PID 0 is never a user process.
        assert!(is_stale_temp(".v000002.tmp-0"));
        assert!(is_stale_temp(".model.json.tmp-x"));
        if cfg!(target_os = "linux") {
            assert!(is_stale_temp(".flow.safetensors.tmp-4000000000-3"));
            assert!(
                !is_stale_temp(".flow.safetensors.tmp-1-0"),
                "pid 1 is alive"
            );
        }
    }
}
