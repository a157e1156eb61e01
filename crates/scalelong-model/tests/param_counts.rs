//! The parameter count of every preset under every strategy equals bench/param_counts.json, the
//! numbers the PyTorch twins of bench/reference/models.py print (`bench.py --counts`, which also
//! checks them against the same file). tests/networks.rs checks the U-ViT counts against an
//! independent formula as well.

use burn::module::Module;
use burn::prelude::*;
use scalelong_model::SkipScaling;
use scalelong_model::presets::{PRESETS, preset};

#[test]
fn preset_parameter_counts_equal_the_pytorch_twins() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/param_counts.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("param_counts.json is JSON");
    let presets = json["presets"].as_object().expect("a `presets` object");
    let names: Vec<&str> = PRESETS.iter().map(|(name, _)| *name).collect();
    let mut listed: Vec<&str> = presets.keys().map(String::as_str).collect();
    listed.sort();
    let mut expected_names = names.clone();
    expected_names.sort();
    assert_eq!(listed, expected_names, "param_counts.json must list every preset");
    let device = Device::flex();
    for name in names {
        let config = preset(name).unwrap();
        for (strategy, count) in presets[name].as_object().expect("strategy -> count") {
            let scaling: SkipScaling = serde_json::from_value(serde_json::Value::String(strategy.clone()))
                .unwrap_or_else(|e| panic!("{name}: strategy {strategy:?}: {e}"));
            let expected = count.as_u64().expect("a count") as usize;
            let actual = config.init(scaling, &device).num_params();
            assert_eq!(
                actual, expected,
                "{name} with strategy {strategy}: Rust has {actual}, the PyTorch twin {expected}"
            );
        }
    }
}
