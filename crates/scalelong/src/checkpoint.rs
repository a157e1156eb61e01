//! Checkpoints: everything needed to resume a run exactly, in one folder that is swapped in
//! atomically (written as `checkpoint.tmp/`, then renamed over `checkpoint/`).
//!
//! | file | content |
//! |---|---|
//! | `model.bpk` | the trained weights (burn record) |
//! | `ema.bpk` | the EMA weights |
//! | `optimizer.bin` | AdamW moments and step counts |
//! | `state.json` | step, config; the data order and the per-step noise are functions of (seed, step), so no RNG stream needs saving |

use crate::config::ResolveModel;
use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use scalelong_model::DiffusionNet;
use scalelong_schema::{CheckpointState, read_json, write_atomic, write_json_atomic};
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    pub state: CheckpointState,
    pub model: DiffusionNet,
    pub ema: DiffusionNet,
    pub optimizer: ModuleOptimizer,
}

pub fn folder(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

pub fn save(
    run: &Path,
    state: &CheckpointState,
    model: &DiffusionNet,
    ema: &DiffusionNet,
    optimizer: &ModuleOptimizer,
) -> Result<()> {
    let tmp = run.join("checkpoint.tmp");
    let old = run.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let record = |m: &DiffusionNet| -> Result<Vec<u8>> { Ok(m.clone().into_record().into_bytes()?.to_vec()) };
    write_atomic(&tmp.join("model.bpk"), &record(model)?)?;
    write_atomic(&tmp.join("ema.bpk"), &record(ema)?)?;
    write_atomic(&tmp.join("optimizer.bin"), &optimizer.into_bytes()?.to_vec())?;
    write_json_atomic(&tmp.join("state.json"), state)?;
    // Swap: the previous checkpoint stays readable (as checkpoint.old) until the new one is in place.
    let current = folder(run);
    if current.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&current, &old)?;
    }
    std::fs::rename(&tmp, &current)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The newest complete checkpoint of `run`, if any: `checkpoint/`, or `checkpoint.old/` when a
/// crash fell between the two renames of [`save`].
pub fn latest(run: &Path) -> Option<PathBuf> {
    [folder(run), run.join("checkpoint.old")].into_iter().find(|p| p.join("state.json").exists())
}

fn read(dir: &Path, file: &str) -> Result<Bytes> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(Bytes::from_bytes_vec(bytes))
}

fn corrupt(dir: &Path, file: &str) -> String {
    format!("{}: corrupt or incompatible checkpoint file", dir.join(file).display())
}

/// `dir/file` (a burn record) into `net`.
fn load_network(dir: &Path, file: &str, net: DiffusionNet) -> Result<DiffusionNet> {
    let record = ModuleRecord::from_bytes(read(dir, file)?)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| corrupt(dir, file))?;
    net.try_load_record(record).map_err(|e| anyhow::anyhow!("{e:?}")).with_context(|| corrupt(dir, file))
}

/// Loads a checkpoint into freshly initialised modules of the right shape.
pub fn load(dir: &Path, model: DiffusionNet, ema: DiffusionNet, optimizer: ModuleOptimizer) -> Result<Checkpoint> {
    let state: CheckpointState = read_json(&dir.join("state.json"))?;
    let model = load_network(dir, "model.bpk", model)?;
    let ema = load_network(dir, "ema.bpk", ema)?;
    let optimizer = optimizer
        .from_bytes(read(dir, "optimizer.bin")?)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| corrupt(dir, "optimizer.bin"))?;
    Ok(Checkpoint { state, model, ema, optimizer })
}

/// One network of a run folder's latest checkpoint (`weights` is `model` or `ema`), built from the
/// config it was saved with; the optimizer state is not read.
pub fn load_latest_weights(
    run: &Path,
    weights: &str,
    device: &burn::prelude::Device,
) -> Result<(CheckpointState, DiffusionNet)> {
    let dir = latest(run).with_context(|| format!("{}: no checkpoint (is this a run folder?)", run.display()))?;
    let state: CheckpointState = read_json(&dir.join("state.json"))?;
    let model_config = state.config.model.resolve().with_context(|| format!("{}", dir.join("state.json").display()))?;
    let net = load_network(&dir, &format!("{weights}.bpk"), model_config.init(state.config.strategy, device))?;
    Ok((state, net))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use scalelong_model::uvit::UViTConfig;
    use scalelong_model::{ModelConfig, SkipScaling};

    struct Ids(Vec<u64>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id.val());
        }
    }

    /// A reloaded network must train exactly like the saved one: same parameter ids (the optimizer
    /// state is keyed by them) and the same gradients (every parameter still trainable).
    #[test]
    fn a_reloaded_network_has_the_same_ids_and_gradients() {
        let device = Device::flex().autodiff();
        let config = ModelConfig::Uvit(UViTConfig {
            img_size: 8,
            patch_size: 2,
            embed_dim: 16,
            depth: 4,
            num_heads: 2,
            ..UViTConfig::default()
        });
        let model = config.init(SkipScaling::Learnable { shared: true, reduction: 16 }, &device);
        let bytes = model.clone().into_record().into_bytes().unwrap().to_vec();
        let loaded = config
            .init(SkipScaling::Learnable { shared: true, reduction: 16 }, &device)
            .try_load_record(ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).unwrap())
            .unwrap();
        let mut a = Ids(vec![]);
        model.visit(&mut a);
        let mut b = Ids(vec![]);
        loaded.visit(&mut b);
        assert_eq!(a.0, b.0, "parameter ids survive the record");
        let x = Tensor::<4>::ones([2, 1, 8, 8], &device);
        let t = Tensor::<1>::from_floats([3.0, 500.0], &device);
        let norm = |m: &DiffusionNet| {
            let loss = m.forward(x.clone(), t.clone(), None).square().mean();
            let g = GradientsParams::from_grads(loss.backward(), m);
            (g.len(), crate::train::global_grad_norm(m, &g))
        };
        let (count, original) = norm(&model);
        assert_eq!(count, a.0.len(), "every parameter receives a gradient");
        assert_eq!((count, original), norm(&loaded));
    }
}
