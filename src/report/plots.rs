//! The report's SVG plots, drawn with `plotters`' SVG backend (text is left to the browser,
//! so no font is needed): the image-level ROC curve, the pixel-level PRO curve and the score
//! histogram of normal vs defective images.

use crate::error::{Error, Result};
use plotters::prelude::*;

/// Pixel size of every plot.
pub const SIZE: (u32, u32) = (360, 280);
const FONT: &str = "sans-serif";
const NORMAL: RGBColor = RGBColor(46, 125, 50);
const DEFECT: RGBColor = RGBColor(198, 40, 40);
const CURVE: RGBColor = RGBColor(21, 101, 192);

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("cannot draw a report plot: {e}"))
}

/// A curve on `[0, x_max] x [0, 1]` (ROC, PRO), with the chance line `y = x` when `chance`.
fn curve_svg(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_max: f64,
    points: &[(f64, f64)],
    chance: bool,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..x_max, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT, 12))
            .draw()
            .map_err(plot_err)?;
        if chance {
            let line = [(0.0, 0.0), (x_max, x_max.min(1.0))];
            chart
                .draw_series(LineSeries::new(line, BLACK.mix(0.3)))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                CURVE.stroke_width(2),
            ))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// The image-level ROC curve (`(fpr, tpr)` points) with its area in the title.
pub fn roc_svg(points: &[(f64, f64)], auroc: f64) -> Result<String> {
    curve_svg(
        &format!("Image ROC (AUROC {auroc:.3})"),
        "false positive rate",
        "true positive rate",
        1.0,
        points,
        true,
    )
}

/// The pixel-level PRO curve (`(fpr, pro)` points) up to `max_fpr`, AUPRO in the title.
pub fn pro_svg(points: &[(f64, f64)], max_fpr: f64, aupro: f64) -> Result<String> {
    curve_svg(
        &format!("Pixel PRO, FPR <= {max_fpr} (AUPRO {aupro:.3})"),
        "false positive rate (pixels)",
        "per-region overlap",
        max_fpr,
        points,
        false,
    )
}

/// Number of bins of the score histogram.
const BINS: usize = 20;

/// Counts of `scores` in `BINS` equal bins over `[lo, hi]` (the last bin closed).
fn bin_counts(scores: &[f32], lo: f64, hi: f64) -> Vec<usize> {
    let mut counts = vec![0; BINS];
    let width = (hi - lo) / BINS as f64;
    for &s in scores {
        let b = ((f64::from(s) - lo) / width).floor();
        // Non-finite scores (never from a finite map) fall in no bin.
        if b.is_finite() {
            counts[(b.max(0.0) as usize).min(BINS - 1)] += 1;
        }
    }
    counts
}

/// The image scores of normal and defective test images as two overlaid histograms, the
/// calibrated threshold (when it applies) as a vertical line.
pub fn histogram_svg(normal: &[f32], defective: &[f32], threshold: Option<f32>) -> Result<String> {
    let finite = normal
        .iter()
        .chain(defective)
        .chain(threshold.as_slice())
        .map(|&s| f64::from(s))
        .filter(|s| s.is_finite());
    let (mut lo, mut hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
        (lo.min(s), hi.max(s))
    });
    if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (0.0, 1.0);
    }
    // A margin so the extreme scores and the threshold line are not on the frame.
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo, hi) = (lo - pad, hi + pad);
    let width = (hi - lo) / BINS as f64;
    let groups = [
        ("normal", NORMAL, bin_counts(normal, lo, hi)),
        ("defective", DEFECT, bin_counts(defective, lo, hi)),
    ];
    let top = groups
        .iter()
        .flat_map(|g| g.2.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Image scores", (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(lo..hi, 0f64..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("image score")
            .y_desc("images")
            .label_style((FONT, 12))
            .draw()
            .map_err(plot_err)?;
        for (name, color, counts) in &groups {
            let color = *color;
            let bars = counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(b, &c)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + width, c as f64)],
                        color.mix(0.45).filled(),
                    )
                });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.45).filled())
                });
        }
        if let Some(t) = threshold.filter(|t| t.is_finite()) {
            let t = f64::from(t);
            chart
                .draw_series(LineSeries::new([(t, 0.0), (t, top)], BLACK.stroke_width(2)))
                .map_err(plot_err)?
                .label("threshold")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_range_with_the_top_closed() {
        let c = bin_counts(&[0.0, 0.04, 0.5, 1.0, f32::NAN], 0.0, 1.0);
        assert_eq!(c.iter().sum::<usize>(), 4);
        assert_eq!((c[0], c[10], c[BINS - 1]), (2, 1, 1));
    }

    #[test]
    fn plots_are_svg_documents() {
        let roc = roc_svg(&[(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)], 1.0).unwrap();
        let pro = pro_svg(&[(0.0, 0.0), (0.3, 0.9)], 0.3, 0.8).unwrap();
        let hist = histogram_svg(&[0.1, 0.2], &[0.8], Some(0.5)).unwrap();
        for svg in [roc, pro, hist] {
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{svg}"
            );
        }
        // Degenerate inputs still draw.
        histogram_svg(&[], &[], None).unwrap();
        histogram_svg(&[0.5, 0.5], &[0.5], Some(f32::NAN)).unwrap();
    }
}
