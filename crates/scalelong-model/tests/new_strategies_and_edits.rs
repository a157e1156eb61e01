//! Sampling-time skip edits and the strategies beyond ScaleLong's four, checked against answers
//! known without them: neutral edits change no bit, a factor on the skips is the fixed strategy
//! with that coefficient, a learned scalar at its start is CS, a zeroed LSC stops mattering.

mod common;

use burn::module::Param;
use burn::prelude::*;
use common::*;
use scalelong_model::{Coefficient, DiffusionNet, ForwardTrace, FreeU, SkipEdit, SkipScaling};

fn output(net: &DiffusionNet, x: &Tensor<4>, t: &Tensor<1>) -> Vec<f32> {
    to_vec(net.forward(x.clone(), t.clone(), None))
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn neutral_edits_change_no_bit_and_freeu_changes_the_output() {
    for config in tiny_models(8) {
        let device = device(11);
        let net = config.init(SkipScaling::Constant { kappa: 0.7 }, &device);
        let n = net.num_skips();
        let (x, t) = (batch([2, 1, 8, 8], &device), times(&[10.0, 600.0], &device));
        let plain = output(&net, &x, &t);
        let neutral = SkipEdit { rho: vec![1.0; n], freeu: Some(FreeU { b: [1.0, 1.0], s: [1.0, 1.0], threshold: 1 }) };
        assert_eq!(plain, output(&net.clone().with_edit(neutral), &x, &t), "{config:?}");
        let freeu = net.clone().with_edit(SkipEdit { rho: Vec::new(), freeu: Some(FreeU::default()) });
        assert!(max_difference(&plain, &output(&freeu, &x, &t)) > 1e-4, "{config:?}: FreeU must change something");
    }
}

#[test]
fn factors_on_the_skips_of_strategy_1_are_the_fixed_strategies() {
    for config in tiny_models(8) {
        let device = device(12);
        let original = config.init(SkipScaling::Original, &device);
        let n = original.num_skips();
        let (x, t) = (batch([2, 1, 8, 8], &device), times(&[3.0, 900.0], &device));
        let inv_sqrt2 = SkipEdit::ramp(n, std::f64::consts::FRAC_1_SQRT_2, std::f64::consts::FRAC_1_SQRT_2);
        let want = output(&with_scaling(original.clone(), SkipScaling::InvSqrt2), &x, &t);
        assert_eq!(want, output(&original.clone().with_edit(inv_sqrt2), &x, &t), "{config:?}");
        let kappa: f64 = 0.6;
        let cs = SkipEdit { rho: (0..n).map(|i| kappa.powi(i as i32)).collect(), freeu: None };
        let want = output(&with_scaling(original.clone(), SkipScaling::Constant { kappa }), &x, &t);
        assert!(max_difference(&want, &output(&original.with_edit(cs), &x, &t)) < 1e-6, "{config:?}");
    }
}

#[test]
fn a_learned_scalar_starts_as_cs_records_its_value_and_learns() {
    for config in tiny_models(8) {
        let device = device(13);
        let kappa = 0.5;
        let net = config.init(SkipScaling::LearnedScalar { kappa }, &device);
        let (x, t) = (batch([2, 1, 8, 8], &device), times(&[50.0, 400.0], &device));
        let mut trace = ForwardTrace::default();
        let y = net.forward(x.clone(), t.clone(), Some(&mut trace));
        let cs = with_scaling(net.clone(), SkipScaling::Constant { kappa });
        assert!(max_difference(&to_vec(y.clone()), &output(&cs, &x, &t)) < 1e-6, "{config:?}");
        for fusion in &trace.fusions {
            let Coefficient::Learned(value) = &fusion.coefficient else { panic!("a learned scalar is recorded") };
            assert_eq!(to_vec(value.clone()), vec![kappa.powi(fusion.lsc as i32 - 1) as f32]);
        }
        let grads = y.square().mean().backward();
        let scalars: Vec<&Param<Tensor<1>>> = match &net {
            DiffusionNet::UViT(u) => u.skip_scalars.iter().collect(),
            DiffusionNet::UNet(u) => u.decoder.iter().map(|d| d.scalar.as_ref().unwrap()).collect(),
        };
        assert_eq!(scalars.len(), net.num_skips());
        for scalar in scalars {
            let grad = to_vec(scalar.val().grad(&grads).expect("every scalar gets a gradient"));
            assert!(grad[0] != 0.0 && grad[0].is_finite(), "{config:?}: {grad:?}");
        }
    }
}

#[test]
fn zeroing_one_lsc_at_sampling_time_leaves_the_others_in_play() {
    for config in tiny_models(8) {
        let device = device(14);
        let net = config.init(SkipScaling::Original, &device);
        let n = net.num_skips();
        let (x, t) = (batch([2, 1, 8, 8], &device), times(&[20.0, 700.0], &device));
        let plain = output(&net, &x, &t);
        for lsc in 1..=n {
            let zeroed = output(&net.clone().with_edit(SkipEdit::only(n, lsc, 0.0)), &x, &t);
            assert!(max_difference(&plain, &zeroed) > 1e-5, "{config:?}: LSC {lsc} must matter");
            // Zeroing it is scaling it by a coefficient 0 among 1s: the same as editing every LSC.
            let rho: Vec<f64> = (1..=n).map(|i| if i == lsc { 0.0 } else { 1.0 }).collect();
            assert_eq!(zeroed, output(&net.clone().with_edit(SkipEdit { rho, freeu: None }), &x, &t));
        }
    }
}

/// MP-cat's weights: unit-RMS inputs keep unit RMS (tested in the crate), `t = 1/2` with equal
/// widths weights both parts 1, and a larger `t` tilts the fusion toward the skip.
#[test]
fn mp_cat_at_balance_one_half_and_equal_widths_is_the_plain_concatenation() {
    let half = SkipScaling::MpCat { t: 0.5 }.mp_cat_weights(64, 64).unwrap();
    assert!((half.0 - 1.0).abs() < 1e-12 && (half.1 - 1.0).abs() < 1e-12, "{half:?}");
    let tilted = SkipScaling::MpCat { t: 0.7 }.mp_cat_weights(64, 64).unwrap();
    assert!(tilted.1 > tilted.0);
    for config in tiny_models(8) {
        let device = device(15);
        let base = config.init(SkipScaling::Original, &device);
        let (x, t) = (batch([2, 1, 8, 8], &device), times(&[5.0, 800.0], &device));
        let mp = with_scaling(base.clone(), SkipScaling::MpCat { t: 0.5 });
        let plain = output(&base, &x, &t);
        match config {
            // The U-ViT concatenates equal widths: t = 1/2 is the plain network.
            scalelong_model::ModelConfig::Uvit(_) => {
                assert!(max_difference(&plain, &output(&mp, &x, &t)) < 1e-5, "{config:?}")
            }
            // The UNet's main path and skip differ in width at some blocks: not the plain network.
            scalelong_model::ModelConfig::Unet(_) => assert!(max_difference(&plain, &output(&mp, &x, &t)) > 1e-5),
        }
    }
}

#[test]
fn the_reference_has_no_mp_cat_or_learned_scalar_so_export_refuses_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("scalelong-new-strategies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for scaling in [SkipScaling::MpCat { t: 0.5 }, SkipScaling::LearnedScalar { kappa: 0.5 }] {
        let device = device(16);
        let net = tiny_uvit(8, 4).init(scaling, &device);
        let path = dir.join("ema.safetensors");
        let error = scalelong_model::pytorch::save_safetensors(&net, &path).unwrap_err().to_string();
        assert!(error.contains("reference has no") && error.contains(&scaling.label()), "{error}");
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "nothing written");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
