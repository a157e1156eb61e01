//! The diffusion process on a tiny network.

mod common;

use common::*;
use scalelong_model::SkipScaling;
use scalelong_model::diffusion::{NoiseSchedule, SamplerConfig, ScheduleConfig};

#[test]
fn samplers_are_deterministic_for_a_seed_and_differ_across_seeds() {
    let seeded = device(7);
    let device = seeded.clone().inner();
    let net = tiny_uvit(8, 2).init(SkipScaling::Constant { kappa: 0.5 }, &device);
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    for sampler in [SamplerConfig::Ddim { steps: 5 }, SamplerConfig::Ddpm { steps: 5 }] {
        let run = |seed| to_vec(schedule.sample(sampler, [2, 1, 8, 8], seed, &device, |x, t| net.forward(x, t, None)));
        let (a, b, c) = (run(11), run(11), run(12));
        assert_eq!(a, b, "{sampler:?} with one seed");
        assert_ne!(a, c, "{sampler:?} across seeds");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn sampling_steps_run_from_most_to_least_noisy_without_repeats() {
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let steps = schedule.sampling_steps(50);
    assert_eq!(steps.len(), 50);
    assert!(steps.windows(2).all(|w| w[0] > w[1]));
    assert!(*steps.first().unwrap() >= 980 && *steps.last().unwrap() <= 20);
    assert_eq!(schedule.sampling_steps(5000).len(), 1000);
}

#[test]
fn q_sample_mixes_signal_and_noise_by_alpha_bar() {
    let seeded = device(8);
    let device = seeded.clone().inner();
    let schedule = NoiseSchedule::new(&ScheduleConfig::default());
    let x0 = batch([2, 1, 4, 4], &device);
    let noise = batch([2, 1, 4, 4], &device);
    let noised = schedule.q_sample(x0.clone(), noise.clone(), &[0, 999]);
    let (x0, noise, xt) = (to_vec(x0), to_vec(noise), to_vec(noised.x_t));
    for s in 0..2 {
        let abar = schedule.alpha_bar[[0, 999][s]];
        for i in 0..16 {
            let j = s * 16 + i;
            let expected = abar.sqrt() as f32 * x0[j] + (1.0 - abar).sqrt() as f32 * noise[j];
            assert!((xt[j] - expected).abs() < 1e-5);
        }
    }
    assert_eq!(to_vec(noised.model_time), vec![0.0, 999.0]);
}
