//! Recording diagnostics during training (docs/run-folder.md, `diagnostics.jsonl`): the burn side
//! of the diagnostics; their analysis is `scalelong-analysis`. [`bounds`] measures the bound
//! quantities of one network on the same probe (`scalelong dose-response`).

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

pub mod bounds;
pub mod recorder;
