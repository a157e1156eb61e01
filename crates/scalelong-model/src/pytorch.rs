//! Weights exchanged with the PyTorch reference: state dicts of the ScaleLong U-ViT
//! (`libs/uvit.py`) and of the project's conv UNet twin (`bench/reference/models.py`), read from
//! `.safetensors` or a PyTorch `.pth`/`.pt` file, and written back as `.safetensors` under the
//! reference's names.
//!
//! Our modules carry the reference's names, so the mapping is short; burn-store does each part:
//!
//! | reference (torch) | ours (burn) | how |
//! |---|---|---|
//! | `nn.Linear.weight` `[out, in]` | `Linear.weight` `[in, out]` | transposed by `PyTorchToBurnAdapter` / `BurnToPyTorchAdapter` |
//! | `LayerNorm`/`GroupNorm` `weight`, `bias` | `gamma`, `beta` | renamed by the same adapters |
//! | `encoder.2.conv.weight` | `encoder.2.Down.conv.weight` | enum variants skipped (`skip_enum_variants`) |
//! | shared LS gate `se.layer1.weight` | `se.0.layer1.weight` | key remapping (the non-shared `se.K` needs none) |
//! | U-ViT `time_embed.0`, `time_embed.2` (an `nn.Sequential`) | `time_embed.fc1`, `time_embed.fc2` | key remapping |
//!
//! Nothing is ever loaded partially: every tensor the network needs must be present with its
//! shape, and every tensor of the file must be used, or [`load_weights`] returns
//! [`ExchangeError::Mismatch`] listing all offenders in the reference's names.
//!
//! Config inference ([`infer_uvit`]) reads the U-ViT's sizes from tensor shapes. Two things leave
//! no trace in shapes: the number of attention heads (the reference's configs all use 64
//! channels a head, the default here) and a fixed skip coefficient (`1`, `1/sqrt2` and CS have
//! no parameters), which must then be given.

use crate::network::{DiffusionNet, ModelConfig};
use crate::skip_scaling::SkipScaling;
use crate::uvit::UViTConfig;
use burn::store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, ChainAdapter, FloatCastAdapter, KeyRemapper, ModuleSnapshot,
    ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::DType;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Channels per attention head in every configuration of the reference code.
pub const REFERENCE_HEAD_DIM: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: cannot write: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{}", mismatch_message(.path, .missing, .unexpected, .misshaped, .other))]
    Mismatch {
        path: PathBuf,
        /// Tensors the network needs that the file lacks (reference names).
        missing: Vec<String>,
        /// Tensors of the file the network has no place for.
        unexpected: Vec<String>,
        /// `(name, expected shape, shape in the file)`, in the reference's layout.
        misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
        /// Anything else burn-store refused (a dtype it cannot convert, unreadable data).
        other: Vec<String>,
    },
    #[error("{path}: cannot infer the model config: {message}")]
    Infer { path: PathBuf, message: String },
}

fn mismatch_message(
    path: &Path,
    missing: &[String],
    unexpected: &[String],
    misshaped: &[(String, Vec<usize>, Vec<usize>)],
    other: &[String],
) -> String {
    let mut msg = format!("{}: the checkpoint does not match the model; nothing was loaded", path.display());
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            let _ = write!(msg, "\n  {title} ({}):", lines.len());
            for line in lines {
                let _ = write!(msg, "\n    {line}");
            }
        }
    };
    section("missing from the file", missing.to_vec());
    section("in the file but not in the model", unexpected.to_vec());
    section(
        "wrong shape",
        misshaped.iter().map(|(name, want, got)| format!("{name}: the model has {want:?}, the file {got:?}")).collect(),
    );
    section("other errors", other.to_vec());
    msg
}

/// The two file formats a reference checkpoint comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// `torch.save` of a state dict (a zip of pickles): `.pth`, `.pt`, `.bin`, `.ckpt`.
    Pytorch,
}

impl WeightsFormat {
    pub fn of(path: &Path) -> Result<Self, ExchangeError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(Self::Safetensors),
            Some("pth" | "pt" | "bin" | "ckpt") => Ok(Self::Pytorch),
            _ => Err(ExchangeError::Read {
                path: path.into(),
                message: "unknown checkpoint format; expected a .safetensors, .pth, .pt, .bin or .ckpt file".into(),
            }),
        }
    }
}

/// A checkpoint file and, for a `torch.save` of a dict that holds the state dict (`{"model": sd,
/// "step": ...}`), the key of the state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFile {
    pub path: PathBuf,
    pub key: Option<String>,
}

impl CheckpointFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), key: None }
    }

    pub fn with_key(self, key: Option<String>) -> Self {
        Self { key, ..self }
    }
}

/// Reads a checkpoint into the reference's tensors, whichever the format.
enum Reader {
    Safetensors(SafetensorsStore),
    Pytorch(PytorchStore),
}

impl Reader {
    /// `remapper` renames the file's tensors to our paths (none: the file's own names).
    fn open(file: &CheckpointFile, remapper: KeyRemapper) -> Result<Self, ExchangeError> {
        let path = file.path.as_path();
        if !path.is_file() {
            return Err(ExchangeError::Read { path: path.into(), message: "no such file".into() });
        }
        // Reference checkpoints are f32; a half or double one is converted rather than refused.
        let adapter = || ChainAdapter::new(PyTorchToBurnAdapter, FloatCastAdapter::to(DType::F32));
        Ok(match WeightsFormat::of(path)? {
            WeightsFormat::Safetensors if file.key.is_some() => {
                return Err(ExchangeError::Read {
                    path: path.into(),
                    message: "a safetensors file holds one flat set of tensors; a key applies to .pth files only"
                        .into(),
                });
            }
            WeightsFormat::Safetensors => {
                let store = SafetensorsStore::from_file(path)
                    .with_from_adapter(adapter())
                    .skip_enum_variants(true)
                    .remap(remapper)
                    .allow_partial(true)
                    .validate(false);
                Self::Safetensors(store)
            }
            WeightsFormat::Pytorch => {
                let store = PytorchStore::from_file(path)
                    .skip_enum_variants(true)
                    // Our indices are contiguous; renumbering would hide a missing block.
                    .map_indices_contiguous(false)
                    .remap(remapper)
                    .allow_partial(true)
                    .validate(false);
                Self::Pytorch(match &file.key {
                    Some(key) => store.with_top_level_key(key),
                    None => store,
                })
            }
        })
    }

    fn shapes(&mut self) -> Result<BTreeMap<String, Vec<usize>>, String> {
        fn collect<S: ModuleStore>(store: &mut S) -> Result<BTreeMap<String, Vec<usize>>, String> {
            let tensors = store.get_all_tensors().map_err(|e| e.to_string())?;
            Ok(tensors.iter().map(|(name, t)| (name.clone(), t.shape.to_vec())).collect())
        }
        match self {
            Self::Safetensors(s) => collect(s),
            Self::Pytorch(s) => collect(s),
        }
    }

    fn apply<M: ModuleSnapshot>(&mut self, module: &mut M) -> Result<ApplyResult, String> {
        match self {
            Self::Safetensors(s) => module.load_from(s).map_err(|e| e.to_string()),
            Self::Pytorch(s) => module.load_from(s).map_err(|e| e.to_string()),
        }
    }
}

/// Every tensor of a checkpoint file with its shape, under the file's own (reference) names.
pub fn tensor_shapes(file: &CheckpointFile) -> Result<BTreeMap<String, Vec<usize>>, ExchangeError> {
    Reader::open(file, KeyRemapper::new())?
        .shapes()
        .map_err(|message| ExchangeError::Read { path: file.path.clone(), message })
}

/// A strategy the reference's code lacks ([`SkipScaling::in_pytorch_reference`]) is in none of
/// its checkpoints, and it could not load ours.
fn reference_has(strategy: SkipScaling) -> Result<(), String> {
    if strategy.in_pytorch_reference() {
        Ok(())
    } else {
        Err(format!(
            "the PyTorch reference has no {strategy} strategy (one of scalelong's own): its code cannot hold or load it"
        ))
    }
}

fn is_shared_gate(net: &DiffusionNet) -> bool {
    matches!(net, DiffusionNet::UViT(_)) && matches!(net.scaling(), SkipScaling::Learnable { shared: true, .. })
}

/// Our parameter path in the reference's naming, for messages: `gamma`/`beta` are `weight`/`bias`,
/// enum variants vanish, a U-ViT's time MLP is `time_embed.0`/`.2`, a shared gate is `se`.
fn reference_name(path: &str, uvit: bool, shared_gate: bool) -> String {
    let parts: Vec<&str> = path
        .split('.')
        .filter(|p| !matches!(*p, "UViT" | "UNet" | "Stem" | "Res" | "Down"))
        .map(|p| match p {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        })
        .collect();
    let mut name = parts.join(".");
    if uvit {
        name = name.replacen("time_embed.fc1.", "time_embed.0.", 1).replacen("time_embed.fc2.", "time_embed.2.", 1);
    }
    match name.strip_prefix("se.0.") {
        Some(rest) if shared_gate => format!("se.{rest}"),
        _ => name,
    }
}

/// Loads a reference state dict into `net` (whose config and strategy must match the file):
/// all or nothing.
pub fn load_weights(mut net: DiffusionNet, file: &CheckpointFile) -> Result<DiffusionNet, ExchangeError> {
    let path = file.path.as_path();
    let shared = is_shared_gate(&net);
    let uvit = matches!(net, DiffusionNet::UViT(_));
    let mut remaps = Vec::new();
    if uvit {
        remaps.extend([(r"^time_embed\.0\.", "time_embed.fc1."), (r"^time_embed\.2\.", "time_embed.fc2.")]);
    }
    if shared {
        remaps.push((r"^se\.(layer[12])\.", "se.0.$1."));
    }
    let mut reader = Reader::open(file, KeyRemapper::from_patterns(remaps).expect("valid patterns"))?;
    let result = match &mut net {
        DiffusionNet::UViT(m) => reader.apply(m),
        DiffusionNet::UNet(m) => reader.apply(m),
    }
    .map_err(|message| ExchangeError::Read { path: path.into(), message })?;
    let mut misshaped = Vec::new();
    let mut other = Vec::new();
    for error in result.errors {
        match error {
            ApplyError::ShapeMismatch { path, expected, found } => {
                // Shapes in the reference's layout: a Linear weight is [out, in] there.
                let torch_layout = |s: Vec<usize>| if s.len() == 2 { vec![s[1], s[0]] } else { s };
                misshaped.push((
                    reference_name(&path, uvit, shared),
                    torch_layout(expected.to_vec()),
                    torch_layout(found.to_vec()),
                ));
            }
            error => other.push(error.to_string()),
        }
    }
    let missing: Vec<String> = result.missing.iter().map(|(p, _)| reference_name(p, uvit, shared)).collect();
    let unexpected: Vec<String> = result.unused.iter().map(|p| reference_name(p, uvit, shared)).collect();
    // Nothing matched and every tensor of the file shares a first name: a nested state dict.
    let first = |name: &String| name.split('.').next().map(str::to_string);
    if result.applied.is_empty()
        && !unexpected.is_empty()
        && unexpected.iter().all(|n| first(n) == first(&unexpected[0]))
    {
        let prefix = first(&unexpected[0]).unwrap_or_default();
        other.push(format!(
            "every tensor of the file is under `{prefix}.`: a state dict nested in a dict; give its key ({prefix})"
        ));
    }
    if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() && other.is_empty() {
        Ok(net)
    } else {
        Err(ExchangeError::Mismatch { path: path.into(), missing, unexpected, misshaped, other })
    }
}

/// Writes `net`'s weights as `.safetensors` under the reference's names and layouts, atomically
/// (a temporary file beside `path`, then a rename).
pub fn save_safetensors(net: &DiffusionNet, path: &Path) -> Result<(), ExchangeError> {
    let write_error = |message: String| ExchangeError::Write { path: path.into(), message };
    reference_has(net.scaling()).map_err(write_error)?;
    let tmp = path.with_extension(format!("safetensors.{}.tmp", std::process::id()));
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .overwrite(true)
        .metadata("producer", "scalelong")
        .metadata("scaling", net.scaling().to_string());
    let mut remaps = Vec::new();
    if let DiffusionNet::UViT(_) = net {
        remaps.extend([(r"^time_embed\.fc1\.", "time_embed.0."), (r"^time_embed\.fc2\.", "time_embed.2.")]);
    }
    if is_shared_gate(net) {
        remaps.push((r"^se\.0\.", "se."));
    }
    store = store.remap(KeyRemapper::from_patterns(remaps).expect("valid patterns"));
    let saved = match net {
        DiffusionNet::UViT(m) => m.save_into(&mut store),
        DiffusionNet::UNet(m) => m.save_into(&mut store),
    };
    saved.map_err(|e| write_error(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_error(e.to_string())
    })
}

/// What the shapes of a U-ViT checkpoint say: its config (with `heads` attention heads, or one
/// head per [`REFERENCE_HEAD_DIM`] channels), and the LS strategy when the file holds gates.
pub fn infer_uvit(
    shapes: &BTreeMap<String, Vec<usize>>,
    heads: Option<usize>,
) -> Result<(UViTConfig, Option<SkipScaling>), String> {
    let shape = |name: &str| shapes.get(name).ok_or_else(|| format!("no tensor {name}; is this a U-ViT state dict?"));
    let count =
        |prefix: &str| (0..).take_while(|k| shapes.keys().any(|n| n.starts_with(&format!("{prefix}.{k}.")))).count();
    let patch = shape("patch_embed.proj.weight")?; // [D, C, p, p]
    let (embed_dim, in_chans, patch_size) = (patch[0], patch[1], patch[2]);
    let tokens = shape("pos_embed")?[1];
    let side = ((tokens - 1) as f64).sqrt().round() as usize;
    if side * side + 1 != tokens {
        return Err(format!("pos_embed has {tokens} tokens, not one time token plus a square grid of patches"));
    }
    let (in_blocks, out_blocks) = (count("in_blocks"), count("out_blocks"));
    if in_blocks == 0 || in_blocks != out_blocks || !shapes.contains_key("mid_block.norm1.weight") {
        return Err(format!(
            "expected as many in_blocks as out_blocks and a mid_block; found {in_blocks} and {out_blocks}"
        ));
    }
    let hidden = shape("in_blocks.0.mlp.fc1.weight")?[0];
    let num_heads = match heads {
        Some(h) => h,
        None if embed_dim % REFERENCE_HEAD_DIM == 0 => embed_dim / REFERENCE_HEAD_DIM,
        None => {
            return Err(format!(
                "embed_dim {embed_dim} is not a multiple of {REFERENCE_HEAD_DIM}; give the number of attention heads"
            ));
        }
    };
    let config = UViTConfig {
        img_size: side * patch_size,
        patch_size,
        in_chans,
        embed_dim,
        depth: 2 * in_blocks,
        num_heads,
        mlp_ratio: hidden as f64 / embed_dim as f64,
        qkv_bias: shapes.contains_key("in_blocks.0.attn.qkv.bias"),
        mlp_time_embed: shapes.contains_key("time_embed.0.weight"),
        conv: shapes.contains_key("final_layer.weight"),
    };
    config.validate()?;
    Ok((config, infer_uvit_gates(shapes, tokens)))
}

/// The LS form of a U-ViT checkpoint with `tokens` tokens: shared (`se.layer1`) or one gate per
/// LSC (`se.K.layer1`), the reduction from the gate's hidden width; `None` without gates.
fn infer_uvit_gates(shapes: &BTreeMap<String, Vec<usize>>, tokens: usize) -> Option<SkipScaling> {
    let gate = |prefix: &str| shapes.get(&format!("{prefix}.layer1.weight")).map(|s| s[0]);
    let (shared, hidden) = match (gate("se"), gate("se.0")) {
        (Some(hidden), _) => (true, hidden),
        (None, Some(hidden)) => (false, hidden),
        (None, None) => return None,
    };
    Some(SkipScaling::Learnable { shared, reduction: (tokens / hidden).max(1) })
}

/// The model config and strategy of a checkpoint: inferred where the shapes tell, checked
/// against what the caller gives.
pub fn resolve_config(
    file: &CheckpointFile,
    given_model: Option<ModelConfig>,
    given_strategy: Option<SkipScaling>,
    heads: Option<usize>,
) -> Result<(ModelConfig, SkipScaling), ExchangeError> {
    let infer_error = |message: String| ExchangeError::Infer { path: file.path.clone(), message };
    let shapes = tensor_shapes(file)?;
    let has_gates = shapes.keys().any(|n| n.starts_with("se.") || n.contains(".gate."));
    let model = match given_model {
        Some(model) => model,
        None if shapes.contains_key("patch_embed.proj.weight") => {
            ModelConfig::Uvit(infer_uvit(&shapes, heads).map_err(infer_error)?.0)
        }
        None => {
            return Err(infer_error(
                "only a U-ViT's config can be read from tensor shapes (a conv UNet's attention heads and norm groups leave none); give the model".into(),
            ));
        }
    };
    let inferred = match &model {
        ModelConfig::Uvit(c) if has_gates => infer_uvit_gates(&shapes, c.tokens()),
        _ => None,
    };
    let strategy = match (given_strategy, inferred) {
        (Some(s), _) => s,
        (None, Some(s)) => s,
        (None, None) if has_gates => {
            return Err(infer_error(
                "the file holds LS gates; give the strategy (ls or ls-nonshared) and its reduction".into(),
            ));
        }
        (None, None) => {
            return Err(infer_error(
                "a fixed skip coefficient (1, 1/sqrt2, cs) leaves no tensors; give the strategy the checkpoint was trained with".into(),
            ));
        }
    };
    reference_has(strategy).map_err(infer_error)?;
    if has_gates != matches!(strategy, SkipScaling::Learnable { .. }) {
        let holds = if has_gates { "holds LS gates" } else { "holds no LS gates" };
        return Err(infer_error(format!("the file {holds}, but the strategy is {strategy}")));
    }
    Ok((model, strategy))
}
