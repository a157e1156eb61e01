//! How the kernels split work over rayon's threads and write outputs without zeroing them first.

use rayon::prelude::*;

/// Elements per rayon task of an element-wise pass: large enough to amortise the task, small
/// enough to balance two to sixteen threads on the presets' tensors (a million elements and up).
pub(crate) const CHUNK: usize = 1 << 14;

/// Rows of an `m`-row matrix each rayon task takes: one block per thread.
pub(crate) fn row_block(m: usize) -> usize {
    m.div_ceil(rayon::current_num_threads()).max(1)
}

/// Rows of `w` values each rayon task of a row-wise pass takes (whole rows, about `CHUNK` values).
pub(crate) fn rows_per_task(w: usize) -> usize {
    (CHUNK / w.max(1)).max(1)
}

/// A raw pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut f32);
// SAFETY: tasks holding a `Shared` write disjoint elements (each user's contract).
unsafe impl Send for Shared {}
// SAFETY: as for Send.
unsafe impl Sync for Shared {}

/// Sums per-thread partial vectors.
pub(crate) fn sum_partials(parts: impl Iterator<Item = Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for part in parts {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

/// `len` floats written in parallel, `chunk` at a time (the last chunk may be shorter), by
/// `fill(state, chunk index, chunk)` with a per-thread `state` from `init`; nothing is zeroed
/// first (that pass over memory is what this saves). Returns them and what `fill` returned for
/// each chunk, in order.
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
pub(crate) unsafe fn par_filled<S, R: Send>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [std::mem::MaybeUninit<f32>]) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    let mut out = Vec::with_capacity(len);
    let results = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map_init(init, |state, (i, dst)| fill(state, i, dst))
        .collect();
    // SAFETY: every element was written (the caller's contract).
    unsafe { out.set_len(len) };
    (out, results)
}

/// `len` floats written whole through the pointer `fill` is given (by any threads, each element
/// by one), with no zeroing pass first.
///
/// # Safety
/// `fill` must write every element, through the pointer only, before it returns.
pub(crate) unsafe fn filled_through(len: usize, fill: impl FnOnce(Shared)) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(len);
    fill(Shared(out.as_mut_ptr()));
    // SAFETY: every element was written (the caller's contract).
    unsafe { out.set_len(len) };
    out
}

/// A chunk [`par_filled`]'s `fill` has written whole, as floats.
///
/// # Safety
/// Every element of `chunk` is initialised.
pub(crate) unsafe fn assume_written(chunk: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the elements are initialised.
    unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}
