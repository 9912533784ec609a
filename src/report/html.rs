//! The report's `index.html`: one page holding every class (a table of contents, then per
//! class its metrics table, its plots and its worst cases). Plain HTML and an inline style
//! sheet; every image is a relative link to a file in the report folder.

use super::thumbnails::{CaseThumbnails, THUMB};
use std::fmt::Write;

/// One worst case's row.
pub struct CaseRow {
    /// What makes it a worst case, e.g. "normal, 1st highest score".
    pub kind: String,
    /// The image's path as shown (relative to the data folder where possible).
    pub file: String,
    pub score: f32,
    /// "anomalous" / "normal" at the calibrated threshold, when it applies.
    pub verdict: Option<&'static str>,
    pub thumbs: CaseThumbnails,
}

/// One class's section.
pub struct ClassSection {
    pub name: String,
    /// (metric, value) rows of the metrics table, values already formatted.
    pub metrics: Vec<(&'static str, String)>,
    /// (file name under the report folder, caption) of each plot.
    pub plots: Vec<(String, String)>,
    pub cases: Vec<CaseRow>,
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a relative file name for an `src`/`href` (class names and our own file
/// names are plain already; this keeps a link valid whatever they hold).
fn url(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_./".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 24px; color: #222; }
h1 { margin-bottom: 4px; }
.info { color: #555; margin-top: 0; }
section.class { border-top: 2px solid #ccc; margin-top: 28px; padding-top: 8px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
table.metrics td.value { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; }
figcaption { color: #555; font-size: 90%; max-width: 360px; }
td.missing { color: #999; text-align: center; }
";

/// The whole page. `info` lines (e.g. the model and data folders) go under the title.
pub fn index_html(title: &str, info: &[String], classes: &[ClassSection]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    for line in info {
        let _ = writeln!(h, "<p class=\"info\">{}</p>", escape(line));
    }
    h.push_str("<nav>\n<ul>\n");
    for c in classes {
        let _ = writeln!(
            h,
            "<li><a href=\"#class-{id}\">{n}</a></li>",
            id = url(&c.name),
            n = escape(&c.name)
        );
    }
    h.push_str("</ul>\n</nav>\n");
    for c in classes {
        section(&mut h, c);
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn section(h: &mut String, c: &ClassSection) {
    let _ = writeln!(
        h,
        "<section class=\"class\" id=\"class-{id}\">\n<h2>{n}</h2>",
        id = url(&c.name),
        n = escape(&c.name)
    );
    h.push_str("<table class=\"metrics\">\n<tr><th>metric</th><th>value</th></tr>\n");
    for (k, v) in &c.metrics {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"value\">{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    h.push_str("</table>\n<div class=\"plots\">\n");
    for (file, caption) in &c.plots {
        let _ = writeln!(
            h,
            "<figure><img src=\"{f}\" alt=\"{a}\" width=\"{w}\" height=\"{h}\">\
             <figcaption>{a}</figcaption></figure>",
            f = url(file),
            a = escape(caption),
            w = super::plots::SIZE.0,
            h = super::plots::SIZE.1,
        );
    }
    h.push_str("</div>\n<h3>Worst cases</h3>\n");
    if c.cases.is_empty() {
        h.push_str("<p>No test images.</p>\n");
    } else {
        h.push_str(
            "<table class=\"cases\">\n<tr><th>case</th><th>image</th><th>overlay</th>\
             <th>ground truth</th><th>score</th><th>file</th></tr>\n",
        );
        for r in &c.cases {
            case_row(h, r);
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

fn case_row(h: &mut String, r: &CaseRow) {
    let img = |file: &str, alt: &str| {
        format!(
            "<td><img src=\"{}\" alt=\"{}\" width=\"{THUMB}\" height=\"{THUMB}\"></td>",
            url(file),
            escape(alt)
        )
    };
    let mask = match &r.thumbs.mask {
        Some(m) => img(m, "ground-truth mask"),
        None => "<td class=\"missing\">no mask</td>".to_string(),
    };
    let verdict = r.verdict.map(|v| format!("<br>{v}")).unwrap_or_default();
    let _ = writeln!(
        h,
        "<tr><td>{kind}</td>{i}{o}{mask}<td class=\"value\">{s:.4}{verdict}</td><td>{f}</td></tr>",
        kind = escape(&r.kind),
        i = img(&r.thumbs.image, "test image"),
        o = img(&r.thumbs.overlay, "heatmap overlay"),
        s = r.score,
        f = escape(&r.file)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_links_encoded() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(url("cls-1/roc.svg"), "cls-1/roc.svg");
        assert_eq!(url("a b#?.png"), "a%20b%23%3F.png");
    }

    #[test]
    fn the_page_lists_every_class() {
        let c = ClassSection {
            name: "bottle".into(),
            metrics: vec![("image AUROC", "0.900".into())],
            plots: vec![("bottle/roc.svg".into(), "ROC".into())],
            cases: Vec::new(),
        };
        let page = index_html("t <1>", &["model: m".into()], &[c]);
        assert!(page.contains("<title>t &lt;1&gt;</title>"));
        assert!(page.contains("href=\"#class-bottle\"") && page.contains("id=\"class-bottle\""));
        assert!(page.contains("src=\"bottle/roc.svg\""));
        assert!(page.trim_end().ends_with("</html>"));
    }
}
