//! `scalelong dose-response` (docs/method.md §4): its plan file (`experiments/dose-response.toml`)
//! and the `dose_response.jsonl` it writes, one [`DoseResponseLine`] per network and quantity (read
//! with [`crate::read_jsonl`]; the report reads it from a sweep folder).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a bound speaks of, measured on the fixed diagnostics probe of one network at
/// initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoseQuantity {
    /// Thm 3.1: mean `||h_i||^2` of the decoder block consuming LSC i (one line per LSC).
    FeatureSqNorm,
    /// Thm 3.3: squared gradient norm of the encoder and decoder blocks' weights on the probe.
    GradSqNorm,
    /// Thm 3.3 without the residual's scale: `grad_sq_norm / probe_loss` (the bound is
    /// `loss * ||x_t||^2 * sum_j c_j^2 + c3`; an MSE gradient grows with the loss in any network).
    GradSqNormPerLoss,
    /// The noise-prediction loss on the probe: context for the gradient, no bound of its own.
    ProbeLoss,
    /// Thm 3.4: mean `||eps(x_t + delta) - eps(x_t)|| / ||delta||` over the probe.
    Sensitivity,
}

impl DoseQuantity {
    /// The name a line carries (`feature_sq_norm`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DoseQuantity::FeatureSqNorm => "feature_sq_norm",
            DoseQuantity::GradSqNorm => "grad_sq_norm",
            DoseQuantity::GradSqNormPerLoss => "grad_sq_norm_per_loss",
            DoseQuantity::ProbeLoss => "probe_loss",
            DoseQuantity::Sensitivity => "sensitivity",
        }
    }
}

/// One line of `dose_response.jsonl`: one quantity of the CS(kappa) network of one seed at
/// initialisation. Networks of one seed share every weight (only the coefficients differ).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoseResponseLine {
    /// The network's preset and overrides (`RunConfig`'s `model.describe()`), as a sweep's runs name it.
    pub model: String,
    pub seed: u64,
    /// CS's kappa; 1 is strategy `1`.
    pub kappa: f64,
    pub quantity: DoseQuantity,
    /// The LSC of a per-LSC quantity (1 = outermost), else null.
    pub lsc: Option<u32>,
    /// The bound's kappa-dependent factor for this quantity (docs/method.md §4); null where the
    /// quantity has no bound (`probe_loss`).
    pub factor: Option<f64>,
    /// Null when the network gave a non-finite value.
    pub value: Option<f64>,
}

/// `experiments/dose-response.toml`: which networks `scalelong dose-response` builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoseResponsePlan {
    /// The run config the networks, data and probe come from, relative to the plan file.
    pub base: PathBuf,
    /// CS's kappa for each network of a seed, each in `(0, 1]` (1 is strategy `1`).
    pub kappas: Vec<f64>,
    /// Seeds `0..seeds`, each one block of networks sharing their weights.
    pub seeds: u64,
    /// Overrides of the run config (dotted keys, as `--set`).
    #[serde(default)]
    pub set: toml::Table,
}

impl DoseResponsePlan {
    /// Reads and checks a plan file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let plan: Self = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        plan.validate().with_context(|| path.display().to_string())?;
        Ok(plan)
    }

    pub fn validate(&self) -> Result<()> {
        // Within-seed rank correlations need 3 networks a seed; the t intervals over seeds need 2.
        if self.kappas.len() < 3 {
            bail!("kappas: {} given; a seed's ordering needs at least 3", self.kappas.len());
        }
        if let Some(kappa) = self.kappas.iter().find(|k| !(**k > 0.0 && **k <= 1.0)) {
            bail!("kappas: {kappa} is not in (0, 1]");
        }
        let mut sorted = self.kappas.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            bail!("kappas: a kappa is listed twice");
        }
        if self.seeds < 2 {
            bail!("seeds: {} given; an interval over seeds needs at least 2", self.seeds);
        }
        Ok(())
    }

    /// The base run config's path.
    pub fn base_path(&self, plan_path: &Path) -> PathBuf {
        plan_path.parent().unwrap_or(Path::new(".")).join(&self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_with_its_documented_keys() {
        let line = r#"{"model": "uvit-deep", "seed": 3, "kappa": 0.7, "quantity": "feature_sq_norm", "lsc": 2,
            "factor": 1.5, "value": 9.0}"#;
        let parsed: DoseResponseLine = serde_json::from_str(line).unwrap();
        assert_eq!(parsed.quantity, DoseQuantity::FeatureSqNorm);
        assert_eq!(
            serde_json::to_value(DoseQuantity::GradSqNormPerLoss).unwrap(),
            DoseQuantity::GradSqNormPerLoss.name()
        );
    }

    #[test]
    fn a_plan_names_its_bad_field() {
        let plan = |text: &str| {
            toml::from_str::<DoseResponsePlan>(text)
                .map_err(|e| e.to_string())
                .and_then(|p| p.validate().map_err(|e| e.to_string()))
        };
        plan("base = \"cpu.toml\"\nkappas = [0.5, 0.7, 1.0]\nseeds = 4").unwrap();
        assert!(plan("base = \"cpu.toml\"\nkappas = [0.5, 1.2, 1.0]\nseeds = 4").unwrap_err().starts_with("kappas:"));
        assert!(plan("base = \"cpu.toml\"\nkappas = [0.5, 1.0]\nseeds = 4").unwrap_err().starts_with("kappas:"));
        assert!(plan("base = \"cpu.toml\"\nkappas = [0.5, 0.7, 1.0]\nseeds = 1").unwrap_err().starts_with("seeds:"));
        assert!(plan("base = \"cpu.toml\"\nkappa = [0.5]\nseeds = 4").unwrap_err().contains("kappa"));
    }
}
