//! Progress of long verbs: bars (indicatif) on a terminal, plain lines where stderr is not one
//! (CI logs, `2> file`), so a long step never runs silently.
//!
//! `PMAD_PROGRESS=bar|plain|off` forces a mode; `PMAD_PROGRESS_EVERY=SECONDS` sets how often
//! plain lines come (default 5 s; each step also prints one line when it ends).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Plain,
    Off,
}

/// `PMAD_PROGRESS` if set (an unknown value falls back to the automatic choice: progress
/// output is never worth failing a run for), else bars on a terminal and plain lines elsewhere.
pub fn mode() -> Mode {
    match std::env::var("PMAD_PROGRESS").as_deref() {
        Ok("bar") => Mode::Bar,
        Ok("plain") => Mode::Plain,
        Ok("off") => Mode::Off,
        _ if std::io::stderr().is_terminal() => Mode::Bar,
        _ => Mode::Plain,
    }
}

/// The plain-line interval: `PMAD_PROGRESS_EVERY` seconds, else 5 s.
fn plain_interval() -> Duration {
    std::env::var("PMAD_PROGRESS_EVERY")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(5), Duration::from_secs_f64)
}

/// A callback for `Detector::progress` in the mode [`mode`] picks.
/// With `PMAD_TIMINGS` set, each finished step also prints its wall time to stderr.
pub fn bar_callback() -> pmad::detector::pipeline::ProgressFn {
    match mode() {
        Mode::Bar => bars(),
        Mode::Plain => {
            let lines = Mutex::new(PlainLines::new(plain_interval(), Instant::now()));
            let timings = std::env::var_os("PMAD_TIMINGS").is_some();
            Box::new(move |what: &str, done: usize, total: usize| {
                let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if let Some(line) = l.update(what, done, total, now) {
                    eprintln!("{line}");
                    if timings && done >= total {
                        eprintln!("timing: {what} {:.2} s", l.step_seconds(now));
                    }
                }
            })
        }
        Mode::Off => Box::new(|_: &str, _: usize, _: usize| {}),
    }
}

/// One bar per named step, replaced when the step changes.
fn bars() -> pmad::detector::pipeline::ProgressFn {
    let current: Mutex<Option<(String, ProgressBar)>> = Mutex::new(None);
    let timings = std::env::var_os("PMAD_TIMINGS").is_some();
    Box::new(move |what: &str, done: usize, total: usize| {
        let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_none_or(|(w, _)| w != what) {
            if let Some((_, old)) = cur.take() {
                old.finish_and_clear();
            }
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            *cur = Some((what.to_string(), bar));
        }
        if let Some((_, bar)) = cur.as_ref() {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if done >= total {
                if timings && !bar.is_finished() {
                    eprintln!("timing: {what} {:.2} s", bar.elapsed().as_secs_f64());
                }
                bar.finish_and_clear();
            }
        }
    })
}

/// Plain progress lines, `progress: STAGE done/total, X img/s, ETA Ns`: at most one per
/// interval while a step runs, and one when it ends. The clock is passed in, so tests run it
/// without waiting.
#[derive(Debug)]
pub struct PlainLines {
    every: Duration,
    /// The previous report: a new step started then (steps run back to back, and a step
    /// reports only after its first batch).
    last_report: Instant,
    step: Option<Step>,
}

#[derive(Debug)]
struct Step {
    what: String,
    start: Instant,
    last_line: Instant,
    last_done: usize,
    finished: bool,
}

impl PlainLines {
    /// Lines at most every `every`, the first step counted from `now`.
    pub fn new(every: Duration, now: Instant) -> PlainLines {
        PlainLines {
            every,
            last_report: now,
            step: None,
        }
    }

    /// The line to print for this report, if one is due.
    pub fn update(
        &mut self,
        what: &str,
        done: usize,
        total: usize,
        now: Instant,
    ) -> Option<String> {
        // A new name, or the count going back (the same step run again, e.g. `eval` of the
        // next class), starts a new step.
        if self
            .step
            .as_ref()
            .is_none_or(|s| s.what != what || done < s.last_done)
        {
            self.step = Some(Step {
                what: what.to_string(),
                start: self.last_report,
                last_line: now,
                last_done: 0,
                finished: false,
            });
        }
        self.last_report = now;
        let step = self.step.as_mut()?;
        step.last_done = done;
        let end = done >= total;
        if step.finished && end {
            return None; // the end of this step was already reported
        }
        if !end && now.duration_since(step.last_line) < self.every {
            return None;
        }
        step.last_line = now;
        step.finished = end;
        let secs = now.duration_since(step.start).as_secs_f64();
        Some(plain_line(what, done, total, secs))
    }

    /// Seconds since the current step began.
    pub fn step_seconds(&self, now: Instant) -> f64 {
        self.step
            .as_ref()
            .map_or(0.0, |s| now.duration_since(s.start).as_secs_f64())
    }
}

/// One line for `done` of `total` items after `secs` seconds of the step. The training steps
/// count optimiser steps, the others images.
pub fn plain_line(what: &str, done: usize, total: usize, secs: f64) -> String {
    let unit = if matches!(what, "flow" | "vit") {
        "steps/s"
    } else {
        "img/s"
    };
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if done >= total {
        "0s".to_string()
    } else if rate > 0.0 {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "?".to_string()
    };
    format!("progress: {what} {done}/{total}, {rate:.1} {unit}, ETA {eta}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_come_per_interval_and_at_each_end() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = PlainLines::new(Duration::from_secs(5), at(0));
        assert_eq!(p.update("embed", 0, 100, at(0)), None);
        assert_eq!(p.update("embed", 10, 100, at(2)), None);
        assert_eq!(
            p.update("embed", 25, 100, at(5)).as_deref(),
            Some("progress: embed 25/100, 5.0 img/s, ETA 15s")
        );
        assert_eq!(p.update("embed", 30, 100, at(6)), None);
        assert_eq!(
            p.update("embed", 100, 100, at(8)).as_deref(),
            Some("progress: embed 100/100, 12.5 img/s, ETA 0s")
        );
        assert_eq!(p.update("embed", 100, 100, at(9)), None);
        // A new step restarts its clock and rate, from the previous report (at 9 s).
        assert_eq!(
            p.update("vit", 4, 4, at(10)).as_deref(),
            Some("progress: vit 4/4, 4.0 steps/s, ETA 0s")
        );
        assert_eq!(p.update("eval", 1, 10, at(10)), None);
        assert_eq!(
            p.update("eval", 2, 10, at(20)).as_deref(),
            Some("progress: eval 2/10, 0.2 img/s, ETA 40s")
        );
        assert!(p.update("eval", 10, 10, at(21)).is_some());
        // The same step name again (the next class): a fresh step, not "already ended".
        assert_eq!(p.update("eval", 1, 4, at(22)), None);
        assert_eq!(
            p.update("eval", 4, 4, at(24)).as_deref(),
            Some("progress: eval 4/4, 1.3 img/s, ETA 0s")
        );
    }

    #[test]
    fn no_rate_yet_gives_an_unknown_eta() {
        assert_eq!(
            plain_line("eval", 0, 3, 0.0),
            "progress: eval 0/3, 0.0 img/s, ETA ?"
        );
    }
}
