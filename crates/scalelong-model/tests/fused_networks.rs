//! The networks on the fused kernels against the same networks on burn's compositions
//! (`scalelong_kernels::testing::with_reference_ops`): outputs and every parameter gradient, and
//! the two places where a network computes a layer its own way (the patch embedding, the skip
//! fusion). Tolerances are stated per test; they allow f32 summation-order differences only.

use burn::prelude::*;
use burn::tensor::Distribution;
use scalelong_kernels::testing::{assert_close, to_vec, with_reference_ops};

/// Every parameter gradient of `model`, in visiting order, flattened.
fn parameter_grads(
    model: &scalelong_model::DiffusionNet,
    grads: &burn::optim::GradientsParams,
) -> Vec<(String, Vec<f32>)> {
    use burn::module::{Module, ModuleVisitor, Param};
    struct Collect<'a> {
        grads: &'a burn::optim::GradientsParams,
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self.grads.get::<D>(param.id).map(to_vec).unwrap_or_default();
            self.out.push((self.path.join("."), g));
        }
    }
    let mut c = Collect { grads, path: Vec::new(), out: Vec::new() };
    model.visit(&mut c);
    c.out
}

#[test]
fn networks_with_fused_ops_equal_the_burn_compositions() {
    use burn::optim::GradientsParams;
    use scalelong_model::SkipScaling;
    use scalelong_model::diffusion::noise_prediction_loss;
    use scalelong_model::presets::preset;
    // Output tolerance 1e-4 and gradient tolerance 1e-3, relative to each tensor's largest value:
    // thirteen blocks of f32 arithmetic in a different order (and f64 norm statistics).
    let strategies = [
        SkipScaling::Original,
        SkipScaling::InvSqrt2,
        SkipScaling::Constant { kappa: 0.5 },
        SkipScaling::Learnable { shared: true, reduction: 16 },
        SkipScaling::Learnable { shared: false, reduction: 16 },
    ];
    for name in ["unet-small", "uvit-small", "uvit-deep"] {
        let config = preset(name).unwrap();
        for scaling in strategies {
            let device = Device::flex().autodiff();
            device.seed(3);
            let net = config.init(scaling, &device);
            let x = Tensor::<4>::random([2, 1, 32, 32], Distribution::Normal(0.0, 1.0), &device);
            let t = Tensor::<1>::from_floats([17.0, 640.0], &device);
            let noise = Tensor::<4>::random([2, 1, 32, 32], Distribution::Normal(0.0, 1.0), &device);
            let run = || {
                let y = net.forward(x.clone(), t.clone(), None);
                let loss = noise_prediction_loss(y.clone(), noise.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                (to_vec(y), parameter_grads(&net, &grads))
            };
            let (y_fast, g_fast) = run();
            let (y_ref, g_ref) = with_reference_ops(run);
            assert_close(&format!("{name} {scaling} output"), y_fast, y_ref, 1e-4);
            assert_eq!(g_fast.len(), g_ref.len());
            for ((path, a), (_, b)) in g_fast.into_iter().zip(g_ref) {
                assert_eq!(a.len(), b.len(), "{name} {scaling} {path}: one side has no gradient");
                assert_close(&format!("{name} {scaling} grad {path}"), a, b, 1e-3);
            }
            // Inference backend.
            let inner = net.valid();
            let xi = x.clone().inner();
            let ti = t.clone().inner();
            let fast = to_vec(inner.forward(xi.clone(), ti.clone(), None));
            let reference = to_vec(with_reference_ops(|| inner.forward(xi, ti, None)));
            assert_close(&format!("{name} {scaling} inference output"), fast, reference, 1e-4);
        }
    }
}

#[test]
fn uvit_patch_embedding_equals_the_strided_convolution() {
    // PatchEmbed::forward runs the p x p, stride-p convolution as a linear layer on the patches;
    // values and the gradients of the input, kernel and bias against flex's convolution.
    // Tolerance 1e-5 relative (f32 summation order).
    use burn::nn::conv::Conv2dConfig;
    use scalelong_model::uvit::PatchEmbed;
    for (b, c, d, hw, p) in [(2, 1, 8, 8, 4), (1, 3, 5, 6, 2)] {
        let ad = Device::flex().autodiff();
        ad.seed(5);
        let embed = PatchEmbed { proj: Conv2dConfig::new([c, d], [p, p]).with_stride([p, p]).init(&ad) };
        let x = Tensor::<4>::random([b, c, hw, hw], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let fast = embed.forward(x.clone(), p);
        let reference = embed.proj.forward(x.clone()).flatten::<3>(2, 3).swap_dims(1, 2);
        let name = format!("patch embedding b{b} c{c} d{d} {hw}x{hw} p{p}");
        assert_close(&format!("{name} forward"), to_vec(fast.clone()), to_vec(reference.clone()), 1e-5);
        let w = Tensor::<3>::random(fast.dims(), Distribution::Normal(0.0, 1.0), &ad);
        let (g_fast, g_ref) = ((fast * w.clone()).sum().backward(), (reference * w).sum().backward());
        assert_close(
            &format!("{name} input gradient"),
            to_vec(x.grad(&g_fast).unwrap()),
            to_vec(x.grad(&g_ref).unwrap()),
            1e-5,
        );
        let (kernel, bias) = (embed.proj.weight.val(), embed.proj.bias.as_ref().unwrap().val());
        assert_close(
            &format!("{name} kernel gradient"),
            to_vec(kernel.grad(&g_fast).unwrap()),
            to_vec(kernel.grad(&g_ref).unwrap()),
            1e-5,
        );
        assert_close(
            &format!("{name} bias gradient"),
            to_vec(bias.grad(&g_fast).unwrap()),
            to_vec(bias.grad(&g_ref).unwrap()),
            1e-5,
        );
    }
}

#[test]
fn the_uvit_skip_fusion_equals_skip_linear_on_the_concatenation() {
    // Block::forward fuses `skip_linear(cat([x, skip]))` as two products on the weight's halves;
    // tolerance 1e-5 relative (f32 summation order), values and gradients.
    use scalelong_model::init::LinearInit;
    use scalelong_model::uvit::{Block, BlockConfig};
    let ad = Device::flex().autodiff();
    ad.seed(9);
    let config = BlockConfig { dim: 16, heads: 2, mlp_ratio: 4.0, qkv_bias: false, fuses_skip: true };
    let block = Block::new(config, LinearInit::TruncNormal { std: 0.2 }, &ad);
    let x = Tensor::<3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let skip = Tensor::<3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let fast = block.forward(x.clone(), Some(skip.clone()));
    let h = block.skip_linear.as_ref().unwrap().forward(Tensor::cat(vec![x.clone(), skip.clone()], 2));
    let h = h.clone() + block.attn.forward(block.norm1.forward(h));
    let reference = h.clone() + block.mlp.forward(block.norm2.forward(h));
    assert_close("fused block forward", to_vec(fast.clone()), to_vec(reference.clone()), 1e-5);
    let w = Tensor::<3>::random(fast.dims(), Distribution::Normal(0.0, 1.0), &ad);
    let (g_fast, g_ref) = ((fast * w.clone()).sum().backward(), (reference * w).sum().backward());
    for (name, t) in [("x", &x), ("skip", &skip)] {
        assert_close(
            &format!("{name} gradient"),
            to_vec(t.grad(&g_fast).unwrap()),
            to_vec(t.grad(&g_ref).unwrap()),
            1e-5,
        );
    }
    let weight = block.skip_linear.as_ref().unwrap().weight.val();
    assert_close(
        "skip_linear weight gradient",
        to_vec(weight.grad(&g_fast).unwrap()),
        to_vec(weight.grad(&g_ref).unwrap()),
        1e-5,
    );
}
