//! `scalelong dose-response` end to end on a tiny U-ViT: every (seed, kappa, quantity) line, the
//! networks of a seed sharing their weights, the bound's factors, and a plan's bad field named.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use scalelong::dose_response::dose_response;
use scalelong_model::SkipScaling;
use scalelong_model::uvit::UViTConfig;
use scalelong_model::{DiffusionNet, ModelConfig};
use scalelong_schema::{DoseQuantity, DoseResponseLine, read_jsonl};

/// A U-ViT with 2 long skips on 16x16 synthetic images, a probe of 2 bins of 3 samples.
const BASE: &str = r#"
batch_size = 8
[model]
preset = "uvit-small"
img_size = 16
embed_dim = 16
depth = 4
num_heads = 2
[data]
dataset = { kind = "synthetic", n = 16, channels = 1, size = 16, seed = 1 }
pad_to_multiple = 1
[diagnostics]
t_bins = 2
probe_per_bin = 3
"#;

/// The flex device's seed is one global generator: a test that seeds and then initialises must not
/// interleave with another test of this file doing the same on another thread.
static SEEDED_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn folder(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("scalelong-dose-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[test]
fn every_network_of_the_grid_is_measured_once_per_quantity() {
    let _seeded = SEEDED_INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = folder("grid");
    std::fs::write(dir.join("tiny.toml"), BASE).unwrap();
    std::fs::write(dir.join("plan.toml"), "base = \"tiny.toml\"\nkappas = [0.5, 0.75, 1.0]\nseeds = 2\n").unwrap();
    let out = dir.join("sweep/dose_response.jsonl");
    let device = Device::flex().autodiff();
    let networks = dose_response(&dir.join("plan.toml"), &[], &out, &device).unwrap();
    assert_eq!(networks, 6);

    let lines: Vec<DoseResponseLine> = read_jsonl(&out).unwrap();
    // Per network: 2 LSCs' feature norms, the gradient norm raw and per loss, the loss, the sensitivity.
    assert_eq!(lines.len(), 6 * 6);
    assert!(lines.iter().all(|l| l.model.starts_with("uvit-small ")), "{}", lines[0].model);
    let value = |seed: u64, kappa: f64, quantity: DoseQuantity, lsc: Option<u32>| {
        let line = lines
            .iter()
            .find(|l| l.seed == seed && l.kappa == kappa && l.quantity == quantity && l.lsc == lsc)
            .unwrap_or_else(|| panic!("no line {seed} {kappa} {quantity:?} {lsc:?}"));
        (line.factor, line.value.unwrap())
    };
    for seed in 0..2 {
        for kappa in [0.5, 0.75, 1.0] {
            // S_2 = kappa^2, S_1 = 1 + kappa^2, sum c = 1 + kappa.
            let (factor, inner) = value(seed, kappa, DoseQuantity::FeatureSqNorm, Some(2));
            assert!((factor.unwrap() - kappa * kappa).abs() < 1e-12 && inner > 0.0);
            let (factor, gradient) = value(seed, kappa, DoseQuantity::GradSqNorm, None);
            assert!((factor.unwrap() - (1.0 + kappa * kappa)).abs() < 1e-12 && gradient > 0.0);
            let (factor, loss) = value(seed, kappa, DoseQuantity::ProbeLoss, None);
            assert!(factor.is_none() && loss > 0.0);
            let (_, per_loss) = value(seed, kappa, DoseQuantity::GradSqNormPerLoss, None);
            assert!((per_loss - gradient / loss).abs() <= 1e-9 * per_loss);
            let (factor, sensitivity) = value(seed, kappa, DoseQuantity::Sensitivity, None);
            assert!((factor.unwrap() - (1.0 + kappa)).abs() < 1e-12 && sensitivity > 0.0);
        }
        // The inner LSC's block fuses a skip scaled by kappa: the same weights, other features.
        let (_, at_one) = value(seed, 1.0, DoseQuantity::FeatureSqNorm, Some(2));
        let (_, at_half) = value(seed, 0.5, DoseQuantity::FeatureSqNorm, Some(2));
        assert_ne!(at_one, at_half, "kappa changes the network's features");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every parameter, flattened, in visiting order.
fn parameters(net: &DiffusionNet) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut collect = Collect(Vec::new());
    net.visit(&mut collect);
    collect.0
}

/// What makes a seed a block: seeded alike, CS networks of any kappa (and strategy 1) have the same
/// weights, and another seed gives other weights.
#[test]
fn the_networks_of_a_seed_share_their_weights() {
    let _seeded = SEEDED_INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let config =
        ModelConfig::Uvit(UViTConfig { img_size: 16, embed_dim: 16, depth: 4, num_heads: 2, ..UViTConfig::default() });
    let device = Device::flex().autodiff();
    let weights = |seed: u64, strategy: SkipScaling| {
        device.seed(seed);
        parameters(&config.init(strategy, &device))
    };
    let cs = weights(3, SkipScaling::Constant { kappa: 0.5 });
    assert_eq!(cs, weights(3, SkipScaling::Constant { kappa: 0.85 }));
    assert_eq!(cs, weights(3, SkipScaling::Original));
    assert_ne!(cs, weights(4, SkipScaling::Constant { kappa: 0.5 }));
}

#[test]
fn a_bad_plan_is_an_error_naming_the_file_and_field() {
    let dir = folder("bad");
    std::fs::write(dir.join("plan.toml"), "base = \"tiny.toml\"\nkappas = [0.5, 1.5, 1.0]\nseeds = 2\n").unwrap();
    let device = Device::flex().autodiff();
    let error = dose_response(&dir.join("plan.toml"), &[], &dir.join("out.jsonl"), &device).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("plan.toml") && text.contains("kappas: 1.5 is not in (0, 1]"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
