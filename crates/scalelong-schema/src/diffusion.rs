//! The diffusion process a run config names: the noise schedule and the sampler. The tables
//! and the sampling loop that use them are `scalelong-model`'s (`NoiseSchedule`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// DDPM: betas linear in `[beta_start, beta_end]`; the network sees `k`.
    Linear { steps: usize, beta_start: f64, beta_end: f64 },
    /// Improved DDPM: `alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2)`, betas clipped at 0.999;
    /// the network sees `k`.
    Cosine { steps: usize, s: f64 },
    /// The reference code's VP-SDE (`beta(t) = beta_min + t (beta_max - beta_min)`, t in (0, 1]),
    /// discretised at `t_k = (k + 1) / T`; the network sees `999 t_k` as in the reference.
    VpSde { steps: usize, beta_min: f64, beta_max: f64 },
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self::Linear { steps: 1000, beta_start: 1e-4, beta_end: 0.02 }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok = match *self {
            Self::Linear { steps, beta_start, beta_end } => {
                steps >= 2 && 0.0 < beta_start && beta_start <= beta_end && beta_end < 1.0
            }
            Self::Cosine { steps, s } => steps >= 2 && s >= 0.0,
            Self::VpSde { steps, beta_min, beta_max } => steps >= 2 && 0.0 < beta_min && beta_min <= beta_max,
        };
        if ok { Ok(()) } else { Err(format!("diffusion.schedule: invalid parameters {self:?}")) }
    }

    /// The number of discrete steps `T`.
    pub fn steps(&self) -> usize {
        match *self {
            Self::Linear { steps, .. } | Self::Cosine { steps, .. } | Self::VpSde { steps, .. } => steps,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SamplerConfig {
    Ddim { steps: usize },
    Ddpm { steps: usize },
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::Ddim { steps: 50 }
    }
}

impl SamplerConfig {
    /// 0 for DDIM (deterministic), 1 for DDPM (ancestral).
    pub fn eta(self) -> f64 {
        match self {
            Self::Ddim { .. } => 0.0,
            Self::Ddpm { .. } => 1.0,
        }
    }
    /// The network evaluations a sample takes.
    pub fn steps(self) -> usize {
        match self {
            Self::Ddim { steps } | Self::Ddpm { steps } => steps,
        }
    }
}
