//! `pmad eval --report DIR` end to end: a small model on synthetic data, the report's files
//! (every link resolves inside DIR, nothing remote, SVG plots, PNG thumbnails), a failed or
//! refused eval leaving no report, and the page opened in a real headless browser (chromium:
//! a non-blank screenshot, the expected DOM, no console errors). Without chromium the browser
//! part fails in CI (`PMAD_REQUIRE_ASSETS`) and is skipped elsewhere.

mod common;
use common::{pmad, pmad_ok as ok};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CLASSES: [&str; 2] = ["synth_fabric", "synth_cap"];
/// Worst cases per kind (`pmad::report::WORST_CASES`), each test set holding exactly as many.
const WORST: usize = pmad::report::WORST_CASES;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every value of `attr="..."` in `html`.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let key = format!("{attr}=\"");
    html.match_indices(&key)
        .filter_map(|(i, _)| {
            let rest = &html[i + key.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

/// Synthetic data (three classes), a prototypes-only model of synth_fabric, and
/// `eval --register --report` over two classes (synth_cap registered on the way): (base folder, report folder).
fn build_report() -> (PathBuf, PathBuf) {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmad-eval-report");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let (data, model, report) = (base.join("data"), base.join("model"), base.join("report"));
    let n = WORST.to_string();
    ok(&[
        "synth",
        "--out",
        s(&data),
        "--classes",
        "3",
        "--train",
        "4",
        "--test-good",
        &n,
        "--test-bad",
        &n,
        "--size",
        "64",
    ]);
    ok(&[
        "train",
        "--data",
        s(&data),
        "--classes",
        CLASSES[0],
        "--out",
        s(&model),
        "--skip",
        "flow,tokenizer,vit",
    ]);
    let out = ok(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--classes",
        &CLASSES.join(","),
        "--register",
        "--report",
        s(&report),
    ]);
    assert!(out.contains("report: "), "{out}");
    (base, report)
}

/// The files: every link resolves inside the folder, nothing remote, plots are SVG,
/// thumbnails PNG. Returns the page.
fn check_files(report: &Path) -> String {
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "remote reference in index.html"
    );
    let ids = attr_values(&html, "id");
    let srcs = attr_values(&html, "src");
    for link in srcs.iter().chain(&attr_values(&html, "href")) {
        if let Some(anchor) = link.strip_prefix('#') {
            assert!(ids.iter().any(|i| i == anchor), "dangling anchor {link}");
            continue;
        }
        assert!(
            !link.contains(':') && !link.starts_with('/') && !link.contains(".."),
            "not a relative link inside the report: {link}"
        );
        assert!(report.join(link).is_file(), "missing {link}");
    }
    let (mut svgs, mut pngs) = (0, 0);
    for link in &srcs {
        let path = report.join(link);
        if link.ends_with(".svg") {
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{link}"
            );
            assert!(
                svg.contains("xmlns=\"http://www.w3.org/2000/svg\""),
                "{link}"
            );
            // The namespace is the only URL; no linked assets in a plot.
            let without_ns = svg.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !without_ns.contains("http") && !without_ns.contains("href"),
                "{link}"
            );
            svgs += 1;
        } else {
            let img = image::open(&path).unwrap_or_else(|e| panic!("{link}: {e}"));
            assert_eq!((img.width(), img.height()), (128, 128), "{link}");
            assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG", "{link}");
            pngs += 1;
        }
    }
    // Per class: ROC, PRO and histogram; 2 x WORST cases of image | overlay | mask (the
    // synthetic MVTec layout has masks, and a normal image's mask is empty).
    assert_eq!(svgs, 3 * CLASSES.len());
    assert_eq!(pngs, 2 * WORST * 3 * CLASSES.len());
    for c in CLASSES {
        assert!(html.contains(&format!("id=\"class-{c}\"")), "{c}");
    }
    for m in [
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        "F1-max",
        "false-alarm rate",
    ] {
        assert!(html.contains(m), "{m}");
    }
    html
}

/// Runs `cmd` and kills it after `limit`: (stdout, stderr), or None on time out.
fn run_with_timeout(mut cmd: Command, limit: Duration) -> Option<(String, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes on threads so a chatty browser cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((t_out.join().unwrap(), t_err.join().unwrap()))
}

/// Chromium, headless, on a fresh profile with everything that reaches out switched off.
fn chromium(profile: &Path, extra: &[String], page: &Path) -> (String, String) {
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()));
    run_with_timeout(cmd, Duration::from_secs(60)).expect("chromium ran over 60 s")
}

/// Console errors in chromium's log (page script errors, failed loads reported there).
fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("Uncaught") || l.contains("ERROR:CONSOLE"))
        .collect()
}

fn check_in_browser(base: &Path, report: &Path) {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            !common::required(),
            "chromium is required (PMAD_REQUIRE_ASSETS) but {CHROMIUM} is missing \
             (scripts/test.sh installs it as root)"
        );
        eprintln!("skipped: no chromium");
        return;
    }
    let page = std::path::absolute(report.join("index.html")).unwrap();
    let shot = base.join("screenshot.png");
    let (_, log) = chromium(
        &base.join("profile-shot"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,2000".into(),
        ],
        &page,
    );
    assert!(console_errors(&log).is_empty(), "{log}");
    // Not blank: a white (or any single-colour) page has no variance.
    let img = image::open(&shot)
        .unwrap_or_else(|e| panic!("no screenshot {}: {e}\n{log}", shot.display()))
        .to_luma8();
    assert_eq!((img.width(), img.height()), (1200, 2000));
    let px: Vec<f64> = img.pixels().map(|p| f64::from(p.0[0])).collect();
    let mean = px.iter().sum::<f64>() / px.len() as f64;
    let var = px.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / px.len() as f64;
    assert!(var > 100.0, "blank screenshot? luma variance {var}");
    eprintln!("screenshot: {} (luma variance {var:.0})", shot.display());

    // The DOM as the browser built it: every class section, table and image element.
    let (dom, log) = chromium(&base.join("profile-dom"), &["--dump-dom".into()], &page);
    assert!(console_errors(&log).is_empty(), "{log}");
    for c in CLASSES {
        assert!(dom.contains(&format!("id=\"class-{c}\"")), "{c}: {dom}");
    }
    assert_eq!(
        dom.matches("<table class=\"metrics\"").count(),
        CLASSES.len()
    );
    assert_eq!(dom.matches("<table class=\"cases\"").count(), CLASSES.len());
    let imgs = (3 + 2 * WORST * 3) * CLASSES.len();
    assert_eq!(dom.matches("<img ").count(), imgs, "{dom}");
}

/// Build (`NAME.tmp-PID`) or swap (`NAME.old-PID`) folders left in `base`.
fn leftovers(base: &Path) -> Vec<String> {
    std::fs::read_dir(base)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect()
}

#[test]
fn eval_report_is_self_contained_and_renders_in_a_browser() {
    if common::need_backbone().is_none() {
        return;
    }
    let (base, report) = build_report();
    let html = check_files(&report);
    assert!(leftovers(&base).is_empty(), "{:?}", leftovers(&base));
    check_in_browser(&base, &report);

    let (data, model) = (base.join("data"), base.join("model"));
    let eval = |classes: &str, dir: &Path| {
        pmad(&[
            "eval",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--classes",
            classes,
            "--report",
            s(dir),
        ])
    };
    // An eval failing after its first class (synth_wood is not registered) leaves no
    // report, nor a half one.
    let failed = base.join("failed");
    let out = eval(&format!("{},synth_wood", CLASSES[0]), &failed);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synth_wood"), "{err}");
    assert!(!failed.exists());
    assert!(leftovers(&base).is_empty(), "{:?}", leftovers(&base));
    // A folder that is not a report is not overwritten.
    let other = base.join("data");
    let out = eval(CLASSES[0], &other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not overwriting"), "{err}");
    // A previous report is replaced whole.
    let out = eval(CLASSES[1], &report);
    assert!(out.status.success());
    let again = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert_ne!(again, html);
    assert!(!again.contains("id=\"class-synth_fabric\"") && !report.join(CLASSES[0]).exists());
}
