//! The quantities ScaleLong's bounds speak of, measured once on the recorder's fixed probe: what
//! `scalelong dose-response` compares across networks that differ only in their skip coefficients
//! (docs/method.md §4).

use burn::optim::GradientsParams;
use burn::prelude::*;
use scalelong_model::{DiffusionNet, ForwardTrace};

use crate::recorder::{Recorder, block_square_sums, group_sums, read_scalars, row_norms};

/// One network's values on the whole probe batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundMeasurements {
    /// Thm 3.1: the mean over the probe of `||h_i||^2`, `h_i` the output of the decoder block that
    /// consumes LSC i; `[i - 1]` holds LSC i (1 = outermost).
    pub feature_sq_norms: Vec<f64>,
    /// The noise-prediction loss on the probe (mean over samples and pixels).
    pub probe_loss: f64,
    /// Thm 3.3: the squared norm of the loss's gradient with respect to the encoder blocks' and the
    /// decoder blocks' weights (fusions included), one backward pass over the whole probe.
    pub grad_sq_norm: f64,
    /// Thm 3.4: the mean over the probe of `||eps(x_t + delta) - eps(x_t)|| / ||delta||`, the
    /// recorder's `robustness`.
    pub sensitivity: f64,
}

impl Recorder {
    /// The bound quantities of `model` on the probe; `None` when recording is off (no probe).
    pub fn bound_measurements(&self, model: &DiffusionNet) -> Option<BoundMeasurements> {
        let probe = self.probe.as_ref()?;
        let net = model.valid();
        let batch = probe.bins.len() as i64;
        let flat = |t: Tensor<4>| t.reshape([batch, -1]);
        let mut trace = ForwardTrace::default();
        let out = net.forward(probe.x_t.clone(), probe.model_time.clone(), Some(&mut trace));
        let noisy_out = net.forward(probe.x_t.clone() + probe.delta.clone(), probe.model_time.clone(), None);
        let sensitivity = (row_norms(flat(noisy_out - out)) / row_norms(flat(probe.delta.clone()))).mean();

        // Decoder block k consumes LSC n - k: LSC i's block is n - i.
        let n = trace.decoder.len();
        let feature_parts = (1..=n).map(|lsc| row_norms(trace.decoder[n - lsc].clone()).square().mean());

        let x = probe.x_t.clone().autodiff();
        let t = probe.model_time.clone().autodiff();
        let loss = (model.forward(x, t, None) - probe.noise.clone().autodiff()).square().mean();
        let probe_loss = loss.clone().inner();
        let grads = GradientsParams::from_grads(loss.backward(), model);
        let (enc, dec) = block_square_sums(&group_sums(model, &grads));

        let values = read_scalars(std::iter::once(sensitivity).chain([probe_loss]).chain(feature_parts).collect());
        Some(BoundMeasurements {
            feature_sq_norms: values[2..].to_vec(),
            probe_loss: values[1],
            grad_sq_norm: enc + dec,
            sensitivity: values[0],
        })
    }
}
