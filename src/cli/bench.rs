//! `pmad bench [--filter SUBSTR] [--json FILE|-] [--list]`: times the CPU kernels and the
//! backbone (see `pmad::bench` for the cases and the timing rule) and prints a table.
//! With `--json -` the JSON goes to stdout and the table to stderr, so a script can read it;
//! `--list` prints the cases and their shapes without running them. Thread count: the global
//! `--threads N`.

use clap::Args;
use pmad::bench::{BenchResult, Case, Config, Timing, run_case, select};
use pmad::{Error, Result};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Only the cases whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write the results as JSON to FILE (`-` for stdout; the table then goes to stderr).
    #[arg(long, value_name = "FILE|-")]
    pub json: Option<PathBuf>,
    /// List the cases and their shapes (as JSON with `--json`) without running them.
    #[arg(long)]
    pub list: bool,
    /// Timed seconds per case (after warm-up); at least 3 and at most 1000 calls are timed.
    #[arg(long, default_value_t = 1.0)]
    pub min_time: f64,
    /// Warm-up seconds per case (untimed, at least one call).
    #[arg(long, default_value_t = 0.2)]
    pub warmup: f64,
    /// Backbone weights (default: weights/efficientnet_lite0.safetensors).
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

/// What `--json` writes.
#[derive(Serialize)]
struct Report<'a> {
    pmad_version: &'static str,
    threads: usize,
    timing: Timing,
    results: &'a [BenchResult],
}

#[derive(Serialize)]
struct Listed<'a> {
    name: &'a str,
    unit: &'static str,
    work: f64,
    spec: &'a pmad::bench::Spec,
}

/// Writes `value` as JSON to a file, or to stdout for `-`.
fn write_json(path: &PathBuf, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::invalid(e.to_string()))?;
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").map_err(|e| Error::io("<stdout>", e))?;
        Ok(())
    } else {
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

fn header() -> String {
    format!(
        "{:<28} {:>6} {:>12} {:>12} {:>10}",
        "case", "iters", "median ms", "throughput", "unit"
    )
}

fn row(r: &BenchResult) -> String {
    format!(
        "{:<28} {:>6} {:>12.3} {:>12.2} {:>10}",
        r.name,
        r.iters,
        r.median_s * 1e3,
        r.throughput,
        r.unit
    )
}

fn list(cases: &[Case], json: Option<&PathBuf>) -> Result<()> {
    match json {
        Some(path) => {
            let listed: Vec<Listed> = cases
                .iter()
                .map(|c| Listed {
                    name: &c.name,
                    unit: c.spec.unit(),
                    work: c.spec.work(),
                    spec: &c.spec,
                })
                .collect();
            write_json(path, &listed)
        }
        None => {
            for c in cases {
                say!(
                    "{:<28} {}",
                    c.name,
                    serde_json::to_string(&c.spec).unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let cases = select(args.filter.as_deref());
    if cases.is_empty() {
        return Err(Error::invalid(format!(
            "no bench case matches '{}' (see `pmad bench --list`)",
            args.filter.unwrap_or_default()
        )));
    }
    if args.list {
        return list(&cases, args.json.as_ref());
    }
    let cfg = Config {
        weights: super::backbone_path(args.weights),
        timing: Timing {
            warmup_s: args.warmup,
            min_time_s: args.min_time,
            ..Timing::default()
        },
    };
    // The table goes to stderr when stdout carries the JSON.
    let to_stderr = args.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let print = |line: String| {
        if to_stderr {
            eprintln!("{line}");
        } else {
            say!("{line}");
        }
    };
    print(format!(
        "pmad bench: {} threads",
        rayon::current_num_threads()
    ));
    print(header());
    let mut results = Vec::new();
    for case in &cases {
        match run_case(case, &cfg) {
            Ok(r) => {
                print(row(&r));
                results.push(r);
            }
            Err(e) => eprintln!("skipping {}: {e}", case.name),
        }
    }
    if let Some(path) = &args.json {
        let report = Report {
            pmad_version: env!("CARGO_PKG_VERSION"),
            threads: rayon::current_num_threads(),
            timing: cfg.timing,
            results: &results,
        };
        write_json(path, &report)?;
    }
    Ok(())
}
