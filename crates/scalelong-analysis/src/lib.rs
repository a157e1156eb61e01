//! What the harness concludes from what runs recorded, without burn: small statistics
//! ([`stats`]), intervals ([`inference`]), resampling ([`resampling`]), verdicts ([`verdict`]), the rules a run is judged by ([`run_rules`]), exact paired tests over seeds ([`paired`]), and the checks of ScaleLong's
//! bounds ([`theorems`], and as a dose-response over kappa, [`dose_response`]; docs/method.md §4).

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

pub mod dose_response;
pub mod inference;
pub mod paired;
pub mod resampling;
pub mod run_rules;
pub mod stats;
#[cfg(test)]
mod test_support;
pub mod theorems;
pub mod verdict;
