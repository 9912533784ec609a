//! Progress bars for long verbs (indicatif), hidden when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

/// A callback for `Detector::progress`: one bar per named step, replaced when the step changes.
/// With `PMAD_TIMINGS` set, each finished step also prints its wall time to stderr.
pub fn bar_callback() -> pmad::detector::pipeline::ProgressFn {
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
