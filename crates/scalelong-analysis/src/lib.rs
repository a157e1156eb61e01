//! What the harness concludes from what runs recorded, without burn: small statistics
//! ([`stats`]), intervals, verdicts and run outcomes ([`inference`]), exact paired tests over seeds ([`paired`]), and the checks of ScaleLong's
//! bounds ([`theorems`], and as a dose-response over kappa, [`dose_response`]; docs/method.md §4).

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

pub mod dose_response;
pub mod inference;
pub mod paired;
pub mod stats;
pub mod theorems;
