//! An exponential moving average of the weights, kept on the inference backend.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use scalelong_model::DiffusionNet;

pub struct Ema {
    pub model: DiffusionNet,
    pub decay: f64,
}

impl Ema {
    pub fn new(model: &DiffusionNet, decay: f64) -> Self {
        Self { model: model.valid(), decay }
    }

    /// `ema = d ema + (1 - d) w`, with the usual warm-up `d = min(decay, (1 + step) / (10 + step))`
    /// so that short CPU runs do not sample from weights dominated by the initialisation.
    pub fn update(&mut self, model: &DiffusionNet, step: u64) {
        let decay = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        let mut weights = FlatWeights(Vec::new());
        model.visit(&mut weights);
        let mut blend = Blend { sources: weights.0.into_iter(), decay };
        self.model = self.model.clone().map(&mut blend);
    }
}

/// Every float parameter, flattened, in visiting order (the order `map` also follows).
struct FlatWeights(Vec<Tensor<1>>);

impl ModuleVisitor for FlatWeights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().inner().reshape([-1]));
    }
}

struct Blend<I> {
    sources: I,
    decay: f64,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for Blend<I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let source = self.sources.next().expect("EMA and model have the same parameters");
        let decay = self.decay;
        param.map(|ema| {
            let shape = ema.shape();
            ema.mul_scalar(decay) + source.reshape(shape).mul_scalar(1.0 - decay)
        })
    }
}
