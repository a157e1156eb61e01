//! Noise schedules as tables over `T` discrete steps: `alpha_bar[k]` (the signal fraction of
//! `x_k`) and the time value the network is shown at step `k`.

pub use scalelong_schema::diffusion::ScheduleConfig;

#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub alpha_bar: Vec<f64>,
    pub model_time: Vec<f64>,
}

impl NoiseSchedule {
    /// The tables of `config`.
    pub fn new(config: &ScheduleConfig) -> Self {
        match *config {
            ScheduleConfig::Linear { steps, beta_start, beta_end } => {
                let betas = (0..steps).map(|k| beta_start + (beta_end - beta_start) * k as f64 / (steps - 1) as f64);
                Self::from_betas(betas)
            }
            ScheduleConfig::Cosine { steps, s } => {
                let f =
                    |k: usize| ((k as f64 / steps as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
                let betas = (0..steps).map(|k| (1.0 - f(k + 1) / f(k)).min(0.999));
                Self::from_betas(betas)
            }
            ScheduleConfig::VpSde { steps, beta_min, beta_max } => {
                let t = |k: usize| (k + 1) as f64 / steps as f64;
                Self {
                    alpha_bar: (0..steps)
                        .map(|k| (-(beta_min * t(k) + 0.5 * (beta_max - beta_min) * t(k).powi(2))).exp())
                        .collect(),
                    model_time: (0..steps).map(|k| 999.0 * t(k)).collect(),
                }
            }
        }
    }

    fn from_betas(betas: impl Iterator<Item = f64>) -> Self {
        let alpha_bar: Vec<f64> = betas
            .scan(1.0, |prod, beta| {
                *prod *= 1.0 - beta;
                Some(*prod)
            })
            .collect();
        let model_time = (0..alpha_bar.len()).map(|k| k as f64).collect();
        Self { alpha_bar, model_time }
    }

    pub fn steps(&self) -> usize {
        self.alpha_bar.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_bar_is_monotone_decreasing_in_the_open_unit_interval() {
        for config in [
            ScheduleConfig::default(),
            ScheduleConfig::Cosine { steps: 1000, s: 0.008 },
            ScheduleConfig::VpSde { steps: 1000, beta_min: 0.1, beta_max: 20.0 },
        ] {
            let s = NoiseSchedule::new(&config);
            assert_eq!(s.steps(), 1000);
            assert!(s.alpha_bar.iter().all(|&a| a > 0.0 && a < 1.0), "{config:?}");
            assert!(s.alpha_bar.windows(2).all(|w| w[1] < w[0]), "{config:?}");
            assert!(s.model_time.windows(2).all(|w| w[1] > w[0]));
        }
        let vp = NoiseSchedule::new(&ScheduleConfig::VpSde { steps: 1000, beta_min: 0.1, beta_max: 20.0 });
        assert!((vp.model_time[999] - 999.0).abs() < 1e-9);
    }
}
