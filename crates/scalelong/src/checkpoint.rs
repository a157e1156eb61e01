//! Checkpoints: everything needed to resume a run exactly, in one folder per checkpoint.
//!
//! | file | content |
//! |---|---|
//! | `model.bpk` | the trained weights (burn record) |
//! | `ema.bpk` | the EMA weights |
//! | `optimizer.bin` | AdamW moments and step counts |
//! | `state.json` | step, config; the data order and the per-step noise are functions of (seed, step), so no RNG stream needs saving |
//! | `manifest.json` | every other file's size and CRC-32, written last |
//!
//! A save writes `checkpoint.tmp/`, reads it back against its manifest, then turns the current
//! `checkpoint/` into `checkpoint.prev/` (the one before that is deleted) and puts the new one in
//! its place. A crash anywhere leaves at least one complete checkpoint, and the previous one stays
//! as a fallback: resuming takes `checkpoint/` when it verifies and loads, else `checkpoint.prev/`
//! with a warning naming both (the damaged one is kept aside as `checkpoint.damaged/`); with no
//! loadable checkpoint it is an error saying so, and nothing is overwritten.

use crate::config::ResolveModel;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use scalelong_model::DiffusionNet;
use scalelong_schema::{CheckpointState, read_json, write_atomic, write_json_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    pub state: CheckpointState,
    pub model: DiffusionNet,
    pub ema: DiffusionNet,
    pub optimizer: ModuleOptimizer,
}

const MANIFEST: &str = "manifest.json";
/// The files a checkpoint holds besides its manifest.
const FILES: [&str; 4] = ["model.bpk", "ema.bpk", "optimizer.bin", "state.json"];

/// `manifest.json`: what a complete checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct FileEntry {
    bytes: u64,
    crc32: u32,
}

/// The latest checkpoint's folder.
pub fn folder(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

/// The previous checkpoint's folder, kept as a fallback.
fn previous(run: &Path) -> PathBuf {
    run.join("checkpoint.prev")
}

pub fn save(
    run: &Path,
    state: &CheckpointState,
    model: &DiffusionNet,
    ema: &DiffusionNet,
    optimizer: &ModuleOptimizer,
) -> Result<()> {
    let tmp = run.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_verified(&tmp, state, model, ema, optimizer);
    if let Err(error) = written {
        // A full disk or a read-only folder: no half-written checkpoint is left behind.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(error);
    }
    let (current, prev) = (folder(run), previous(run));
    if current.exists() {
        if prev.exists() {
            std::fs::remove_dir_all(&prev).with_context(|| format!("{}: cannot remove", prev.display()))?;
        }
        std::fs::rename(&current, &prev)
            .with_context(|| format!("{}: cannot rename to {}", current.display(), prev.display()))?;
    }
    std::fs::rename(&tmp, &current)
        .with_context(|| format!("{}: cannot rename to {}", tmp.display(), current.display()))
}

/// Writes every file of a checkpoint into `dir`, then its manifest, then reads it back against it.
fn write_verified(
    dir: &Path,
    state: &CheckpointState,
    model: &DiffusionNet,
    ema: &DiffusionNet,
    optimizer: &ModuleOptimizer,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let record = |m: &DiffusionNet| -> Result<Vec<u8>> { Ok(m.clone().into_record().into_bytes()?.to_vec()) };
    let mut state_json = serde_json::to_vec_pretty(state)?;
    state_json.push(b'\n');
    let contents = [record(model)?, record(ema)?, optimizer.into_bytes()?.to_vec(), state_json];
    let mut files = BTreeMap::new();
    for (name, bytes) in FILES.iter().zip(&contents) {
        write_atomic(&dir.join(name), bytes)?;
        files.insert(name.to_string(), FileEntry { bytes: bytes.len() as u64, crc32: crc32fast::hash(bytes) });
    }
    write_json_atomic(&dir.join(MANIFEST), &Manifest { files })?;
    verify(dir).map(|_| ())
}

/// Checks `dir` against its manifest (every file present with its size and CRC-32) and reads its
/// state; a checkpoint from before manifests is accepted when every file is present.
fn verify(dir: &Path) -> Result<CheckpointState> {
    let manifest_path = dir.join(MANIFEST);
    if manifest_path.exists() {
        let manifest: Manifest = read_json(&manifest_path)?;
        for name in FILES {
            let entry = manifest
                .files
                .get(name)
                .with_context(|| format!("{}: does not list {name}", manifest_path.display()))?;
            let path = dir.join(name);
            let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            if bytes.len() as u64 != entry.bytes || crc32fast::hash(&bytes) != entry.crc32 {
                bail!(
                    "{}: {} bytes with CRC-32 {:08x}, the manifest says {} bytes with {:08x}",
                    path.display(),
                    bytes.len(),
                    crc32fast::hash(&bytes),
                    entry.bytes,
                    entry.crc32
                );
            }
        }
    } else if let Some(missing) = FILES.iter().find(|name| !dir.join(name).exists()) {
        bail!("{}: missing", dir.join(missing).display());
    }
    read_json(&dir.join("state.json"))
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

/// Loads the checkpoint in `dir`, verified, into freshly initialised modules of the right shape.
fn load(dir: &Path, model: DiffusionNet, ema: DiffusionNet, optimizer: ModuleOptimizer) -> Result<Checkpoint> {
    let state = verify(dir)?;
    let model = load_network(dir, "model.bpk", model)?;
    let ema = load_network(dir, "ema.bpk", ema)?;
    let optimizer = optimizer
        .from_bytes(read(dir, "optimizer.bin")?)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| corrupt(dir, "optimizer.bin"))?;
    Ok(Checkpoint { state, model, ema, optimizer })
}

/// The checkpoint folders of `run` that exist, newest first (`checkpoint.old/` is where a save of
/// an earlier version left the previous one).
fn candidates(run: &Path) -> Vec<PathBuf> {
    [folder(run), previous(run), run.join("checkpoint.old")].into_iter().filter(|dir| dir.is_dir()).collect()
}

/// Whether `run` holds any checkpoint.
pub fn exists(run: &Path) -> bool {
    !candidates(run).is_empty()
}

/// The newest checkpoint of `run` that verifies and loads into the given fresh modules: `None` when
/// the run has none; an error naming every checkpoint and why it failed when none loads. Falling
/// back to an older one prints a warning naming both and moves the damaged one to
/// `checkpoint.damaged/`, so that the next save does not rotate it over the good one.
pub fn resume(
    run: &Path,
    model: &DiffusionNet,
    ema: &DiffusionNet,
    optimizer: &ModuleOptimizer,
) -> Result<Option<Checkpoint>> {
    let dirs = candidates(run);
    if dirs.is_empty() {
        return Ok(None);
    }
    let mut failures = Vec::new();
    for dir in &dirs {
        match load(dir, model.clone(), ema.clone(), optimizer.clone()) {
            Ok(checkpoint) => {
                if !failures.is_empty() {
                    set_damaged_aside(run, &dirs[0])?;
                    eprintln!(
                        "warning: {} does not load ({}); resuming from {} (step {}) instead",
                        dirs[0].display(),
                        failures.join("; "),
                        dir.display(),
                        checkpoint.state.step
                    );
                }
                return Ok(Some(checkpoint));
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    let tried: Vec<String> = dirs.iter().zip(&failures).map(|(dir, why)| format!("{}: {why}", dir.display())).collect();
    bail!(
        "{}: no checkpoint loads, so the run cannot continue (nothing was changed): {}",
        run.display(),
        tried.join("; ")
    )
}

fn set_damaged_aside(run: &Path, damaged: &Path) -> Result<()> {
    let aside = run.join("checkpoint.damaged");
    let _ = std::fs::remove_dir_all(&aside);
    std::fs::rename(damaged, &aside)
        .with_context(|| format!("{}: cannot move aside to {}", damaged.display(), aside.display()))
}

/// One network of a run folder's newest loadable checkpoint (`weights` is `model` or `ema`), built
/// from the config it was saved with; the optimizer state is not read.
pub fn load_latest_weights(
    run: &Path,
    weights: &str,
    device: &burn::prelude::Device,
) -> Result<(CheckpointState, DiffusionNet)> {
    let dirs = candidates(run);
    if dirs.is_empty() {
        bail!("{}: no checkpoint (is this a run folder?)", run.display());
    }
    let mut failures = Vec::new();
    for dir in &dirs {
        let attempt = || -> Result<(CheckpointState, DiffusionNet)> {
            let state = verify(dir)?;
            let model_config =
                state.config.model.resolve().with_context(|| format!("{}", dir.join("state.json").display()))?;
            let net = load_network(dir, &format!("{weights}.bpk"), model_config.init(state.config.strategy, device))?;
            Ok((state, net))
        };
        match attempt() {
            Ok(loaded) => {
                if !failures.is_empty() {
                    eprintln!(
                        "warning: {} does not load ({}); using {}",
                        dirs[0].display(),
                        failures.join("; "),
                        dir.display()
                    );
                }
                return Ok(loaded);
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    bail!("{}: no checkpoint loads: {}", run.display(), failures.join("; "))
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
        let config = ModelConfig::Uvit(UViTConfig::tiny(4));
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
            (g.len(), crate::optimizer::global_grad_norm(m, &g))
        };
        let (count, original) = norm(&model);
        assert_eq!(count, a.0.len(), "every parameter receives a gradient");
        assert_eq!((count, original), norm(&loaded));
    }
}
