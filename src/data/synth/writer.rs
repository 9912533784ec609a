//! Writes a synthetic dataset to disk in one of the layouts pmad reads (MVTec AD by default;
//! see [`crate::data::layout`]), atomically: everything goes to a sibling `DIR.tmp-PID`
//! folder that is renamed to `DIR` only once complete, so a crash or an error never leaves a
//! half-written dataset under the real name.

use super::{Split, SynthClass, SynthConfig, image_seed, render};
use crate::data::layout::Layout;
use crate::error::{Error, Result};
use ::image::{ExtendedColorType, ImageEncoder, codecs::bmp::BmpEncoder, codecs::png::PngEncoder};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The manifest file at the dataset root (its presence also marks a folder `--force` may
/// replace).
pub const MANIFEST: &str = "synth.json";

/// How many test images of one defect type a class got.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DefectCount {
    pub defect: String,
    pub count: usize,
}

/// What was written for one class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassSummary {
    pub name: String,
    pub description: String,
    pub object: bool,
    pub grayscale: bool,
    pub train: usize,
    pub test_good: usize,
    pub test_defects: Vec<DefectCount>,
}

/// What `generate` wrote.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SynthSummary {
    pub generator: String,
    pub version: String,
    pub layout: String,
    pub seed: u64,
    pub size: usize,
    pub classes: Vec<ClassSummary>,
    #[serde(skip)]
    pub out: PathBuf,
}

impl SynthSummary {
    /// Images written (masks not counted).
    pub fn images(&self) -> usize {
        self.classes
            .iter()
            .map(|c| c.train + c.test_good + c.test_defects.iter().map(|d| d.count).sum::<usize>())
            .sum()
    }
}

/// Generates the dataset `cfg` describes into the folder `out` (created; its parent too).
/// Refuses a non-empty `out` unless `cfg.force`, and even then only replaces a folder that
/// holds a previous synthetic dataset (a `synth.json`), never arbitrary data.
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    generate_layout(out, cfg, Layout::Mvtec)
}

/// [`generate`] in `layout`: mvtec `CLASS/{train,test,ground_truth}`; folder `CLASS/{good,
/// bad,masks}` (the test set) beside `CLASS-train/good` (the images to register from); visa
/// `CLASS/Data/{Images,Masks}` listed in `split_csv/1cls.csv`; btad `CLASS/{train/ok,test/ok,
/// test/ko}` with BMP masks in `ground_truth/ko`.
pub fn generate_layout(out: &Path, cfg: &SynthConfig, layout: Layout) -> Result<SynthSummary> {
    cfg.validate()?;
    if layout == Layout::Folder && cfg.test_good == 0 {
        return Err(Error::invalid(
            "the folder layout needs at least one normal test image (its good/ folder)",
        ));
    }
    let Some(name) = out.file_name() else {
        return Err(Error::invalid(format!(
            "{}: the output folder needs a name",
            out.display()
        )));
    };
    let replace = check_target(out, cfg.force)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = parent.join(format!(
        "{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let written = write_dataset(&tmp, cfg, layout).and_then(|summary| {
        if replace {
            std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
        Ok(summary)
    });
    match written {
        Ok(mut summary) => {
            summary.out = out.to_path_buf();
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Whether an existing `out` must be removed first; an error if it may not be replaced.
fn check_target(out: &Path, force: bool) -> Result<bool> {
    if !out.exists() {
        return Ok(false);
    }
    if !out.is_dir() {
        return Err(Error::format(out, "exists and is not a folder"));
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .next()
        .is_none();
    if empty {
        return Ok(true);
    }
    if !force {
        return Err(Error::format(
            out,
            "folder exists and is not empty; pass --force to replace it",
        ));
    }
    if !out.join(MANIFEST).is_file() {
        return Err(Error::format(
            out,
            format!("refusing to replace a folder that is not a synthetic dataset (no {MANIFEST})"),
        ));
    }
    Ok(true)
}

/// One image to render and write.
struct Job {
    class: SynthClass,
    split: Split,
    index: usize,
    image: PathBuf,
    mask: Option<PathBuf>,
}

/// `total` defective images spread round-robin over `kinds` defect types.
fn defect_counts(total: usize, kinds: usize) -> Vec<usize> {
    (0..kinds)
        .map(|k| (total + kinds - 1 - k) / kinds)
        .collect()
}

/// `000.png`-style names, wide enough that name order is index order.
fn file_stem(index: usize, count: usize) -> String {
    let width = count.saturating_sub(1).to_string().len().max(3);
    format!("{index:0width$}")
}

/// Where image `stem` of `split` of `class` and its mask go in `layout`, relative to the
/// dataset root.
fn paths(
    layout: Layout,
    class: SynthClass,
    split: Split,
    stem: &str,
) -> (PathBuf, Option<PathBuf>) {
    let c = PathBuf::from(class.name());
    match (layout, split) {
        (Layout::Mvtec, Split::Train) => (c.join(format!("train/good/{stem}.png")), None),
        (Layout::Mvtec, Split::TestGood) => (c.join(format!("test/good/{stem}.png")), None),
        (Layout::Mvtec, Split::TestDefect(k)) => (
            c.join(format!("test/{}/{stem}.png", k.name())),
            Some(c.join(format!("ground_truth/{}/{stem}_mask.png", k.name()))),
        ),
        (Layout::Folder, Split::Train) => (
            PathBuf::from(format!("{}-train/good/{stem}.png", class.name())),
            None,
        ),
        (Layout::Folder, Split::TestGood) => (c.join(format!("good/{stem}.png")), None),
        (Layout::Folder, Split::TestDefect(k)) => (
            c.join(format!("bad/{}_{stem}.png", k.name())),
            Some(c.join(format!("masks/{}_{stem}_mask.png", k.name()))),
        ),
        (Layout::Visa, Split::Train) => {
            (c.join(format!("Data/Images/Normal/train_{stem}.png")), None)
        }
        (Layout::Visa, Split::TestGood) => {
            (c.join(format!("Data/Images/Normal/test_{stem}.png")), None)
        }
        (Layout::Visa, Split::TestDefect(k)) => (
            c.join(format!("Data/Images/Anomaly/{}_{stem}.png", k.name())),
            Some(c.join(format!("Data/Masks/Anomaly/{}_{stem}.png", k.name()))),
        ),
        (Layout::Btad, Split::Train) => (c.join(format!("train/ok/{stem}.png")), None),
        (Layout::Btad, Split::TestGood) => (c.join(format!("test/ok/{stem}.png")), None),
        (Layout::Btad, Split::TestDefect(k)) => (
            c.join(format!("test/ko/{}_{stem}.png", k.name())),
            Some(c.join(format!("ground_truth/ko/{}_{stem}.bmp", k.name()))),
        ),
    }
}

fn write_dataset(dir: &Path, cfg: &SynthConfig, layout: Layout) -> Result<SynthSummary> {
    let mut jobs = Vec::new();
    let mut classes = Vec::new();
    for &class in cfg.class_list() {
        let job = |split: Split, index: usize, count: usize| {
            let (image, mask) = paths(layout, class, split, &file_stem(index, count));
            Job {
                class,
                split,
                index,
                image: dir.join(image),
                mask: mask.map(|m| dir.join(m)),
            }
        };
        for (split, count) in [(Split::Train, cfg.train), (Split::TestGood, cfg.test_good)] {
            jobs.extend((0..count).map(|index| job(split, index, count)));
        }
        let kinds = class.defects();
        let mut test_defects = Vec::new();
        for (&kind, count) in kinds.iter().zip(defect_counts(cfg.test_bad, kinds.len())) {
            jobs.extend((0..count).map(|index| job(Split::TestDefect(kind), index, count)));
            if count > 0 {
                test_defects.push(DefectCount {
                    defect: kind.name().to_string(),
                    count,
                });
            }
        }
        classes.push(ClassSummary {
            name: class.name().to_string(),
            description: class.description().to_string(),
            object: class.is_object(),
            grayscale: class.grayscale(),
            train: cfg.train,
            test_good: cfg.test_good,
            test_defects,
        });
    }
    let mut folders: Vec<&Path> = jobs
        .iter()
        .flat_map(|j| [j.image.parent(), j.mask.as_deref().and_then(Path::parent)])
        .flatten()
        .collect();
    folders.sort();
    folders.dedup();
    for f in folders {
        std::fs::create_dir_all(f).map_err(|e| Error::io(f, e))?;
    }
    jobs.par_iter().try_for_each(|job| write_job(job, cfg))?;
    if layout == Layout::Visa {
        write_visa_csv(dir, &jobs)?;
    }
    let summary = SynthSummary {
        generator: "pmad synth".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        layout: layout.name().to_string(),
        seed: cfg.seed,
        size: cfg.size,
        classes,
        out: dir.to_path_buf(),
    };
    write_manifest(dir, &summary)?;
    Ok(summary)
}

fn write_job(job: &Job, cfg: &SynthConfig) -> Result<()> {
    let defect = match job.split {
        Split::TestDefect(kind) => Some(kind),
        _ => None,
    };
    let seed = image_seed(cfg.seed, job.class, job.split, job.index);
    let (image, _, mask) = render(job.class, cfg.size, seed, defect, false);
    if job.class.grayscale() {
        let luma: Vec<u8> = image.pixels.chunks_exact(3).map(|p| p[0]).collect();
        write_png(&job.image, cfg.size, &luma, ExtendedColorType::L8)?;
    } else {
        write_png(&job.image, cfg.size, &image.pixels, ExtendedColorType::Rgb8)?;
    }
    if let Some(path) = &job.mask {
        let bytes: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
        if path.extension().is_some_and(|e| e == "bmp") {
            write_bmp(path, cfg.size, &bytes)?;
        } else {
            write_png(path, cfg.size, &bytes, ExtendedColorType::L8)?;
        }
    }
    Ok(())
}

/// A grayscale BMP (BTAD ships some masks as BMP; this keeps that reader path exercised).
fn write_bmp(path: &Path, size: usize, data: &[u8]) -> Result<()> {
    let mut buf = Vec::new();
    BmpEncoder::new(&mut buf)
        .write_image(data, size as u32, size as u32, ExtendedColorType::L8)
        .map_err(|e| Error::format(path, format!("cannot encode BMP: {e}")))?;
    std::fs::write(path, buf).map_err(|e| Error::io(path, e))
}

/// VisA's `split_csv/1cls.csv`: one row per image, paths relative to the root.
fn write_visa_csv(dir: &Path, jobs: &[Job]) -> Result<()> {
    let rel = |p: &Path| {
        p.strip_prefix(dir)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    };
    let mut csv = String::from("object,split,label,image,mask\n");
    for j in jobs {
        let (split, label) = match j.split {
            Split::Train => ("train", "normal"),
            Split::TestGood => ("test", "normal"),
            Split::TestDefect(_) => ("test", "anomaly"),
        };
        let mask = j.mask.as_deref().map(rel).unwrap_or_default();
        csv += &format!(
            "{},{split},{label},{},{mask}\n",
            j.class.name(),
            rel(&j.image)
        );
    }
    let path = dir.join(crate::data::layout::VISA_CSV);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(&path, csv).map_err(|e| Error::io(&path, e))
}

fn write_png(path: &Path, size: usize, data: &[u8], colour: ExtendedColorType) -> Result<()> {
    let mut buf = Vec::new();
    PngEncoder::new(&mut buf)
        .write_image(data, size as u32, size as u32, colour)
        .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    std::fs::write(path, buf).map_err(|e| Error::io(path, e))
}

/// The layout line of `README.txt`.
fn layout_text(layout: &str) -> &'static str {
    match layout {
        "folder" => {
            "folder (one class per folder): CLASS/good/NNN.png (normal test images), \
             CLASS/bad/DEFECT_NNN.png, CLASS/masks/DEFECT_NNN_mask.png; CLASS-train/good/NNN.png \
             (normal images to register from)"
        }
        "visa" => {
            "VisA: split_csv/1cls.csv (object,split,label,image,mask) listing \
             CLASS/Data/Images/{Normal,Anomaly}/*.png and CLASS/Data/Masks/Anomaly/*.png"
        }
        "btad" => {
            "BTAD: CLASS/train/ok/NNN.png, CLASS/test/ok/NNN.png, CLASS/test/ko/DEFECT_NNN.png, \
             CLASS/ground_truth/ko/DEFECT_NNN.bmp"
        }
        _ => {
            "MVTec AD: CLASS/train/good/NNN.png, CLASS/test/good/NNN.png, \
             CLASS/test/DEFECT/NNN.png, CLASS/ground_truth/DEFECT/NNN_mask.png"
        }
    }
}

/// `synth.json` (machine-readable) and `README.txt` (for people) at the dataset root.
fn write_manifest(dir: &Path, summary: &SynthSummary) -> Result<()> {
    let json = serde_json::to_string_pretty(summary)
        .map_err(|e| Error::invalid(format!("manifest: {e}")))?;
    let path = dir.join(MANIFEST);
    std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))?;
    let mut text = format!(
        "Synthetic industrial defect dataset, written by `pmad synth` (pmad {}).\n\
         seed {}, images {}x{} PNG; regenerate with:\n  pmad synth --out DIR --seed {} --size {} --classes {} \
         --train {} --test-good {} --test-bad {}\n\n\
         Layout: {}\n\
         Masks (L, 0/255) are exact: outside a mask the image is exactly its defect-free \
         version.\n\n\
         Classes:\n",
        summary.version,
        summary.seed,
        summary.size,
        summary.size,
        summary.seed,
        summary.size,
        summary.classes.len(),
        summary.classes.first().map_or(0, |c| c.train),
        summary.classes.first().map_or(0, |c| c.test_good),
        summary.classes.first().map_or(0, |c| c
            .test_defects
            .iter()
            .map(|d| d.count)
            .sum::<usize>()),
        layout_text(&summary.layout),
    );
    for c in &summary.classes {
        let defects: Vec<String> = c
            .test_defects
            .iter()
            .map(|d| format!("{} {}", d.defect, d.count))
            .collect();
        text += &format!(
            "  {}: {}\n    train/good {}, test/good {}, defects: {}\n",
            c.name,
            c.description,
            c.train,
            c.test_good,
            if defects.is_empty() {
                "none".to_string()
            } else {
                defects.join(", ")
            }
        );
    }
    let path = dir.join("README.txt");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_sort_in_index_order() {
        assert_eq!(file_stem(7, 20), "007");
        assert_eq!(file_stem(7, 1001), "0007");
        assert_eq!(file_stem(999, 1000), "999");
    }

    #[test]
    fn defect_counts_round_robin() {
        assert_eq!(defect_counts(20, 3), vec![7, 7, 6]);
        assert_eq!(defect_counts(20, 4), vec![5, 5, 5, 5]);
        assert_eq!(defect_counts(2, 3), vec![1, 1, 0]);
        assert_eq!(defect_counts(0, 4), vec![0, 0, 0, 0]);
    }
}
