//! The VisA layout: one CSV lists every image of every class with its split and label.
//!
//! ```text
//! ROOT/split_csv/1cls.csv    object,split,label,image,mask
//!                            candle,train,normal,candle/Data/Images/Normal/0000.JPG,
//!                            candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png
//! ```
//!
//! Paths are relative to ROOT; `split` is `train` or `test`, `label` `normal` or `anomaly`.
//! The training split must hold normal images only (registration would otherwise learn
//! defects as normal). Images keep the CSV's order, which is fixed by the file.

use crate::data::dataset::{
    ClassData, GOOD, TestItem, check_mask_size, check_masks_all_or_none, image_size,
};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The split file, relative to the root (also what `--layout auto` looks for).
pub const CSV: &str = "split_csv/1cls.csv";
/// The defect name of VisA's abnormal images.
pub const ANOMALY: &str = "anomaly";

const COLUMNS: [&str; 5] = ["object", "split", "label", "image", "mask"];

/// Lists and checks class `class` (the CSV's `object`); with `with_test`, its test rows too.
pub fn open(root: &Path, class: &str, with_test: bool) -> Result<ClassData> {
    let csv = root.join(CSV);
    if !csv.is_file() {
        return Err(Error::format(&csv, "VisA split file not found"));
    }
    let text = std::fs::read_to_string(&csv).map_err(|e| Error::io(&csv, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(Error::format(&csv, "empty CSV (no header line)"));
    };
    let header = split_row(header).map_err(|e| Error::format(&csv, format!("line 1: {e}")))?;
    let mut col = [0usize; 5];
    for (c, name) in col.iter_mut().zip(COLUMNS) {
        *c = header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                Error::format(
                    &csv,
                    format!(
                        "no '{name}' column (the header needs {})",
                        COLUMNS.join(",")
                    ),
                )
            })?;
    }
    let mut objects: Vec<String> = Vec::new();
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let at = |msg: String| Error::format(&csv, format!("line {n}: {msg}"));
        let row = split_row(line).map_err(at)?;
        let field = |k: usize| row.get(col[k]).map_or("", |s| s.trim());
        if row.len() < header.len() {
            return Err(at(format!(
                "{} fields, the header has {}",
                row.len(),
                header.len()
            )));
        }
        let object = field(0);
        if !objects.iter().any(|o| o == object) {
            objects.push(object.to_string());
        }
        if object != class {
            continue;
        }
        let normal = match field(2) {
            "normal" => true,
            "anomaly" => false,
            other => return Err(at(format!("label '{other}' is not normal or anomaly"))),
        };
        let is_train = match field(1) {
            "train" => true,
            "test" => false,
            other => return Err(at(format!("split '{other}' is not train or test"))),
        };
        if is_train && !normal {
            return Err(at(format!(
                "an anomaly image ({}) in the training split: registration reads only \
                 normal images",
                field(3)
            )));
        }
        if is_train || with_test {
            let image = existing(root, field(3), "image").map_err(at)?;
            let size = image_size(&image)?;
            if is_train {
                train.push(image);
                continue;
            }
            let mask = match (normal, field(4)) {
                (true, _) | (false, "") => None,
                (false, m) => {
                    let m = existing(root, m, "mask").map_err(at)?;
                    check_mask_size(&m, &image, size)?;
                    Some(m)
                }
            };
            test.push(TestItem {
                path: image,
                defect: if normal { GOOD } else { ANOMALY }.to_string(),
                mask,
            });
        }
    }
    if !objects.iter().any(|o| o == class) {
        let known = if objects.is_empty() {
            "none".to_string()
        } else {
            objects.join(", ")
        };
        return Err(Error::format(
            &csv,
            format!("unknown class '{class}' (objects in this CSV: {known})"),
        ));
    }
    if train.is_empty() {
        return Err(Error::format(
            &csv,
            format!("class '{class}' has no rows in the train split"),
        ));
    }
    check_masks_all_or_none(&test)?;
    Ok(ClassData {
        name: class.to_string(),
        dir: root.join(class),
        train,
        test,
    })
}

/// `root/rel`, which must be a file.
fn existing(root: &Path, rel: &str, what: &str) -> std::result::Result<PathBuf, String> {
    if rel.is_empty() {
        return Err(format!("empty {what} path"));
    }
    let p = root.join(rel);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{what} {} not found", p.display()))
    }
}

/// The fields of one CSV line: commas separate, `"..."` quotes (with `""` for a quote).
fn split_row(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(cur);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_on_commas_outside_quotes() {
        assert_eq!(split_row("a,b,,c").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(split_row("a,\"b,c\",d\r").unwrap(), ["a", "b,c", "d"]);
        assert_eq!(
            split_row("\"say \"\"hi\"\"\",x").unwrap(),
            ["say \"hi\"", "x"]
        );
        assert!(split_row("a,\"b").is_err());
    }
}
