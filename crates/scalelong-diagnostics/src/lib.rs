//! Analysis of the diagnostics a training run records: reading `diagnostics.jsonl`, the statistics
//! used on it, and empirical checks of ScaleLong's theorems.

pub mod recorder;
pub mod records;
pub mod stats;
pub mod theorems;
