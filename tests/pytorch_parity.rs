//! Parity with the project's PyTorch reference (bench/reference/models.py): the fixtures in
//! tests/fixtures/pytorch/ were written by bench/reference/make_fixtures.py, a tiny U-ViT and a
//! tiny conv UNet per strategy (and one U-ViT with the reference's other switches: time MLP, qkv
//! bias, no final conv) with every parameter randomised (so a swapped weight/bias or a
//! missed transpose shows), an input batch with timesteps, and the reference's output.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use scalelong_model::pytorch::{
    CheckpointFile, ExchangeError, infer_uvit, load_weights, resolve_config, save_safetensors, tensor_shapes,
};
use scalelong_model::{DiffusionNet, ModelConfig, SkipScaling};
use serde::Deserialize;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 11] = [
    "uvit_1",
    "uvit_inv-sqrt2",
    "uvit_cs",
    "uvit_ls",
    "uvit_ls-nonshared",
    "uvit-variant_ls",
    "unet_1",
    "unet_inv-sqrt2",
    "unet_cs",
    "unet_ls",
    "unet_ls-nonshared",
];

#[derive(Deserialize)]
struct Fixture {
    model: ModelConfig,
    strategy: SkipScaling,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pytorch")
}

fn fixture(name: &str) -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap()).unwrap()
}

/// `(shape, values)` of each named tensor of a safetensors file.
fn read_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn io_tensor(io: &[(String, Vec<usize>, Vec<f32>)], name: &str) -> (Vec<usize>, Vec<f32>) {
    let (_, shape, values) = io.iter().find(|(n, ..)| n == name).unwrap();
    (shape.clone(), values.clone())
}

/// The network's output on the fixture's inputs, and the reference's.
fn outputs(name: &str, net: &DiffusionNet, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let io = read_tensors(&dir().join(format!("{name}.io.safetensors")));
    let (x_shape, x) = io_tensor(&io, "x");
    let (_, t) = io_tensor(&io, "t");
    let (_, expected) = io_tensor(&io, "out");
    let shape: [usize; 4] = x_shape.try_into().unwrap();
    let x = Tensor::<1>::from_floats(x.as_slice(), device).reshape(shape);
    let t = Tensor::<1>::from_floats(t.as_slice(), device);
    let got = net.forward(x, t, None).into_data().try_to_vec::<f32>().unwrap();
    (got, expected)
}

fn max_relative_error(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(expected).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn load_fixture(name: &str, file: &str, device: &Device) -> DiffusionNet {
    let f = fixture(name);
    device.seed(7);
    load_weights(f.model.init(f.strategy, device), &CheckpointFile::new(dir().join(file)))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_fixture_matches_the_reference_output() {
    let device = Device::flex();
    for name in FIXTURES {
        let net = load_fixture(name, &format!("{name}.safetensors"), &device);
        let (got, expected) = outputs(name, &net, &device);
        let err = max_relative_error(&got, &expected);
        assert!(err < 1e-4, "{name}: max |ours - reference| / max |reference| = {err:e}");
        // And a network that was not loaded is far off: the comparison can fail.
        let f = fixture(name);
        let (fresh, _) = outputs(name, &f.model.init(f.strategy, &device), &device);
        assert!(max_relative_error(&fresh, &expected) > 1e-2, "{name}: the fixture does not discriminate");
    }
}

#[test]
fn torch_save_files_load_like_the_safetensors() {
    let device = Device::flex();
    let net = load_fixture("uvit_ls", "uvit_ls.pth", &device);
    let (got, expected) = outputs("uvit_ls", &net, &device);
    let err = max_relative_error(&got, &expected);
    assert!(err < 1e-4, "uvit_ls.pth: {err:e}");

    // A state dict nested in a dict loads by its key, and without the key the error says so.
    let nested = CheckpointFile::new(dir().join("uvit_1.nested.pth"));
    let f = fixture("uvit_1");
    let net = load_weights(f.model.init(f.strategy, &device), &nested.clone().with_key(Some("model".into()))).unwrap();
    let (got, expected) = outputs("uvit_1", &net, &device);
    assert!(max_relative_error(&got, &expected) < 1e-4, "uvit_1.nested.pth");
    let err = load_weights(f.model.init(f.strategy, &device), &nested).unwrap_err().to_string();
    assert!(err.contains("give its key (model)"), "{err}");
    let err = load_weights(
        f.model.init(f.strategy, &device),
        &CheckpointFile::new(dir().join("uvit_1.safetensors")).with_key(Some("model".into())),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("a key applies to .pth files only"), "{err}");
}

#[derive(Default)]
struct Values(Vec<Vec<f32>>);
impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data().try_to_vec::<f32>().unwrap());
    }
}

fn values(net: &DiffusionNet) -> Vec<Vec<f32>> {
    let mut v = Values::default();
    net.visit(&mut v);
    v.0
}

#[test]
fn export_writes_the_reference_file_and_reimports_bit_exactly() {
    let device = Device::flex();
    let tmp = std::env::temp_dir().join(format!("scalelong-export-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for name in FIXTURES {
        let net = load_fixture(name, &format!("{name}.safetensors"), &device);
        let out = tmp.join(format!("{name}.safetensors"));
        save_safetensors(&net, &out).unwrap();
        // Same names, shapes and bits as the reference's own state dict.
        let original = read_tensors(&dir().join(format!("{name}.safetensors")));
        let exported = read_tensors(&out);
        let names = |t: &[(String, Vec<usize>, Vec<f32>)]| t.iter().map(|(n, ..)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&exported), names(&original), "{name}: exported names");
        for ((n, s1, v1), (_, s2, v2)) in exported.iter().zip(&original) {
            assert_eq!(s1, s2, "{name}: {n} shape");
            assert!(v1.iter().zip(v2).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: {n} values");
        }
        // Re-import into a differently initialised network: every parameter bit-identical.
        let f = fixture(name);
        device.seed(99);
        let again = load_weights(f.model.init(f.strategy, &device), &CheckpointFile::new(&out)).unwrap();
        assert_eq!(values(&again), values(&net), "{name}: round trip");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_renamed_a_missing_and_a_misshaped_tensor_are_all_named() {
    let device = Device::flex();
    let mut tensors = read_tensors(&dir().join("uvit_1.safetensors"));
    tensors.retain(|(n, ..)| n != "norm.bias");
    for (name, shape, values) in tensors.iter_mut() {
        if name == "in_blocks.0.attn.qkv.weight" {
            *name = "in_blocks.0.attn.qkvv.weight".into();
        }
        if name == "decoder_pred.weight" {
            // [4, 8] -> [4, 6]: one input column too few.
            *shape = vec![4, 6];
            values.truncate(24);
        }
    }
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), s.clone()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    let path = std::env::temp_dir().join(format!("scalelong-broken-{}.safetensors", std::process::id()));
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();

    let f = fixture("uvit_1");
    let err = load_weights(f.model.init(f.strategy, &device), &CheckpointFile::new(&path)).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let ExchangeError::Mismatch { missing, unexpected, misshaped, .. } = &err else { panic!("{err}") };
    let mut missing = missing.clone();
    missing.sort();
    assert_eq!(missing, ["in_blocks.0.attn.qkv.weight", "norm.bias"], "{err}");
    assert_eq!(unexpected, &["in_blocks.0.attn.qkvv.weight"], "{err}");
    assert_eq!(misshaped, &[("decoder_pred.weight".to_string(), vec![4, 8], vec![4, 6])], "{err}");
    let message = err.to_string();
    for name in ["in_blocks.0.attn.qkv.weight", "norm.bias", "in_blocks.0.attn.qkvv.weight", "decoder_pred.weight"] {
        assert!(message.contains(name), "{message}");
    }
}

#[test]
fn a_uvit_config_and_ls_form_are_read_from_the_shapes() {
    for name in ["uvit_1", "uvit_ls", "uvit_ls-nonshared", "uvit-variant_ls"] {
        let f = fixture(name);
        let path = dir().join(format!("{name}.safetensors"));
        let (config, learnable) = infer_uvit(&tensor_shapes(&CheckpointFile::new(&path)).unwrap(), Some(2)).unwrap();
        assert_eq!(ModelConfig::Uvit(config), f.model, "{name}");
        let shared = |s: Option<SkipScaling>| s.map(|s| matches!(s, SkipScaling::Learnable { shared: true, .. }));
        assert_eq!(shared(learnable), shared(Some(f.strategy)).filter(|_| name != "uvit_1"), "{name}");
        // Inferred config and strategy load and compute what the reference computes.
        let (model, strategy) = resolve_config(
            &CheckpointFile::new(&path),
            None,
            (name == "uvit_1").then_some(SkipScaling::Original),
            Some(2),
        )
        .unwrap();
        let device = Device::flex();
        let net = load_weights(model.init(strategy, &device), &CheckpointFile::new(&path)).unwrap();
        let (got, expected) = outputs(name, &net, &device);
        assert!(max_relative_error(&got, &expected) < 1e-4, "{name}");
    }
    // A fixed strategy leaves no tensors: it must be given.
    let err = resolve_config(&CheckpointFile::new(dir().join("uvit_cs.safetensors")), None, None, Some(2)).unwrap_err();
    assert!(err.to_string().contains("give the strategy"), "{err}");
    // An LS file with a fixed strategy is refused.
    let err = resolve_config(
        &CheckpointFile::new(dir().join("uvit_ls.safetensors")),
        None,
        Some(SkipScaling::Original),
        Some(2),
    )
    .unwrap_err();
    assert!(err.to_string().contains("holds LS gates"), "{err}");
}
