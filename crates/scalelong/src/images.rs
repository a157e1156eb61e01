//! A run's images: a split of the configured dataset, padded, checked against the network it
//! trains (the train loop, the evaluations and `scalelong diagnose` / `dose-response` read it alike).

use anyhow::{Result, bail};
use scalelong_data::{ImageSet, Split};
use scalelong_model::ModelConfig;
use scalelong_schema::RunConfig;

/// Loads a split of the configured dataset, padded, and checks it fits the network.
pub fn load_images(config: &RunConfig, model: &ModelConfig, split: Split) -> Result<ImageSet> {
    let mut set = config.data.dataset.load(split)?;
    if config.data.pad_to_multiple > 1 {
        set = set.pad_to_multiple(config.data.pad_to_multiple);
    }
    let [c, h, w] = model.image_shape();
    if [set.channels, set.height, set.width] != [c, h, w] {
        bail!(
            "data: images are {}x{}x{} (CxHxW) after padding to a multiple of {}, but the model expects {c}x{h}x{w}; \
             set data.pad_to_multiple or the model's img_size / channels",
            set.channels,
            set.height,
            set.width,
            config.data.pad_to_multiple
        );
    }
    if set.len() < config.batch_size {
        bail!("batch_size: {} is larger than the dataset ({} images)", config.batch_size, set.len());
    }
    Ok(set)
}
