//! `pmad train --config FILE.toml` and `pmad train --print-config`.
//!
//! A config file holds `train` flags as TOML keys, named as the flags without the dashes
//! (`coreset-ratio = 0.1`; `coreset_ratio` is accepted too):
//!
//! ```toml
//! data = "datasets/mvtec"
//! classes = ["bottle", "cable"]
//! out = "models/m1"
//! skip = ["tokenizer", "vit"]
//! flow-epochs = 8
//! resume = false
//! ```
//!
//! How: the file's keys become command-line flags, placed before the ones typed on the command
//! line, and clap parses them all (the command lets a later flag override an earlier one). So
//! every `train` flag works in a file with exactly the checks and defaults it has on the command
//! line, the command line wins over the file, and nothing here repeats a flag's type.
//! `--print-config` prints every flag's effective value (file, command line or default) as
//! TOML and exits without training; fed back with `--config` it gives the same run.

use clap::{ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Flags that steer the config handling itself; never read from or written to a file.
const OWN_FLAGS: [&str; 3] = ["config", "print-config", "help"];

/// Where the `train` subcommand's arguments start in `args` (after the program name and any
/// global `--threads N`), if the subcommand is `train`.
fn train_position(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_str()?;
        if a == "--threads" {
            i += 2;
        } else if a.starts_with("--threads=") {
            i += 1;
        } else {
            return (a == "train").then_some(i + 1);
        }
    }
    None
}

/// `args` with `train --config FILE` replaced by the file's flags (placed before the flags on
/// the command line, which override them). Other commands' args come back unchanged. Also
/// returns the config file, for error messages.
pub fn expand(mut args: Vec<OsString>) -> pmad::Result<(Vec<OsString>, Option<PathBuf>)> {
    let Some(start) = train_position(&args) else {
        return Ok((args, None));
    };
    let mut file = None;
    let mut i = start;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        if a == "--" {
            break;
        }
        if a == "--config" {
            let Some(f) = args.get(i + 1) else {
                return Err(pmad::Error::invalid("--config needs a file (TOML)"));
            };
            file = Some(PathBuf::from(f));
            args.drain(i..i + 2);
        } else if let Some(f) = a.strip_prefix("--config=") {
            file = Some(PathBuf::from(f));
            args.remove(i);
        } else {
            i += 1;
        }
    }
    let Some(file) = file else {
        return Ok((args, None));
    };
    let flags = read_file(&file)?;
    args.splice(start..start, flags.into_iter().map(OsString::from));
    Ok((args, Some(file)))
}

/// The `train` flags that `file` sets, as command-line words.
fn read_file(file: &Path) -> pmad::Result<Vec<String>> {
    let bad = |m: String| pmad::Error::invalid(format!("{}: {m}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| bad(format!("invalid TOML: {e}")))?;
    let cmd = train_command();
    let mut words = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !OWN_FLAGS.contains(&long.as_str()))
            .ok_or_else(|| {
                bad(format!(
                    "unknown key '{key}' (the keys are `pmad train` flags: {})",
                    flag_names(&cmd).join(", ")
                ))
            })?;
        let flag = format!("--{long}");
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match value {
            toml::Value::Boolean(b) if is_switch => {
                if *b {
                    words.push(flag);
                }
            }
            _ if is_switch => {
                return Err(bad(format!("key '{key}': expected true or false")));
            }
            toml::Value::Array(items) => {
                // A list flag (e.g. classes, skip) takes its values comma-separated.
                let items: Vec<String> = items
                    .iter()
                    .map(|v| scalar(v).ok_or_else(|| bad(format!("key '{key}': list of scalars"))))
                    .collect::<pmad::Result<_>>()?;
                words.extend([flag, items.join(",")]);
            }
            v => {
                let s = scalar(v)
                    .ok_or_else(|| bad(format!("key '{key}': expected a string or a number")))?;
                words.extend([flag, s]);
            }
        }
    }
    Ok(words)
}

/// A TOML string, number or bool as the command line writes it.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The `train` subcommand as clap sees it.
fn train_command() -> Command {
    <super::train::TrainArgs as clap::Args>::augment_args(Command::new("train"))
}

fn flag_names(cmd: &Command) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !OWN_FLAGS.contains(l))
        .map(String::from)
        .collect()
}

/// The effective `train` configuration in `matches` (every flag, from the file, the command
/// line or its default) as a TOML document that `--config` reads back.
pub fn print(matches: &ArgMatches) -> String {
    let cmd = train_command();
    let mut table = toml::Table::new();
    for arg in cmd.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if OWN_FLAGS.contains(&long) {
            continue;
        }
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            table.insert(long.into(), toml::Value::Boolean(matches.get_flag(id)));
            continue;
        }
        let Some(raw) = matches.get_raw(id) else {
            continue; // an optional flag that is not set
        };
        let values: Vec<toml::Value> = raw.map(|v| typed(&v.to_string_lossy())).collect();
        let value = if matches!(arg.get_action(), ArgAction::Append) || values.len() > 1 {
            toml::Value::Array(values)
        } else {
            values
                .into_iter()
                .next()
                .expect("get_raw gives at least one value")
        };
        table.insert(long.into(), value);
    }
    let header = "# pmad train configuration (`pmad train --config FILE`; flags on the command \
                  line override it)\n";
    format!("{header}{table}")
}

/// A command-line word as a TOML value: an integer or float where it reads as one, else a
/// string (which `--config` turns back into the same word either way).
fn typed(word: &str) -> toml::Value {
    if let Ok(i) = word.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match word.parse::<f64>() {
        Ok(f) if f.is_finite() && word.chars().any(|c| c.is_ascii_digit()) => toml::Value::Float(f),
        _ => toml::Value::String(word.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn train_is_found_after_global_flags_only() {
        assert_eq!(train_position(&words(&["pmad", "train", "--x"])), Some(2));
        assert_eq!(
            train_position(&words(&["pmad", "--threads", "2", "train"])),
            Some(4)
        );
        assert_eq!(
            train_position(&words(&["pmad", "--threads=2", "train"])),
            Some(3)
        );
        assert_eq!(train_position(&words(&["pmad", "eval", "train"])), None);
    }

    #[test]
    fn words_read_back_as_the_same_values() {
        for w in [
            "20", "0.1", "1e-3", "-3", "max", "top:0.01", "/tmp/a b", "inf", "nan",
        ] {
            let back = scalar(&typed(w)).unwrap();
            match w.parse::<f64>() {
                Ok(f) if f.is_finite() => assert_eq!(back.parse::<f64>().unwrap(), f, "{w}"),
                _ => assert_eq!(back, w),
            }
        }
    }
}
