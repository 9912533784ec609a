//! Visual outputs: heatmap overlays ([`overlay`], also used by `pmad inspect`) and the static
//! HTML report of `pmad eval --report DIR`.
//!
//! The report is a folder: `index.html` (every class: metrics table, plots, worst cases) and
//! per class a folder `NAME/` with its SVG plots ([`plots`]) and its worst cases' PNG
//! thumbnails ([`thumbnails`]). Everything is linked relatively and nothing is fetched from
//! elsewhere, so the folder can be opened from disk, copied or archived. It is built in a
//! sibling `DIR.tmp-<pid>` and renamed into place at the end: a failed run leaves no half
//! report (and an older report at DIR stays until the new one is complete).

pub mod html;
pub mod overlay;
pub mod plots;
pub mod thumbnails;

use crate::detector::evaluate::{ClassEvaluation, WorstCase};
use crate::error::{Error, Result};
use crate::metrics::DEFAULT_MAX_FPR;
use html::{CaseRow, ClassSection};
use std::path::{Path, PathBuf};

/// How many highest-scored normal images and lowest-scored defects the report shows per class.
pub const WORST_CASES: usize = 4;

/// Checks that `dir` can take a report: it does not exist, is an empty folder, or holds a
/// previous report (its `index.html`), which is then replaced. Call before the evaluation so
/// a bad destination fails before the expensive part.
pub fn check_destination(dir: &Path) -> Result<()> {
    if dir.file_name().is_none() {
        return Err(Error::invalid(format!(
            "--report {}: name a folder (not '.', '..' or a root)",
            dir.display()
        )));
    }
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "--report {}: exists and is not a folder",
            dir.display()
        )));
    }
    let empty = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .next()
        .is_none();
    if empty || dir.join("index.html").is_file() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "--report {}: exists and is neither empty nor a previous report (no index.html); \
             not overwriting it",
            dir.display()
        )))
    }
}

/// A sibling of `dir` named `NAME.SUFFIX-<pid>`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    dir.with_file_name(format!("{name}.{suffix}-{}", std::process::id()))
}

/// Writes the report of `classes` (name, evaluation) to `dir`, atomically (see the module
/// docs). `info` lines go under the title; image paths are shown relative to `data_root`.
pub fn write_report(
    dir: &Path,
    info: &[String],
    data_root: &Path,
    classes: &[(&str, &ClassEvaluation)],
) -> Result<()> {
    check_destination(dir)?;
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let built = build(&tmp, info, data_root, classes).and_then(|()| replace(dir, &tmp));
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built
}

/// Moves the finished `tmp` to `dir`, replacing a previous report there.
fn replace(dir: &Path, tmp: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e));
    }
    // Checked again: the folder may have changed during the evaluation.
    check_destination(dir)?;
    let old = sibling(dir, "old");
    std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        let _ = std::fs::rename(&old, dir);
        return Err(Error::io(dir, e));
    }
    std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
}

/// Writes every file of the report into the (new, empty) folder `out`.
fn build(
    out: &Path,
    info: &[String],
    data_root: &Path,
    classes: &[(&str, &ClassEvaluation)],
) -> Result<()> {
    let mut sections = Vec::with_capacity(classes.len());
    for (name, eval) in classes {
        let class_dir = out.join(name);
        std::fs::create_dir_all(&class_dir).map_err(|e| Error::io(&class_dir, e))?;
        sections.push(class_section(out, name, eval, data_root)?);
    }
    let page = html::index_html("pmad eval report", info, &sections);
    let index = out.join("index.html");
    std::fs::write(&index, page).map_err(|e| Error::io(&index, e))
}

/// A metric for the table, "-" when not available (no masks, no verdicts).
fn metric(m: Option<f64>) -> String {
    match m {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "-".into(),
    }
}

/// Writes one class's plots and thumbnails under `out/NAME/`; returns its page section.
fn class_section(
    out: &Path,
    name: &str,
    eval: &ClassEvaluation,
    data_root: &Path,
) -> Result<ClassSection> {
    let (r, d) = (&eval.report, &eval.details);
    // The calibrated threshold applies unless this run changed the image score (its verdict
    // rates are then NaN, see `pmad eval --image-score`).
    let threshold = r.false_alarm_rate.is_finite().then_some(r.threshold);
    let normal: Vec<f32> = d
        .images
        .iter()
        .filter(|i| !i.defective)
        .map(|i| i.score)
        .collect();
    let defective: Vec<f32> = d
        .images
        .iter()
        .filter(|i| i.defective)
        .map(|i| i.score)
        .collect();
    let metrics = vec![
        ("image AUROC", metric(Some(r.image_auroc))),
        ("pixel AUROC", metric(r.pixel_auroc)),
        ("AUPRO (FPR <= 0.3)", metric(r.aupro)),
        ("image F1-max", metric(Some(r.f1_max))),
        ("pixel F1-max", metric(r.pixel_f1_max)),
        (
            "calibrated threshold",
            threshold.map_or("-".into(), |t| format!("{t:.4}")),
        ),
        (
            "false-alarm rate at threshold",
            metric(Some(r.false_alarm_rate)),
        ),
        (
            "detection rate at threshold",
            metric(Some(r.detection_rate)),
        ),
        (
            "test images (normal / defective)",
            format!("{} ({} / {})", r.n_images, normal.len(), defective.len()),
        ),
        ("seconds", format!("{:.1}", r.seconds)),
    ];

    let mut plots = Vec::new();
    let mut plot = |file: &str, caption: String, svg: String| -> Result<()> {
        let rel = format!("{name}/{file}");
        let path = out.join(&rel);
        std::fs::write(&path, svg).map_err(|e| Error::io(&path, e))?;
        plots.push((rel, caption));
        Ok(())
    };
    plot(
        "roc.svg",
        "Image-level ROC curve".into(),
        plots::roc_svg(&d.roc, r.image_auroc)?,
    )?;
    if let (Some(pro), Some(aupro)) = (&d.pro, r.aupro) {
        plot(
            "pro.svg",
            format!("Pixel-level PRO curve up to FPR {DEFAULT_MAX_FPR}"),
            plots::pro_svg(pro, DEFAULT_MAX_FPR, aupro)?,
        )?;
    }
    let hist_caption = match threshold {
        Some(_) => {
            "Image scores of normal vs defective test images; the line is the \
                    calibrated threshold"
        }
        None => {
            "Image scores of normal vs defective test images (no calibrated threshold \
                 for this image score)"
        }
    };
    plot(
        "scores.svg",
        hist_caption.into(),
        plots::histogram_svg(&normal, &defective, threshold)?,
    )?;

    let mut cases = Vec::new();
    let groups: [(&[WorstCase], &str, &str); 2] = [
        (&d.worst_good, "normal", "highest"),
        (&d.worst_defects, "defective", "lowest"),
    ];
    for (list, kind, order) in groups {
        for (rank, w) in list.iter().enumerate() {
            let rec = d.images.get(w.image).ok_or_else(|| {
                Error::invalid(format!("report: worst case {} out of range", w.image))
            })?;
            let stem = format!("{name}/{kind}-{}", rank + 1);
            let thumbs = thumbnails::write_case(out, &stem, rec, &w.map, r.threshold)?;
            let file = rec.path.strip_prefix(data_root).unwrap_or(&rec.path);
            cases.push(CaseRow {
                kind: format!("{kind}, #{} {order} score", rank + 1),
                file: file.display().to_string(),
                score: rec.score,
                verdict: threshold.map(|t| if rec.score > t { "anomalous" } else { "normal" }),
                thumbs,
            });
        }
    }
    Ok(ClassSection {
        name: name.to_string(),
        metrics,
        plots,
        cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_rules() {
        let base = std::env::temp_dir().join(format!("pmad-report-dest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        // Missing or empty: fine.
        check_destination(&base.join("new")).unwrap();
        check_destination(&base).unwrap();
        // A folder of other files: refused; a previous report: fine.
        std::fs::write(base.join("notes.txt"), "x").unwrap();
        assert!(check_destination(&base).is_err());
        std::fs::write(base.join("index.html"), "x").unwrap();
        check_destination(&base).unwrap();
        // A file, and a path without a folder name.
        assert!(check_destination(&base.join("notes.txt")).is_err());
        assert!(check_destination(Path::new("..")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A class evaluated without masks and with an ablation image score (no verdicts): no
    /// PRO plot, "no mask" for the defect, "-" for the missing metrics.
    #[test]
    fn a_class_without_masks_or_verdicts() {
        use crate::detector::evaluate::{ClassDetails, ClassReport, ImageRecord};
        use crate::detector::scoring::AnomalyMap;
        let base = std::env::temp_dir().join(format!("pmad-report-nomask-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let img = crate::data::RgbImage {
            width: 8,
            height: 6,
            pixels: vec![90; 8 * 6 * 3],
        };
        let png = base.join("x.png");
        std::fs::write(&png, overlay::encode_png(&img, &png).unwrap()).unwrap();
        let record = |defective, score| ImageRecord {
            path: png.clone(),
            mask: None,
            defective,
            score,
        };
        let map = |score| AnomalyMap {
            size: 4,
            values: vec![score; 16],
            score,
        };
        let eval = ClassEvaluation {
            report: ClassReport {
                image_auroc: 1.0,
                pixel_auroc: None,
                aupro: None,
                f1_max: 1.0,
                pixel_f1_max: None,
                threshold: 0.5,
                false_alarm_rate: f64::NAN,
                detection_rate: f64::NAN,
                n_images: 2,
                seconds: 0.1,
            },
            details: ClassDetails {
                roc: vec![(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)],
                pro: None,
                images: vec![record(false, 0.2), record(true, 0.9)],
                worst_good: vec![WorstCase {
                    image: 0,
                    map: map(0.2),
                }],
                worst_defects: vec![WorstCase {
                    image: 1,
                    map: map(0.9),
                }],
            },
        };
        let dir = base.join("report");
        write_report(&dir, &[], &base, &[("cls", &eval)]).unwrap();
        let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
        assert!(html.contains("no mask") && html.contains("x.png"), "{html}");
        assert!(dir.join("cls/roc.svg").is_file() && dir.join("cls/scores.svg").is_file());
        assert!(!dir.join("cls/pro.svg").exists() && !html.contains("pro.svg"));
        assert!(dir.join("cls/normal-1_mask.png").is_file());
        assert!(!dir.join("cls/defective-1_mask.png").exists());
        assert!(
            !html.contains("anomalous"),
            "no verdicts without a threshold"
        );
        // A broken image fails the report and leaves nothing (the old report stays).
        std::fs::write(&png, b"not a png").unwrap();
        assert!(write_report(&dir, &[], &base, &[("cls", &eval)]).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("index.html")).unwrap(),
            html
        );
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
