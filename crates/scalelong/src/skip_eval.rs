//! Sampling-time skip edits on a trained network (docs/method.md §3.5), into `skip_eval.jsonl`:
//! the final EMA weights evaluated unedited and under each setting of `eval.skip_edits`
//! (Skip-Tuning ramps, FreeU, each LSC alone scaled), every setting with the same held-out images
//! and noise (and the same sampling noise for its FD) as the unedited line, so that their
//! differences are paired and carry no sampling noise of their own.
//!
//! At the end of training when `eval.skip_edits` is set, or later on any trained run with
//! `scalelong skip-eval`.

use crate::checkpoint::load_latest_weights;
use crate::config::ResolveModel;
use crate::eval::evaluate;
use crate::images::load_images;
use crate::samples::{encode_rows, generate};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use scalelong_data::{ImageSet, Split};
use scalelong_model::diffusion::NoiseSchedule;
use scalelong_model::{DiffusionNet, FreeU, ModelConfig, SkipEdit};
use scalelong_schema::{EditKind, RunConfig, SkipEditSpec, SkipEvalLine, write_atomic};
use std::path::{Path, PathBuf};

/// One setting: what `skip_eval.jsonl` names it, the edit, and whether it gets an FD.
struct Setting {
    kind: EditKind,
    setting: String,
    lsc: Option<u32>,
    factor: Option<f64>,
    edit: SkipEdit,
    with_fd: bool,
}

/// The settings `specs` expand to on a network with `n` LSCs, the unedited one first.
fn settings(specs: &[SkipEditSpec], n: usize, fd: bool) -> Vec<Setting> {
    let unedited = Setting {
        kind: EditKind::Unedited,
        setting: "unedited".into(),
        lsc: None,
        factor: None,
        edit: SkipEdit::default(),
        with_fd: fd,
    };
    let mut all = vec![unedited];
    for spec in specs {
        match spec {
            SkipEditSpec::SkipTuning { rho_outer, rho_inner } => all.push(Setting {
                kind: EditKind::SkipTuning,
                setting: format!("rho {rho_outer} -> {rho_inner}"),
                lsc: None,
                factor: None,
                edit: SkipEdit::ramp(n, *rho_outer, *rho_inner),
                with_fd: fd,
            }),
            &SkipEditSpec::Freeu { b, s, threshold } => all.push(Setting {
                kind: EditKind::FreeU,
                setting: format!("b {}/{} s {}/{} threshold {threshold}", b[0], b[1], s[0], s[1]),
                lsc: None,
                factor: None,
                edit: SkipEdit { rho: Vec::new(), freeu: Some(FreeU { b, s, threshold }) },
                with_fd: fd,
            }),
            SkipEditSpec::Importance { factors } => {
                for lsc in 1..=n {
                    for &factor in factors {
                        all.push(Setting {
                            kind: EditKind::Importance,
                            setting: format!("LSC {lsc} x {factor}"),
                            lsc: Some(lsc as u32),
                            factor: Some(factor),
                            edit: SkipEdit::only(n, lsc, factor),
                            with_fd: false,
                        });
                    }
                }
            }
        }
    }
    all
}

/// Evaluates `ema` (after `step` steps) unedited and under every setting of `specs`, with
/// `config.eval`'s held-out images and FD samples; writes nothing.
// As `eval::evaluate`, whose arguments these are.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_edits(
    step: u64,
    ema: &DiffusionNet,
    model_config: &ModelConfig,
    schedule: &NoiseSchedule,
    config: &RunConfig,
    specs: &[SkipEditSpec],
    sets: (&ImageSet, &ImageSet),
    device: &Device,
    mut log: impl FnMut(&str),
) -> Result<Vec<SkipEvalLine>> {
    let (test_set, train_set) = sets;
    let mut lines = Vec::new();
    for s in settings(specs, ema.num_skips(), config.eval.skip_edit_fd) {
        let edited = ema.clone().with_edit(s.edit);
        let sampler = config.diffusion.sampler;
        let line = evaluate(
            step,
            &edited,
            model_config,
            schedule,
            sampler,
            test_set,
            train_set,
            &config.eval,
            s.with_fd,
            device,
        )
        .with_context(|| format!("skip edit {}", s.setting))?;
        log(&format!("skip edit {}: held-out loss {:.4} FD {:?}", s.setting, line.heldout_loss, line.fd));
        lines.push(SkipEvalLine {
            step,
            kind: s.kind,
            setting: s.setting,
            lsc: s.lsc,
            factor: s.factor,
            heldout_loss: line.heldout_loss,
            heldout_loss_bins: line.heldout_loss_bins,
            fd: line.fd,
        });
    }
    Ok(lines)
}

/// `skip_eval.jsonl` of `run`, written whole (atomically).
pub fn write_lines(run: &Path, lines: &[SkipEvalLine]) -> Result<()> {
    let mut jsonl = String::new();
    for line in lines {
        jsonl.push_str(&serde_json::to_string(line)?);
        jsonl.push('\n');
    }
    write_atomic(&run.join("skip_eval.jsonl"), jsonl.as_bytes())
}

/// `scalelong skip-eval`: the latest checkpoint's EMA weights of `run`, edited by `specs` (the
/// run's own `eval.skip_edits` when `None`), into `run/skip_eval.jsonl` (replacing it).
pub fn skip_eval_run(run: &Path, specs: Option<&[SkipEditSpec]>, device: &Device) -> Result<usize> {
    let (state, ema) = load_latest_weights(run, "ema", &device.clone().inner())?;
    let config = state.config;
    let specs = specs.unwrap_or(&config.eval.skip_edits);
    if specs.is_empty() {
        bail!(
            "{}: its eval.skip_edits is empty; pass --edits FILE (a TOML file with skip_edits = [...])",
            run.display()
        );
    }
    let model_config = config.model.resolve()?;
    let schedule = NoiseSchedule::new(&config.diffusion.schedule);
    let test_set = load_images(&config, &model_config, Split::Test)?;
    let train_set = load_images(&config, &model_config, Split::Train)?;
    let lines = evaluate_edits(
        state.step,
        &ema,
        &model_config,
        &schedule,
        &config,
        specs,
        (&test_set, &train_set),
        device,
        |line| eprintln!("{}: {line}", run.display()),
    )?;
    write_lines(run, &lines)?;
    Ok(lines.len())
}

/// What `scalelong sample` wrote: the grid and, per row, the setting it shows.
pub struct EditedSamples {
    pub grid: PathBuf,
    pub rows: Vec<String>,
}

/// `scalelong sample`: `count` samples (default the run's `sample_count`) of the latest
/// checkpoint's EMA weights of `run`, unedited in the first row and under each setting of `specs`
/// (default the run's own `eval.skip_edits`; none gives the unedited row alone) in the rows below,
/// every row from the same sampling noise (`seed`), so an edit's effect is seen image by image.
/// Written to `out` (default `<run>/samples/edits_seed<seed>.png`), the rows' settings beside it
/// (`.txt`, one a line).
pub fn sample_edits(
    run: &Path,
    specs: Option<&[SkipEditSpec]>,
    seed: u64,
    count: Option<usize>,
    out: Option<&Path>,
    device: &Device,
) -> Result<EditedSamples> {
    let (state, ema) = load_latest_weights(run, "ema", &device.clone().inner())?;
    let config = state.config;
    let specs = specs.unwrap_or(&config.eval.skip_edits);
    let count = count.unwrap_or(config.sample_count);
    if count == 0 {
        bail!("--count: must be at least 1");
    }
    let model_config = config.model.resolve()?;
    let schedule = NoiseSchedule::new(&config.diffusion.schedule);
    let [c, h, w] = model_config.image_shape();
    let mut pixels = Vec::new();
    let mut rows = Vec::new();
    for s in settings(specs, ema.num_skips(), false) {
        let edited = ema.clone().with_edit(s.edit);
        let images = generate(&edited, &model_config, &schedule, &config, (count, seed), device); // [count, C, H, W]
        pixels.extend(images.into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
        rows.push(s.setting);
    }
    let png = encode_rows(&pixels, [rows.len() * count, c, h, w], count)?;
    let grid = out.map_or_else(|| run.join("samples").join(format!("edits_seed{seed}.png")), Path::to_path_buf);
    if let Some(folder) = grid.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).with_context(|| format!("{}: cannot create", folder.display()))?;
    }
    write_atomic(&grid, &png)?;
    write_atomic(&grid.with_extension("txt"), (rows.join("\n") + "\n").as_bytes())?;
    Ok(EditedSamples { grid, rows })
}

/// `--edits FILE`: a TOML file holding `skip_edits = [...]`, checked like `eval.skip_edits`.
pub fn read_edits_file(path: &Path) -> Result<Vec<SkipEditSpec>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EditsFile {
        skip_edits: Vec<SkipEditSpec>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let file: EditsFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for (i, edit) in file.skip_edits.iter().enumerate() {
        edit.validate().map_err(|e| anyhow::anyhow!("{}: skip_edits[{i}].{e}", path.display()))?;
    }
    Ok(file.skip_edits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_expands_to_every_lsc_and_factor_without_fd() {
        let specs = [
            SkipEditSpec::SkipTuning { rho_outer: 1.0, rho_inner: 0.8 },
            SkipEditSpec::Importance { factors: vec![0.0, 0.5] },
        ];
        let all = settings(&specs, 3, true);
        assert_eq!(all.len(), 1 + 1 + 3 * 2);
        assert_eq!((all[0].kind, all[0].with_fd), (EditKind::Unedited, true));
        assert_eq!(all[1].setting, "rho 1 -> 0.8");
        let last = all.last().unwrap();
        assert_eq!((last.lsc, last.factor, last.with_fd), (Some(3), Some(0.5), false));
        assert_eq!(last.edit.rho, vec![1.0, 1.0, 0.5]);
    }
}
