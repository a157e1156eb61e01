//! A synthetic sweep folder for the report's tests: strategies `1` and shared LS on `uvit-small`,
//! three seeds, every file of docs/run-folder.md with values whose outcome the tests know.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use scalelong_schema::{
    AnalysisPlan, DoseQuantity, DoseResponseLine, EditKind, EvalLine, MetricsLine, Quantity, Record, RunConfig,
    RunState, SkipEvalLine, SkipScaling, Status, SweepManifest, SweepRun, write_json_atomic,
};

/// LSCs of the synthetic network; decoder block K consumes LSC `LSC_COUNT - K`.
const LSC_COUNT: u32 = 4;
pub const STEPS: u64 = 100;
const LOG_EVERY: u64 = 5;
const DIAGNOSTICS_EVERY: u64 = 10;
const T_BINS: u32 = 3;
const EVAL_EVERY: u64 = 10;
/// Where strategy 1's held-out loss levels off (LS: 0.01 lower), and how fast it gets there: it
/// falls by 4% over the last fifth of training, a plateau by the report's 5% rule.
const HELDOUT_FLOOR: f64 = 0.1;
const HELDOUT_RATE: f64 = 6.0;
/// The held-out loss of a collapsed run: 0.95 of the zero predictor's.
const COLLAPSED_LOSS: f64 = 0.95;
/// Training loss of strategy `1`: `LOSS_FLOOR + exp(-BASELINE_LOSS_RATE * step / STEPS)`.
const BASELINE_LOSS_RATE: f64 = 3.0;
const LOSS_FLOOR: f64 = 0.2;
/// LS gate on LSC i: `GATE_A * GATE_KAPPA^(i-1)`, an exact exponential decay.
const GATE_A: f64 = 0.9;
pub const GATE_KAPPA: f64 = 0.6;
const M0: f64 = 1.5;
/// Sampling-time edits of every evaluated run (`skip_eval.jsonl`): Skip-Tuning lowers the held-out
/// loss by this and the FD by `TUNING_FD_RATIO`; FreeU raises the loss by `FREEU_LOSS` and the FD
/// by 2%; cutting LSC i alone raises the loss by `CUT_INCREASE * 0.5^(i-1)`, halving it by a
/// quarter of that.
pub const TUNING_LOSS_CHANGE: f64 = -0.002;
pub const TUNING_FD_RATIO: f64 = 0.8;
const FREEU_LOSS: f64 = 0.01;
const CUT_INCREASE: f64 = 0.1;
/// The skips' low-frequency share, and the main path's: the skips carry less.
const SKIP_SHARE: f64 = 0.3;
const MAIN_SHARE: f64 = 0.5;

/// What to write. [`SweepFixture::default`] is a complete sweep in which LS trains faster than `1`.
pub struct SweepFixture {
    /// LS's loss decays `ls_loss_speed` times as fast as strategy `1`'s.
    pub ls_loss_speed: f64,
    pub diagnostics: bool,
    pub eval: bool,
    pub samples: bool,
    /// More than one value makes `optimizer.lr` a sweep axis.
    pub lrs: Vec<f64>,
    /// Runs (by id) that diverge half-way.
    pub diverged: Vec<String>,
    /// Runs (by id) that finish without learning: their held-out loss stays at 0.95.
    pub collapsed: Vec<String>,
    /// Every strategy's seeds (three by default; the exact paired tests need six or more).
    pub seeds: Vec<u64>,
    /// The sweep file's `[analysis]`, as `sweep.json` records it.
    pub analysis: AnalysisPlan,
    /// Write `dose_response.jsonl` (`scalelong dose-response`) into the sweep folder, every quantity
    /// proportional to its bound's factor.
    pub dose_response: bool,
}

impl Default for SweepFixture {
    fn default() -> Self {
        Self {
            ls_loss_speed: 1.5,
            diagnostics: true,
            eval: true,
            samples: true,
            lrs: vec![2e-4],
            diverged: Vec::new(),
            collapsed: Vec::new(),
            seeds: vec![0, 1, 2],
            analysis: AnalysisPlan::default(),
            dose_response: true,
        }
    }
}

/// One synthetic run's identity.
pub struct FixtureRun {
    pub id: String,
    ls: bool,
    seed: u64,
    lr: f64,
}

impl SweepFixture {
    pub fn runs(&self) -> Vec<FixtureRun> {
        let mut runs = Vec::new();
        for ls in [false, true] {
            for &lr in &self.lrs {
                for &seed in &self.seeds {
                    let lr_part = if self.lrs.len() > 1 { format!("_lr{lr}") } else { String::new() };
                    let strategy = if ls { "ls" } else { "1" };
                    runs.push(FixtureRun { id: format!("uvit-small_{strategy}{lr_part}_seed{seed}"), ls, seed, lr });
                }
            }
        }
        runs
    }

    /// Writes the sweep into a fresh folder `runs/fixture` under `root` and returns that folder.
    pub fn write(&self, root: &Path) -> PathBuf {
        let sweep_dir = root.join("runs").join("fixture");
        std::fs::create_dir_all(&sweep_dir).unwrap();
        let runs = self.runs();
        let table = |pairs: Vec<(&str, toml::Value)>| -> toml::Table {
            pairs.into_iter().map(|(key, value)| (key.to_string(), value)).collect()
        };
        let list = |values: Vec<toml::Value>| toml::Value::Array(values);
        let mut axes = table(vec![
            ("strategy", list(vec!["1".into(), "ls".into()])),
            ("seed", list(self.seeds.iter().map(|&seed| toml::Value::Integer(seed as i64)).collect())),
        ]);
        if self.lrs.len() > 1 {
            axes.insert("optimizer.lr".to_string(), list(self.lrs.iter().map(|&lr| lr.into()).collect()));
        }
        let entries = runs
            .iter()
            .map(|run| {
                let strategy = if run.ls { "ls" } else { "1" };
                let mut overrides =
                    table(vec![("strategy", strategy.into()), ("seed", toml::Value::Integer(run.seed as i64))]);
                if self.lrs.len() > 1 {
                    overrides.insert("optimizer.lr".to_string(), run.lr.into());
                }
                SweepRun { id: run.id.clone(), overrides }
            })
            .collect();
        let manifest = SweepManifest {
            name: "fixture".into(),
            base_config: Some("quick.toml".into()),
            axes,
            runs: entries,
            analysis: self.analysis.clone(),
        };
        write_json_atomic(&sweep_dir.join("sweep.json"), &manifest).unwrap();
        for run in &runs {
            self.write_run(&sweep_dir.join(&run.id), run);
        }
        if self.dose_response {
            write_jsonl(&sweep_dir.join("dose_response.jsonl"), dose_response_lines(&self.seeds));
        }
        sweep_dir
    }

    fn write_run(&self, dir: &Path, run: &FixtureRun) {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = RunConfig {
            seed: run.seed,
            strategy: if run.ls {
                SkipScaling::Learnable { shared: true, reduction: 16 }
            } else {
                SkipScaling::Original
            },
            steps: STEPS,
            log_every: LOG_EVERY,
            checkpoint_every: EVAL_EVERY,
            ..RunConfig::default()
        };
        config.optimizer.lr = run.lr;
        write_json_atomic(&dir.join("config.json"), &config).unwrap();
        let diverged_at = self.diverged.contains(&run.id).then_some(STEPS / 2);
        let last_step = diverged_at.unwrap_or(STEPS);
        let status = match diverged_at {
            Some(step) => Status { state: RunState::Diverged, step, message: Some("non-finite loss".into()) },
            None => Status { state: RunState::Completed, step: STEPS, message: None },
        };
        status.write(dir).unwrap();

        let rate = BASELINE_LOSS_RATE * if run.ls { self.ls_loss_speed } else { 1.0 };
        let metrics = (1..=last_step / LOG_EVERY).map(|index| {
            let step = index * LOG_EVERY;
            // A diverged run's last line carries the non-finite loss (written as null). A small
            // seed-dependent wiggle keeps seeds apart without changing the trend.
            let wiggle = 0.003 * (step as f64 + run.seed as f64 * 1.7).sin();
            let loss = if Some(step) == diverged_at {
                f64::NAN
            } else {
                LOSS_FLOOR + (-rate * step as f64 / STEPS as f64).exp() + wiggle
            };
            MetricsLine { step, loss, lr: run.lr, grad_norm: 1.0, step_time_s: 0.1, examples_per_s: 320.0 }
        });
        write_jsonl(&dir.join("metrics.jsonl"), metrics);

        if self.diagnostics {
            write_jsonl(&dir.join("diagnostics.jsonl"), diagnostics(run, last_step));
        }
        if self.eval {
            // The held-out loss decays like the training loss, LS `ls_loss_speed` times as fast, to a
            // floor LS ends a little below; the FD at the end only.
            let floor = if run.ls { HELDOUT_FLOOR - 0.01 } else { HELDOUT_FLOOR };
            let rate = HELDOUT_RATE * if run.ls { self.ls_loss_speed } else { 1.0 };
            let collapsed = self.collapsed.contains(&run.id);
            let evals = (1..=last_step / EVAL_EVERY).map(|index| {
                let step = index * EVAL_EVERY;
                let last = step == last_step;
                let wiggle = 0.0005 * (step as f64 + run.seed as f64 * 2.3).cos();
                let heldout = floor + 0.8 * (-rate * step as f64 / STEPS as f64).exp() + wiggle;
                let heldout = match () {
                    _ if Some(step) == diverged_at => f64::NAN,
                    _ if collapsed => COLLAPSED_LOSS + wiggle,
                    _ => heldout,
                };
                EvalLine {
                    step,
                    heldout_loss: heldout,
                    heldout_loss_bins: vec![heldout / 2.0, heldout, 1.5 * heldout],
                    zero_predictor_loss: 1.0,
                    fd: last.then_some(if run.ls { 12.0 } else { 15.0 }),
                    classifier_accuracy: last.then_some(0.8),
                    n_samples: if last { 64 } else { 0 },
                }
            });
            write_jsonl(&dir.join("eval.jsonl"), evals);
            if diverged_at.is_none() && !collapsed {
                let heldout = floor + 0.8 * (-rate).exp() + 0.0005 * (STEPS as f64 + run.seed as f64 * 2.3).cos();
                write_jsonl(&dir.join("skip_eval.jsonl"), skip_evals(run, heldout, if run.ls { 12.0 } else { 15.0 }));
            }
        }
        if self.samples {
            let samples_dir = dir.join("samples");
            std::fs::create_dir_all(&samples_dir).unwrap();
            for step in [last_step / 2, last_step] {
                write_sample_png(&samples_dir.join(format!("step_{step:07}.png")), step);
            }
        }
    }
}

/// The unedited line, two edits and every LSC cut and halved; a seed-dependent part far smaller
/// than each effect keeps the intervals narrow but not empty.
fn skip_evals(run: &FixtureRun, heldout: f64, fd: f64) -> Vec<SkipEvalLine> {
    let jitter = 1.0 + 0.001 * run.seed as f64;
    let line = |kind: EditKind, setting: String, lsc: Option<u32>, factor: Option<f64>, loss: f64, fd: Option<f64>| {
        SkipEvalLine {
            step: STEPS,
            kind,
            setting,
            lsc,
            factor,
            heldout_loss: loss,
            heldout_loss_bins: vec![loss / 2.0, loss, 1.5 * loss],
            fd,
        }
    };
    let mut lines = vec![
        line(EditKind::Unedited, "unedited".into(), None, None, heldout, Some(fd)),
        line(
            EditKind::SkipTuning,
            "rho 1 -> 0.8".into(),
            None,
            None,
            heldout + TUNING_LOSS_CHANGE * jitter,
            Some(fd * TUNING_FD_RATIO * jitter),
        ),
        line(
            EditKind::FreeU,
            "b 1.2/1.4 s 0.9/0.2 threshold 1".into(),
            None,
            None,
            heldout + FREEU_LOSS,
            Some(fd * 1.02 * jitter),
        ),
    ];
    for lsc in 1..=LSC_COUNT {
        let cut = CUT_INCREASE * 0.5f64.powi(lsc as i32 - 1) * jitter;
        lines.push(line(EditKind::Importance, format!("LSC {lsc} x 0"), Some(lsc), Some(0.0), heldout + cut, None));
        lines.push(line(
            EditKind::Importance,
            format!("LSC {lsc} x 0.5"),
            Some(lsc),
            Some(0.5),
            heldout + cut / 4.0,
            None,
        ));
    }
    lines
}

/// The diagnostics of one run, built so that every theorem check supports its bound: measured
/// values grow with the predicted ones.
fn diagnostics(run: &FixtureRun, last_step: u64) -> Vec<Record> {
    let coefficient = |lsc: u32| {
        if run.ls { GATE_A * GATE_KAPPA.powi(lsc as i32 - 1) } else { 1.0 }
    };
    let tail_square_sum = |lsc: u32| (lsc..=LSC_COUNT).map(|j| coefficient(j).powi(2)).sum::<f64>();
    let square_sum = tail_square_sum(1);
    let mut records = Vec::new();
    let mut record =
        |step: u64, quantity: Quantity, layer: Option<String>, lsc: Option<u32>, t_bin: Option<u32>, value: f64| {
            records.push(Record { step, quantity, layer, lsc, t_bin, value: Some(value) });
        };
    for step in (DIAGNOSTICS_EVERY..=last_step).step_by(DIAGNOSTICS_EVERY as usize) {
        let progress = step as f64 / STEPS as f64;
        let alternating = if (step / DIAGNOSTICS_EVERY).is_multiple_of(2) { 1.0 } else { -1.0 };
        for block in 0..LSC_COUNT {
            let lsc = LSC_COUNT - block;
            let layer = Some(format!("dec.{block}"));
            // Squared norm 10 * S_i * (1 + progress) +- 30% of S_i: the oscillation grows with S_i.
            let squared_norm = tail_square_sum(lsc) * (10.0 * (1.0 + progress) + 3.0 * alternating);
            record(step, Quantity::FeatureL2, layer.clone(), Some(lsc), None, squared_norm.sqrt());
            record(step, Quantity::Coef, layer.clone(), Some(lsc), None, coefficient(lsc));
            record(
                step,
                Quantity::GradNorm,
                layer.clone(),
                None,
                None,
                coefficient(lsc) * (1.0 + 0.5 * (2.0 * PI * progress).sin().abs()),
            );
            if run.ls {
                // Gates rise by 5% over training; seeds differ by far less.
                let gate = coefficient(lsc) * (1.0 - 0.05 * (1.0 - progress)) * (1.0 + 0.001 * run.seed as f64);
                record(step, Quantity::GateMean, layer, Some(lsc), None, gate);
            }
            record(step, Quantity::FeatureL2, Some(format!("enc.{block}")), Some(block + 1), None, 3.0);
            let jitter = 0.001 * run.seed as f64;
            record(
                step,
                Quantity::SkipLowFreqShare,
                Some(format!("dec.{block}")),
                Some(lsc),
                None,
                SKIP_SHARE + jitter,
            );
            record(
                step,
                Quantity::MainLowFreqShare,
                Some(format!("dec.{block}")),
                Some(lsc),
                None,
                MAIN_SHARE - jitter,
            );
        }
        record(step, Quantity::XtSqNorm, None, None, None, 10.0);
        record(step, Quantity::M0, None, None, None, M0);
        let amplification: f64 = (1..=LSC_COUNT).map(|lsc| coefficient(lsc) * M0.powi(lsc as i32)).sum();
        record(step, Quantity::Robustness, None, None, None, 2.0 * amplification * (1.0 + 0.01 * run.seed as f64));
        for bin in 0..T_BINS {
            let probe_loss = 0.2 + 0.3 * f64::from(bin);
            let xt_sq_norm = 4.0 + 3.0 * f64::from(bin);
            // enc^2 + dec^2 = 2 * probe_loss * ||x_t||^2 * sum c^2.
            let group_norm = (probe_loss * xt_sq_norm * square_sum).sqrt();
            record(step, Quantity::ProbeLoss, None, None, Some(bin), probe_loss);
            record(step, Quantity::XtSqNorm, None, None, Some(bin), xt_sq_norm);
            record(step, Quantity::GradNormBin, Some("enc".to_string()), None, Some(bin), group_norm);
            record(step, Quantity::GradNormBin, Some("dec".to_string()), None, Some(bin), group_norm);
        }
    }
    records
}

/// CS networks at initialisation over a kappa grid, each quantity twice its bound's factor times a
/// seed's scale: every check at initialisation observes the predicted ordering.
fn dose_response_lines(seeds: &[u64]) -> Vec<DoseResponseLine> {
    let mut lines = Vec::new();
    for &seed in seeds {
        for kappa in [0.5, 0.7, 0.85, 1.0] {
            let coefficients: Vec<f64> = (0..LSC_COUNT as i32).map(|i| f64::powi(kappa, i)).collect();
            let line = |quantity, lsc: Option<u32>, factor: f64| DoseResponseLine {
                model: "uvit-small".to_string(),
                seed,
                kappa,
                quantity,
                lsc,
                factor: Some(factor),
                value: Some(2.0 * factor * (1.0 + 0.1 * seed as f64)),
            };
            for lsc in 1..=LSC_COUNT {
                let factor = coefficients[lsc as usize - 1..].iter().map(|c| c * c).sum();
                lines.push(line(DoseQuantity::FeatureSqNorm, Some(lsc), factor));
            }
            let squares: f64 = coefficients.iter().map(|c| c * c).sum();
            lines.push(line(DoseQuantity::GradSqNormPerLoss, None, squares));
            lines.push(line(DoseQuantity::Sensitivity, None, coefficients.iter().sum()));
        }
    }
    lines
}

/// A 16x16 grey gradient, brighter for later steps.
fn write_sample_png(path: &Path, step: u64) {
    let (width, height) = (16u32, 16u32);
    let pixels: Vec<u8> =
        (0..width * height).map(|index| ((index * 255 / (width * height)) as u64 * step / STEPS) as u8).collect();
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&pixels).unwrap();
    writer.finish().unwrap();
}

fn write_jsonl<T: serde::Serialize>(path: &Path, lines: impl IntoIterator<Item = T>) {
    let text: String = lines.into_iter().map(|line| format!("{}\n", serde_json::to_string(&line).unwrap())).collect();
    std::fs::write(path, text).unwrap();
}
