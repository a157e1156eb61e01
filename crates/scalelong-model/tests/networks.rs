//! Behaviour of both networks under every skip-scaling strategy (tiny models, CPU).

mod common;

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use common::*;
use scalelong_model::diffusion::{NoiseSchedule, ScheduleConfig, noise_prediction_loss};
use scalelong_model::presets::{PRESETS, preset};
use scalelong_model::{Coefficient, DiffusionNet, ForwardTrace, ModelConfig, SkipScaling};

#[test]
fn shapes_for_batch_1_and_3_odd_timesteps_28_and_32() {
    for size in [28, 32] {
        for config in [tiny_uvit(size, 4), tiny_unet(size)] {
            for batch_size in [1, 3] {
                let device = device(1);
                let net = config.init(SkipScaling::Learnable { shared: true, reduction: 4 }, &device);
                let x = batch([batch_size, 1, size, size], &device);
                let t = times(&[7.0, 333.0, 999.0][..batch_size], &device);
                let mut trace = ForwardTrace::default();
                let y = net.forward(x, t, Some(&mut trace));
                assert_eq!(y.dims(), [batch_size, 1, size, size], "{config:?}");
                let n = config.num_skips();
                assert_eq!((trace.encoder.len(), trace.decoder.len(), trace.fusions.len()), (n, n, n));
                assert!(trace.middle.is_some());
                let lscs: Vec<usize> = trace.fusions.iter().map(|f| f.lsc).collect();
                assert_eq!(lscs, (1..=n).rev().collect::<Vec<_>>(), "decoder block k consumes LSC N - k");
            }
        }
    }
}

#[test]
fn constant_kappa_one_is_the_original_network() {
    for config in tiny_models(8) {
        let device = device(2);
        let original = config.init(SkipScaling::Original, &device);
        let cs_one = with_scaling(original.clone(), SkipScaling::Constant { kappa: 1.0 });
        let halved = with_scaling(original.clone(), SkipScaling::Constant { kappa: 0.5 });
        let x = batch([2, 1, 8, 8], &device);
        let t = times(&[10.0, 500.0], &device);
        let a = to_vec(original.forward(x.clone(), t.clone(), None));
        let b = to_vec(cs_one.forward(x.clone(), t.clone(), None));
        let c = to_vec(halved.forward(x, t, None));
        assert_eq!(a, b, "{config:?}");
        assert_ne!(a, c, "the test must be able to see a change of kappa");
    }
}

/// Adds noise to the weights that read the skip of decoder block `k` (the skip half of the U-ViT's
/// `skip_linear`; the skip channels of the UNet ResBlock's first conv and shortcut). `skip_share`
/// is the skip's share of the fused input's features, from a trace.
fn perturb_skip_reader(net: DiffusionNet, k: usize, skip_share: f64, device: &Device) -> DiffusionNet {
    fn bump<const D: usize>(
        param: Param<Tensor<D>>,
        ranges: [std::ops::Range<usize>; D],
        device: &Device,
    ) -> Param<Tensor<D>> {
        param.map(|w| {
            let shape: [usize; D] = std::array::from_fn(|d| ranges[d].len());
            let noise = Tensor::<D>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), device);
            w.slice_assign(ranges, noise)
        })
    }
    match net {
        DiffusionNet::UViT(mut n) => {
            let fuse = n.out_blocks[k].skip_linear.as_mut().unwrap();
            let [two_d, d] = fuse.weight.dims(); // burn stores [in, out]: rows d..2d read the skip
            fuse.weight = bump(fuse.weight.clone(), [two_d / 2..two_d, 0..d], device);
            DiffusionNet::UViT(n)
        }
        DiffusionNet::UNet(mut n) => {
            let res = &mut n.decoder[k].res;
            let [out, c_in, kh, kw] = res.conv1.weight.dims();
            let skip_channels = (c_in as f64 * skip_share).round() as usize;
            res.conv1.weight =
                bump(res.conv1.weight.clone(), [0..out, c_in - skip_channels..c_in, 0..kh, 0..kw], device);
            if let Some(short) = res.shortcut.as_mut() {
                short.weight = bump(short.weight.clone(), [0..out, c_in - skip_channels..c_in, 0..1, 0..1], device);
            }
            DiffusionNet::UNet(n)
        }
    }
}

#[test]
fn a_zero_coefficient_cuts_that_skip_out_of_the_output() {
    for config in tiny_models(8) {
        let device = device(3);
        // kappa = 0 is not a valid config, but gives coefficients 1, 0, 0, ...: LSC 1 stays on.
        let net = config.init(SkipScaling::Constant { kappa: 0.0 }, &device);
        let n = net.num_skips();
        let x = batch([2, 1, 8, 8], &device);
        let t = times(&[10.0, 500.0], &device);
        let mut trace = ForwardTrace::default();
        let base = to_vec(net.forward(x.clone(), t.clone(), Some(&mut trace)));
        let share = |k: usize| {
            let f = &trace.fusions[k];
            let (skip, main) = (f.skip.dims()[1] as f64, f.main.dims()[1] as f64);
            skip / (skip + main)
        };
        // Decoder block 0 consumes the innermost LSC (coefficient 0); block N-1 the outermost (1).
        let cut = perturb_skip_reader(net.clone(), 0, share(0), &device);
        assert_eq!(base, to_vec(cut.forward(x.clone(), t.clone(), None)), "{config:?}: skip N must not matter");
        let kept = perturb_skip_reader(net, n - 1, share(n - 1), &device);
        assert_ne!(base, to_vec(kept.forward(x, t, None)), "{config:?}: skip 1 must matter");
    }
}

#[test]
fn learnable_gates_lie_in_the_unit_interval_start_near_half_and_get_gradients() {
    for config in tiny_models(8) {
        for shared in [true, false] {
            let device = device(4);
            let scaling = SkipScaling::Learnable { shared, reduction: 4 };
            let net = config.init(scaling, &device);
            let n = net.num_skips();
            let x = batch([3, 1, 8, 8], &device);
            let mut trace = ForwardTrace::default();
            let y = net.forward(x, times(&[1.0, 2.0, 3.0], &device), Some(&mut trace));
            for fusion in &trace.fusions {
                let Coefficient::Gate(gate) = &fusion.coefficient else { panic!("LS must gate") };
                let [b, g] = gate.dims();
                assert_eq!(b, 3);
                let per_gate = fusion.skip.dims()[1] / g; // features one gate value scales
                match &config {
                    // One gate per token, broadcast over the width.
                    ModelConfig::Uvit(c) => {
                        assert_eq!((g, per_gate), (1 + (c.img_size / c.patch_size).pow(2), c.embed_dim))
                    }
                    // One gate per channel, broadcast over the 8x8 or 4x4 positions.
                    ModelConfig::Unet(_) => assert!(per_gate == 64 || per_gate == 16, "{per_gate}"),
                }
                let values = to_vec(gate.clone());
                assert!(values.iter().all(|&v| v > 0.0 && v < 1.0));
                let mean = values.iter().sum::<f32>() / values.len() as f32;
                assert!((mean - 0.5).abs() < 0.15, "gates start near 0.5, got mean {mean}");
            }
            let grads = y.square().mean().backward();
            let gates: Vec<&scalelong_model::gate::SeGate> = match &net {
                DiffusionNet::UViT(u) => {
                    assert_eq!(u.se.len(), if shared { 1 } else { n }, "shared LS has one gate module");
                    u.se.iter().collect()
                }
                DiffusionNet::UNet(u) => u.decoder.iter().map(|d| d.gate.as_ref().unwrap()).collect(),
            };
            // A tiny gate's hidden ReLUs can all be off for a batch, so layer1 may see no gradient;
            // the output bias always does, and layer1 must somewhere.
            let nonzero =
                |t: Option<Tensor<1>>| to_vec(t.expect("gate parameters receive a gradient")).iter().any(|v| *v != 0.0);
            for gate in &gates {
                assert!(nonzero(gate.layer2.bias.as_ref().unwrap().val().grad(&grads)));
            }
            assert!(gates.iter().any(|g| nonzero(g.layer1.weight.val().grad(&grads).map(|w| w.reshape([-1])))));
        }
    }
}

fn param_tensors(net: &DiffusionNet) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.0 += 1;
        }
    }
    let mut count = Count(0);
    net.visit(&mut count);
    count.0
}

#[test]
fn one_adamw_step_lowers_the_loss_for_every_strategy_on_both_models() {
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    for config in tiny_models(8) {
        for scaling in STRATEGIES {
            let device = device(5);
            let mut net = config.init(scaling, &device);
            let x0 = batch([4, 1, 8, 8], &device).clamp(-1.0, 1.0);
            let noised = schedule.q_sample(x0, batch([4, 1, 8, 8], &device), &[10, 200, 500, 900]);
            let loss = |net: &DiffusionNet| {
                noise_prediction_loss(
                    net.forward(noised.x_t.clone(), noised.model_time.clone(), None),
                    noised.noise.clone(),
                )
            };
            let before = loss(&net);
            let grads = GradientsParams::from_grads(before.backward(), &net);
            assert_eq!(grads.len(), param_tensors(&net), "{config:?} {scaling}: every parameter is trainable");
            let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
            net = optim.step(1e-3, net, grads);
            let (before, after) = (to_vec(before)[0], to_vec(loss(&net))[0]);
            assert!(after < before, "{config:?} {scaling}: {before} -> {after}");
        }
    }
}

/// Mean over decoder blocks of the per-batch L2 norm of their outputs, for one strategy on the
/// weights of `base`.
fn mean_decoder_norm(base: &DiffusionNet, scaling: SkipScaling, x: &Tensor<4>, t: &Tensor<1>) -> f32 {
    let mut trace = ForwardTrace::default();
    with_scaling(base.clone(), scaling).forward(x.clone(), t.clone(), Some(&mut trace));
    let norms: Vec<f32> = trace.decoder.iter().map(|h| to_vec(h.clone().square().sum().sqrt())[0]).collect();
    norms.iter().sum::<f32>() / norms.len() as f32
}

#[test]
fn at_init_decoder_feature_norms_order_as_the_bound_predicts() {
    // Thm 3.1: the hidden feature's norm grows with sum_j kappa_j^2, so 1 > 1/sqrt2 > CS(0.5)
    // whenever CS's sum is the smaller (the 4-skip U-ViT: 1.33 against 2). Checked on every
    // initialisation, not on a mean that one outlier could carry.
    // The conv UNet group-normalises every fused input, which cancels a uniform scale of the
    // skip-only groups (only the 1x1 shortcut sees the coefficient): there 1 beats both scaled
    // strategies on each of 64 initialisations measured, but 1/sqrt2 against CS(0.5) came out
    // either way (39 of 64), so only the first is asserted.
    let strategies = [SkipScaling::Original, SkipScaling::InvSqrt2, SkipScaling::Constant { kappa: 0.5 }];
    for (config, full_order) in [(tiny_uvit(8, 8), true), (tiny_unet(8), false)] {
        for seed in 0..8 {
            let device = device(60 + seed);
            let base = config.init(SkipScaling::Original, &device);
            let x = batch([4, 1, 8, 8], &device);
            let t = times(&[50.0, 300.0, 600.0, 900.0], &device);
            let [one, inv, cs] = strategies.map(|scaling| mean_decoder_norm(&base, scaling, &x, &t));
            let ordered = one > inv && one > cs && (!full_order || inv > cs);
            assert!(ordered, "{config:?} seed {seed}: 1 {one}, 1/sqrt2 {inv}, CS(0.5) {cs}");
        }
    }
}

/// The U-ViT's parameter count from the reference architecture, written out independently.
fn uvit_reference_param_count(c: &scalelong_model::uvit::UViTConfig, gates: usize) -> usize {
    let d = c.embed_dim;
    let tokens = 1 + (c.img_size / c.patch_size).pow(2);
    let patch = c.patch_size * c.patch_size * c.in_chans;
    let hidden = (d as f64 * c.mlp_ratio) as usize;
    let block =
        4 * d + 3 * d * d + if c.qkv_bias { 3 * d } else { 0 } + d * d + d + d * hidden + hidden + hidden * d + d;
    let n = c.depth / 2;
    let se_hidden = (tokens / 16).max(1);
    patch * d + d // patch_embed.proj
        + tokens * d // pos_embed
        + (2 * n + 1) * block + n * (2 * d * d + d) // blocks, skip_linear
        + 2 * d + d * patch + patch // norm, decoder_pred
        + if c.conv { c.in_chans * c.in_chans * 9 + c.in_chans } else { 0 }
        + gates * (tokens * se_hidden + se_hidden + se_hidden * tokens + tokens)
}

/// Counts printed by `scalelong params`; the PyTorch reference must print the same.
const PRESET_PARAMS_ORIGINAL: &[(&str, usize)] = &[
    ("unet-small", 280177),
    ("uvit-small", 703258),
    ("uvit-deep", 918938),
    ("uvit-s2", 44247054),
    ("uvit-s2-deep", 57900046),
];

#[test]
fn preset_parameter_counts() {
    let device = Device::flex();
    for &(name, expected) in PRESET_PARAMS_ORIGINAL {
        let config = preset(name).unwrap();
        let count = config.init(SkipScaling::Original, &device).num_params();
        println!("{name}: {count}");
        if let ModelConfig::Uvit(c) = &config {
            assert_eq!(count, uvit_reference_param_count(c, 0), "{name}");
            let ls = config.init(SkipScaling::Learnable { shared: false, reduction: 16 }, &device).num_params();
            assert_eq!(ls, uvit_reference_param_count(c, c.depth / 2), "{name} with non-shared LS");
        }
        assert_eq!(count, expected, "{name}: update the table if the preset changed on purpose");
    }
    assert_eq!(PRESETS.len(), PRESET_PARAMS_ORIGINAL.len());
}
