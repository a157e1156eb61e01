//! `scalelong import`, `export` and `diagnose` end to end, on the PyTorch parity fixtures of
//! tests/fixtures/pytorch (tiny 8x8 networks) and a tiny trained run.

use scalelong_tests::*;
use std::path::{Path, PathBuf};

fn fixture(file: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pytorch");
    dir.join(file).canonicalize().unwrap().to_str().unwrap().to_string()
}

/// Data and probe settings that fit the 8x8 fixtures.
const TINY_DATA: [&str; 8] = [
    "--set",
    "data.dataset={ kind = \"synthetic\", n = 32, channels = 1, size = 8, seed = 3 }",
    "--set",
    "data.pad_to_multiple=1",
    "--set",
    "diagnostics.t_bins=2",
    "--set",
    "diagnostics.probe_per_bin=2",
];

fn run_ok(args: &[&str], cwd: &Path) -> String {
    let out = scalelong(args, cwd);
    assert!(out.status.success(), "scalelong {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`run_ok`] with [`TINY_DATA`] appended.
fn run_ok_tiny(args: &[&str], cwd: &Path) -> String {
    run_ok(&[args, &TINY_DATA[..]].concat(), cwd)
}

/// `(name, raw bytes)` of every tensor of a safetensors file, sorted by name.
fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    out.sort();
    out
}

#[test]
fn a_torch_checkpoint_imports_exports_bit_exactly_and_is_diagnosed_and_reported() {
    let dir = TempDir::new("exchange");
    // A .pth without --model: the U-ViT config and the shared LS gate come from the shapes.
    let printed = run_ok_tiny(&["import", &fixture("uvit_ls.pth"), "--heads", "2", "--out", "imported"], &dir.0);
    assert!(printed.contains("LS"), "{printed}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("imported/config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["embed_dim"], 8, "{config}");

    // Export gives back the reference's state dict, name for name and bit for bit.
    let written = run_ok(&["export", "imported", "--weights", "model", "--out", "back.safetensors"], &dir.0);
    assert!(written.trim().ends_with("back.safetensors"));
    assert_eq!(tensors(&dir.join("back.safetensors")), tensors(Path::new(&fixture("uvit_ls.safetensors"))));

    // Diagnose the import and, imported on the way, two more strategies; then report all three.
    run_ok_tiny(
        &["import", &fixture("uvit_cs.safetensors"), "--strategy", "cs", "--heads", "2", "--out", "uvit_cs"],
        &dir.0,
    );
    run_ok_tiny(
        &[
            "diagnose",
            "imported",
            "uvit_cs",
            &fixture("uvit_ls-nonshared.safetensors"),
            "--heads",
            "2",
            "--out",
            "diag",
        ],
        &dir.0,
    );
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("diag/sweep.json")).unwrap()).unwrap();
    let ids: Vec<&str> = sweep["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["imported", "uvit_cs", "uvit_ls-nonshared"]);
    for id in &ids {
        let records = jsonl(&dir.join("diag").join(id).join("diagnostics.jsonl"));
        let has = |q: &str| records.iter().any(|r| r["quantity"] == q);
        for quantity in ["feature_l2", "skip_ratio", "coef", "robustness", "probe_loss", "grad_norm_bin", "weight_norm"]
        {
            assert!(has(quantity), "{id}: no {quantity}");
        }
        assert_eq!(has("gate_mean"), *id != "uvit_cs", "{id}: gate statistics exactly for LS");
        assert!(!has("rel_update"), "{id}: no training step, no relative update");
        assert!(records.iter().all(|r| r["step"] == 0), "{id}: imports are at step 0");
    }
    let report = run_ok(&["report", "diag", "--out", "report"], &dir.0);
    let html =
        std::fs::read_to_string(PathBuf::from(report.trim()).canonicalize().unwrap_or(dir.join("report/index.html")))
            .unwrap();
    for id in ids {
        assert!(html.contains(id), "the report names {id}");
    }
}

#[test]
fn a_conv_unet_imports_from_a_preset_with_overrides_and_exports_bit_exactly() {
    let dir = TempDir::new("exchange-unet");
    let sizes = [
        "model.img_size=8",
        "model.base_channels=4",
        "model.channel_mult=[1, 2]",
        "model.attention_heads=2",
        "model.norm_groups=2",
    ];
    let mut args = vec!["import", "--model", "unet-small", "--strategy", "ls-nonshared", "--out", "unet"];
    let file = fixture("unet_ls-nonshared.safetensors");
    args.push(&file);
    for set in &sizes {
        args.extend(["--set", set]);
    }
    run_ok_tiny(&args, &dir.0);
    run_ok(&["export", "unet", "--out", "back.safetensors"], &dir.0);
    assert_eq!(tensors(&dir.join("back.safetensors")), tensors(Path::new(&file)));
}

#[test]
fn a_trained_run_is_diagnosed_at_its_step_without_touching_it() {
    let dir = TempDir::new("diagnose-run");
    let config = write_config(&dir, "tiny.toml", TINY_CONFIG);
    let out = train(&dir, &config, "run", &["--set", "steps=4", "--set", "evaluate=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read(dir.join("run/diagnostics.jsonl")).unwrap();
    run_ok(&["diagnose", "run", "--weights", "ema", "--out", "diag"], &dir.0);
    let records = jsonl(&dir.join("diag/run/diagnostics.jsonl"));
    assert!(!records.is_empty() && records.iter().all(|r| r["step"] == 4));
    assert_eq!(std::fs::read(dir.join("run/diagnostics.jsonl")).unwrap(), before, "the run itself is unchanged");
    // Diagnosing into the run's own folder is refused.
    let own = scalelong(&["diagnose", "run", "--out", "."], &dir.0);
    assert!(!own.status.success() && stderr(&own).contains("write over the run"), "{}", stderr(&own));
}

#[test]
fn bad_imports_say_what_is_wrong() {
    let dir = TempDir::new("bad-import");
    let cases: [(Vec<String>, &str); 4] = [
        (vec!["import".into(), "missing.pth".into(), "--out".into(), "a".into()], "missing.pth: no such file"),
        (vec!["import".into(), fixture("uvit_cs.json"), "--out".into(), "a".into()], "unknown checkpoint format"),
        (
            vec![
                "import".into(),
                fixture("uvit_cs.safetensors"),
                "--heads".into(),
                "2".into(),
                "--out".into(),
                "a".into(),
            ],
            "give the strategy",
        ),
        (
            vec![
                "import".into(),
                fixture("unet_1.safetensors"),
                "--strategy".into(),
                "1".into(),
                "--out".into(),
                "a".into(),
            ],
            "give the model",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = scalelong(&args, &dir.0);
        assert!(!out.status.success() && stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
    // The right UNet preset with the wrong widths: every mismatch listed, nothing written.
    let out = scalelong(
        &["import", &fixture("unet_1.safetensors"), "--model", "unet-small", "--strategy", "1", "--out", "b"],
        &dir.0,
    );
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("wrong shape") && err.contains("encoder.0.weight"), "{err}");
    assert!(!dir.join("b/checkpoint").exists(), "a failed import leaves no checkpoint");
}
