//! Recording diagnostics during training (docs/run-folder.md, `diagnostics.jsonl`): the burn side
//! of the diagnostics; their analysis is `scalelong-analysis`.

pub mod recorder;
