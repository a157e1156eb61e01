//! Where an op runs, and the one piece of autodiff wiring every fused op shares.
//!
//! An op whose inputs are all on flex runs its fused forward without the state a backward would
//! keep ([`FusedOp::infer`]); all on autodiff flex, the same
//! forward becomes one node of the autodiff graph whose backward is the op's own ([`FusedOp`]);
//! anything else (another backend, a mix, another dtype, or inside
//! `testing::with_reference_ops`) returns `None`, and the op runs its [`crate::reference`]
//! composition instead.

use crate::{Isa, REFERENCE, isa};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{DType, Shape};

type Ad = Autodiff<Flex>;

/// A fused op on `N` inputs: a forward on contiguous f32 flex tensors and its backward.
pub(crate) trait FusedOp<const N: usize>: Send + std::fmt::Debug + Sized + 'static {
    /// What the backward keeps of the forward.
    type State: Clone + Send + std::fmt::Debug + 'static;
    /// The output and the state the backward needs, on the kernels of `isa`.
    fn forward(&self, inputs: [FlexTensor; N], isa: Option<Isa>) -> (FlexTensor, Self::State);
    /// The output alone, where nothing will differentiate it (the inputs are on flex, not
    /// autodiff): what [`FusedOp::forward`] returns, computed in the same order, so the values
    /// are the same; an op whose state is large (attention's probabilities) skips building it.
    fn infer(&self, inputs: [FlexTensor; N], isa: Option<Isa>) -> FlexTensor {
        self.forward(inputs, isa).0
    }
    /// The gradient of each input that is `wanted`, from the output's (contiguous).
    fn backward(
        self,
        state: Self::State,
        grad: FlexTensor,
        wanted: [bool; N],
        isa: Option<Isa>,
    ) -> [Option<FlexTensor>; N];
}

/// A tensor's primitive where a fused op can take it.
pub(crate) enum Placed {
    Flex(FlexTensor),
    Autodiff(FloatTensor<Ad>),
}

/// `t`'s primitive when it is an f32 tensor on flex or autodiff flex and this thread does not run
/// the reference compositions; `None` otherwise.
pub(crate) fn placed<const D: usize>(t: &Tensor<D>) -> Option<Placed> {
    if REFERENCE.get() || t.dtype() != DType::F32 {
        return None;
    }
    if let Ok(p) = t.clone().try_into_primitive::<Ad>() {
        return Some(Placed::Autodiff(p));
    }
    t.clone().try_into_primitive::<Flex>().ok().map(Placed::Flex)
}

/// Runs `op` fused on `inputs` ([`placed`]): its forward on flex, a graph node on autodiff flex;
/// `None` when not every input is placed on the same one, and the caller runs the reference.
pub(crate) fn run<const N: usize, const D: usize, F: FusedOp<N>>(
    op: F,
    inputs: [Option<Placed>; N],
) -> Option<Tensor<D>> {
    let isa = isa();
    if inputs.iter().all(|p| matches!(p, Some(Placed::Flex(_)))) {
        let inputs = inputs.map(|p| match p {
            Some(Placed::Flex(t)) => contiguous(t),
            _ => unreachable!("checked above"),
        });
        return Some(Tensor::from_primitive::<Flex>(op.infer(inputs, isa)));
    }
    if !inputs.iter().all(|p| matches!(p, Some(Placed::Autodiff(_)))) {
        return None;
    }
    let parts = inputs.map(|p| match p {
        Some(Placed::Autodiff(t)) => t.into_parts(),
        _ => unreachable!("checked above"),
    });
    let mut nodes = Vec::with_capacity(N);
    let primitives = parts.map(|(primitive, node)| {
        nodes.push(node);
        contiguous(primitive)
    });
    let nodes = nodes.try_into().unwrap_or_else(|_| unreachable!("one node per input"));
    let (out, state) = op.forward(primitives, isa);
    let out = match Node(op).prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Ad>(out))
}

/// The autodiff node of a fused op.
#[derive(Debug)]
struct Node<F>(F);

impl<const N: usize, F: FusedOp<N>> Backward<Flex, N> for Node<F> {
    type State = F::State;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let wanted = ops.parents.each_ref().map(Option::is_some);
        // The backward runs on the thread that called `backward()`: its kernel set applies.
        let input_grads = self.0.backward(ops.state, grad, wanted, isa());
        for (parent, input_grad) in ops.parents.into_iter().zip(input_grads) {
            if let (Some(node), Some(input_grad)) = (parent, input_grad) {
                grads.register::<Flex>(node.id, input_grad);
            }
        }
    }
}

pub(crate) fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    let shape = t.layout().shape();
    std::array::from_fn(|i| shape[i])
}

/// `t` as contiguous f32 (a no-op when it already is).
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fast ops support f32 only");
    let whole = t.is_contiguous() && t.layout().start_offset() == 0 && t.bytes().len() == 4 * t.layout().num_elements();
    if whole { t } else { t.to_contiguous() }
}

pub(crate) fn new_tensor(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(burn::tensor::Bytes::from_elems(data), Layout::contiguous(Shape::from(shape.to_vec())), DType::F32)
}
