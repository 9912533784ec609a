//! `pmad train --config FILE.toml` and `--print-config`: a file sets train flags, the command
//! line overrides it, the printed config reads back to the same run, and a bad file is a clear
//! error that trains nothing.

mod common;
use common::pmad;

use std::path::{Path, PathBuf};
use std::process::Output;

fn tmpdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pmad-config-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "pmad failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `--print-config` of a file plus command-line flags, parsed as TOML.
fn effective(args: &[&str]) -> toml::Table {
    let mut a = vec!["train"];
    a.extend(args);
    a.push("--print-config");
    stdout(&pmad(&a)).parse().unwrap()
}

#[test]
fn a_config_file_sets_flags_the_command_line_overrides_and_print_reads_back() {
    let dir = tmpdir("print");
    let file = dir.join("train.toml");
    std::fs::write(
        &file,
        "data = \"some data\"\nclasses = [\"a\", \"b\"]\nout = \"m\"\n\
         skip = [\"tokenizer\", \"vit\"]\ncoreset_ratio = 0.05\nseed = 1\nflow-lr = 1e-4\n\
         resume = true\nimage-score = \"top:0.01\"\n",
    )
    .unwrap();
    let t = effective(&["--config", s(&file), "--seed", "3"]);
    assert_eq!(t["data"].as_str(), Some("some data"));
    assert_eq!(t["classes"].as_array().unwrap().len(), 2);
    assert_eq!(t["coreset-ratio"].as_float(), Some(0.05));
    assert_eq!(t["flow-lr"].as_float(), Some(1e-4));
    assert_eq!(t["seed"].as_integer(), Some(3), "the command line wins");
    assert_eq!(t["resume"].as_bool(), Some(true));
    assert_eq!(t["image-score"].as_str(), Some("top:0.01"));
    // Defaults of flags the file does not name are there too.
    assert_eq!(t["flow-epochs"].as_integer(), Some(6));
    assert!(!t.contains_key("config") && !t.contains_key("print-config"));

    // The printed config, fed back, prints the same.
    let printed = dir.join("printed.toml");
    std::fs::write(&printed, toml::to_string(&t).unwrap()).unwrap();
    assert_eq!(effective(&["--config", s(&printed)]), t);
}

#[test]
fn bad_config_files_are_clear_errors_naming_the_file() {
    let dir = tmpdir("bad");
    let cases = [
        ("unknown.toml", "colour = 1\n", "unknown key 'colour'"),
        ("syntax.toml", "seed = \n", "invalid TOML"),
        ("switch.toml", "resume = 1\n", "expected true or false"),
        ("table.toml", "seed = { a = 1 }\n", "key 'seed'"),
    ];
    for (name, text, says) in cases {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        let out = pmad(&["train", "--config", s(&f), "--print-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(s(&f)) && err.contains(says), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}");
    }
    // A value of the wrong type: clap's own message, and where the flag came from.
    let f = dir.join("type.toml");
    std::fs::write(&f, "flow-epochs = \"many\"\n").unwrap();
    let out = pmad(&["train", "--config", s(&f), "--data", "d", "--classes", "a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--flow-epochs") && err.contains(s(&f)),
        "{err}"
    );
    let missing = dir.join("none.toml");
    let out = pmad(&["train", "--config", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn a_model_is_trained_from_a_config_file_alone() {
    if common::need_backbone().is_none() {
        return;
    }
    let dir = tmpdir("train");
    let data = dir.join("data");
    stdout(&pmad(&[
        "synth",
        "--out",
        s(&data),
        "--classes",
        "1",
        "--train",
        "4",
        "--test-good",
        "1",
        "--test-bad",
        "1",
        "--size",
        "64",
    ]));
    let model = dir.join("model");
    let file = dir.join("train.toml");
    let mut t = toml::Table::new();
    t.insert("data".into(), s(&data).into());
    t.insert(
        "classes".into(),
        toml::Value::Array(vec!["synth_fabric".into()]),
    );
    t.insert("out".into(), s(&model).into());
    t.insert(
        "skip".into(),
        toml::Value::Array(vec!["flow".into(), "tokenizer".into(), "vit".into()]),
    );
    t.insert("coreset-ratio".into(), 0.25.into());
    t.insert("image-score".into(), "top:0.05".into());
    // The feature spec: an inner expanded tap, projected, and a smaller pooling window.
    t.insert(
        "taps".into(),
        toml::Value::Array(vec!["blocks.4".into(), "blocks.10.dw:32".into()]),
    );
    t.insert("pool".into(), 1.into());
    t.insert("input-norm".into(), "per-image".into());
    std::fs::write(&file, toml::to_string(&t).unwrap()).unwrap();
    stdout(&pmad(&["train", "--config", s(&file)]));
    // model.json records what was used.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(cfg["coreset"]["ratio"].as_f64(), Some(0.25));
    let q = cfg["map"]["image_score"]["top-mean"]["q"].as_f64().unwrap();
    assert!((q - 0.05).abs() < 1e-6, "{cfg}");
    assert_eq!(cfg["trained_on"][0].as_str(), Some("synth_fabric"));
    assert_eq!(cfg["features"]["taps"][1].as_str(), Some("blocks.10.dw:32"));
    assert_eq!(cfg["features"]["pool"].as_u64(), Some(1));
    assert_eq!(cfg["features"]["input_norm"].as_str(), Some("per-image"));
    // Per-image normalisation and an inner projected tap need format 2: an older pmad
    // (which reads 1 only) refuses the model instead of ignoring `input_norm`.
    assert_eq!(cfg["format_version"].as_u64(), Some(2));
    // Stamped 1 over these features, the file is refused, naming the field.
    let mut v1 = cfg.clone();
    v1["format_version"] = 1.into();
    let e = pmad::detector::model_dir::parse_config(v1.to_string().as_bytes(), "m.json".as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("format_version") && e.contains("need version 2"),
        "{e}"
    );
    // The bank has the spec's dimension: 40 (blocks.4) + 32 (the projected tap).
    let bank = std::fs::read_dir(model.join("classes/synth_fabric"))
        .unwrap()
        .map(|e| e.unwrap().path().join("prototypes.safetensors"))
        .find(|p| p.is_file())
        .unwrap();
    let st = pmad::weights::SafeTensors::open(&bank).unwrap();
    let name = &st.names()[0];
    assert_eq!(st.info(name).unwrap().shape[1], 72);

    // A bad spec is refused before any work, naming the field; nothing is written.
    let refused = dir.join("refused");
    for (taps, says) in [
        ("blocks.4:40", "does not reduce"),
        ("blocks.0.expand", "unknown lite0 tap"),
    ] {
        let out = pmad(&[
            "train",
            "--data",
            s(&data),
            "--classes",
            "synth_fabric",
            "--out",
            s(&refused),
            "--skip",
            "flow,tokenizer,vit",
            "--taps",
            taps,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{taps}: {err}");
        assert!(
            err.contains("features") && err.contains(says),
            "{taps}: {err}"
        );
        assert!(!refused.exists(), "{taps}");
    }
}
