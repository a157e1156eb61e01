//! The optimiser of a run, every setting from `config.optimizer`: AdamW, the learning-rate
//! schedule (linear warm-up, then constant or cosine), and the global gradient norm that clipping
//! and the logs use.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use scalelong_model::DiffusionNet;
use scalelong_schema::{LrSchedule, RunConfig};

/// AdamW with the config's betas, epsilon and weight decay.
pub fn adamw(config: &RunConfig) -> ModuleOptimizer {
    let o = &config.optimizer;
    AdamWConfig::new()
        .with_beta_1(o.beta1 as f32)
        .with_beta_2(o.beta2 as f32)
        .with_epsilon(o.eps as f32)
        .with_weight_decay(o.weight_decay as f32)
        .init()
}

/// Linear warm-up from 0 to `lr` over `warmup_steps`, then `optimizer.schedule`.
pub fn learning_rate(config: &RunConfig, step: u64) -> f64 {
    let lr = config.optimizer.lr;
    if step < config.warmup_steps {
        return lr * (step as f64 / config.warmup_steps as f64);
    }
    match config.optimizer.schedule {
        LrSchedule::Constant => lr,
        LrSchedule::Cosine { final_fraction } => {
            let span = config.steps.saturating_sub(config.warmup_steps).max(1) as f64;
            let progress = ((step - config.warmup_steps) as f64 / span).min(1.0);
            let floor = lr * final_fraction;
            floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// Squared L2 norm of every gradient, summed on the device and read once.
pub fn global_grad_norm(model: &DiffusionNet, grads: &GradientsParams) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        parts: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.parts.push(g.square().sum());
            }
        }
    }
    let mut visitor = SumSquares { grads, parts: Vec::new() };
    model.visit(&mut visitor);
    if visitor.parts.is_empty() {
        return 0.0;
    }
    (Tensor::cat(visitor.parts, 0).sum().into_scalar::<f32>() as f64).sqrt()
}

/// Every gradient times `factor` (clipping to `grad_clip`).
pub(crate) fn scale_grads(model: &DiffusionNet, grads: GradientsParams, factor: f64) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut visitor = Scale { grads, factor };
    model.visit(&mut visitor);
    visitor.grads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(schedule: LrSchedule) -> RunConfig {
        let mut config = RunConfig { steps: 110, warmup_steps: 10, ..RunConfig::default() };
        config.optimizer.lr = 1e-3;
        config.optimizer.schedule = schedule;
        config
    }

    #[test]
    fn warm_up_then_constant_or_cosine_down_to_the_final_fraction() {
        let constant = schedule(LrSchedule::Constant);
        assert_eq!(learning_rate(&constant, 5), 1e-3 * 0.5);
        assert_eq!(learning_rate(&constant, 10), 1e-3);
        assert_eq!(learning_rate(&constant, 110), 1e-3);
        let cosine = schedule(LrSchedule::Cosine { final_fraction: 0.1 });
        assert_eq!(learning_rate(&cosine, 5), 1e-3 * 0.5, "the warm-up is shared");
        assert_eq!(learning_rate(&cosine, 10), 1e-3);
        // Halfway through the decay the cosine term is 0: the mean of the start and the floor.
        assert!((learning_rate(&cosine, 60) - 0.55e-3).abs() < 1e-15);
        assert!((learning_rate(&cosine, 110) - 1e-4).abs() < 1e-15);
        let rates: Vec<f64> = (10..=110).map(|step| learning_rate(&cosine, step)).collect();
        assert!(rates.windows(2).all(|pair| pair[1] <= pair[0]), "monotone after the warm-up");
    }
}
