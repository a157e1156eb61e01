//! The small CNN whose features the Fréchet distance compares (the role Inception plays for FID),
//! trained once per data set and cached on disk so that every run of a sweep uses the same one.
//!
//! Architecture, for `C x H x W` images and `K` classes: conv 3x3 `C -> 32`, ReLU, max-pool 2;
//! conv 3x3 `32 -> 64`, ReLU, max-pool 2; linear `64 (H/4) (W/4) -> 128`, ReLU (the feature
//! layer); linear `128 -> K`. Trained with AdamW and cross-entropy on the training split, its
//! accuracy measured on the whole test split.
//!
//! # The cache
//! `<cache_dir>/classifier-<key>.bpk` (the burn record) and `classifier-<key>.json`
//! ([`ClassifierInfo`]: key, image shape, class count, recipe, test accuracy). The key is
//! `<C>x<H>x<W>-<fingerprint>-e<epochs>`: the fingerprint hashes both splits (shapes, pixels,
//! labels) and the recipe version, so another data set, another padding or another epoch count gets
//! its own file, and two sweeps on different data never evict each other's classifier.
//!
//! - The `.bpk` is written first, the `.json` last, each atomically: the JSON marks a complete
//!   cache. No JSON: train.
//! - A JSON that does not describe this data set and recipe (edited by hand, or a fingerprint
//!   collision): retrain and overwrite, saying so on stderr.
//! - A JSON or `.bpk` that cannot be read or decoded: an error naming the file and saying to
//!   delete the JSON (which retrains). Not retrained silently, because the cache is what keeps
//!   FDs comparable across the runs of a sweep: replacing it halfway through would mix FDs of two
//!   classifiers, and a corrupt file means something outside this code went wrong (the writes are
//!   atomic and locked).
//! - `classifier-<key>.lock` is held (an exclusive OS file lock, `std::fs::File::lock`) from the
//!   check to the end of the load, so two processes of one sweep never train the same classifier at once: the second
//!   waits, then loads what the first wrote.

use super::image_batch;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLoss;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::relu;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use scalelong_data::ImageSet;
use scalelong_schema::{write_atomic, write_json_atomic};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;
use std::time::Instant;

/// Width of the feature layer, the vectors the Fréchet distance compares.
pub const FEATURE_DIM: usize = 128;

/// Part of the cache key: change it whenever the architecture or the training recipe changes, so
/// that no cache of the old classifier is used.
const RECIPE_VERSION: u32 = 1;
/// Seeds the initial weights and the order of the training images.
const TRAINING_SEED: u64 = 0x0c1a_55e5;
const BATCH: usize = 128;
const LEARNING_RATE: f64 = 1e-3;

#[derive(Module, Debug)]
pub struct Classifier {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    feature: Linear,
    head: Linear,
}

impl Classifier {
    fn new([channels, height, width]: [usize; 3], n_classes: usize, device: &Device) -> Self {
        let conv =
            |c_in, c_out| Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Same).init(device);
        Self {
            conv1: conv(channels, 32),
            conv2: conv(32, 64),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            feature: LinearConfig::new(64 * (height / 4) * (width / 4), FEATURE_DIM).init(device),
            head: LinearConfig::new(FEATURE_DIM, n_classes).init(device),
        }
    }

    /// # Shapes
    /// - images: `[B, C, H, W]`
    /// - output: `[B, FEATURE_DIM]`, after the ReLU
    fn feature_layer(&self, images: Tensor<4>) -> Tensor<2> {
        let h = self.pool.forward(relu(self.conv1.forward(images))); // [B, 32, H/2, W/2]
        let h = self.pool.forward(relu(self.conv2.forward(h))); // [B, 64, H/4, W/4]
        relu(self.feature.forward(h.flatten(1, 3)))
    }

    /// # Shapes
    /// - images: `[B, C, H, W]`
    /// - output: `[B, K]`
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.feature_layer(images))
    }

    /// The feature vectors of `images`, computed `BATCH` at a time.
    ///
    /// # Shapes
    /// - images: `[N, C, H, W]`, on this classifier's device
    /// - output: `[N, FEATURE_DIM]`
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let n = images.dims()[0];
        let batches = (0..n)
            .step_by(BATCH)
            .map(|start| self.feature_layer(images.clone().narrow(0, start, BATCH.min(n - start))));
        Tensor::cat(batches.collect(), 0)
    }

    /// The fraction of `set` classified correctly.
    fn accuracy(&self, set: &ImageSet, device: &Device) -> Result<f64> {
        let mut correct = 0usize;
        for start in (0..set.len()).step_by(BATCH) {
            let indices: Vec<usize> = (start..(start + BATCH).min(set.len())).collect();
            let predicted = self.logits(image_batch(set, &indices, device)).argmax(1); // [B, 1]
            let predicted =
                predicted.into_data().convert::<i64>().try_to_vec::<i64>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            correct += indices.iter().zip(&predicted).filter(|&(&i, &p)| i64::from(set.labels[i]) == p).count();
        }
        Ok(correct as f64 / set.len() as f64)
    }
}

/// What identifies a cached classifier: a cache whose JSON holds another identity is retrained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheIdentity {
    pub key: String,
    /// `[C, H, W]`
    pub image_shape: [usize; 3],
    pub n_classes: usize,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
}

/// The JSON next to a cached classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    #[serde(flatten)]
    pub identity: CacheIdentity,
    /// On the whole test split; reported next to every FD.
    pub test_accuracy: f64,
    pub train_seconds: f64,
}

pub struct LoadedClassifier {
    /// On the inference device (no autodiff).
    pub model: Classifier,
    pub info: ClassifierInfo,
    /// True when this call trained it, false when it came from the cache (load_or_train logs
    /// which; the tests check it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub trained_now: bool,
}

/// The classifier of this data set and epoch count: from the cache in `cache_dir` if there is one,
/// else trained (for minutes on a CPU: see the module note) and cached. Either way the model and
/// its info are read back from the cache files, so the run that trained the classifier and the
/// runs that load it see the same bits (a float does not always survive a JSON round trip).
/// `device` may carry autodiff; training adds it, the returned model lives on `device.inner()`.
///
/// # Errors
/// Fewer than 2 classes in the training labels, images smaller than 4x4, `epochs == 0`, a cache
/// file that cannot be read or decoded (the message names it), or an I/O error.
pub fn load_or_train(
    train_set: &ImageSet,
    test_set: &ImageSet,
    epochs: usize,
    cache_dir: &Path,
    device: &Device,
) -> Result<LoadedClassifier> {
    let identity = cache_identity(train_set, test_set, epochs)?;
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("{}: cannot create the cache folder", cache_dir.display()))?;
    let path = |extension: &str| cache_dir.join(format!("classifier-{}.{extension}", identity.key));
    let (record_path, info_path, lock_path) = (path("bpk"), path("json"), path("lock"));
    // Held until this function returns (dropping the file releases the lock).
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("{}: cannot open", lock_path.display()))?;
    lock.lock().with_context(|| format!("{}: cannot lock", lock_path.display()))?;
    let device = device.clone().inner();

    let trained_now = match read_info(&info_path)? {
        Some(info) if info.identity == identity => false,
        found => {
            if let Some(info) = found {
                eprintln!(
                    "{}: describes another data set or recipe ({:?}); retraining for {:?}",
                    info_path.display(),
                    info.identity,
                    identity
                );
            }
            train_and_cache(train_set, test_set, &identity, &record_path, &info_path, &device)?;
            true
        }
    };
    let info = read_info(&info_path)?.with_context(|| format!("{}: vanished while locked", info_path.display()))?;
    let bytes = std::fs::read(&record_path).with_context(|| corrupt_cache(&record_path, &info_path))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| corrupt_cache(&record_path, &info_path))?;
    let model = Classifier::new(identity.image_shape, identity.n_classes, &device)
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| corrupt_cache(&record_path, &info_path))?;
    Ok(LoadedClassifier { model, info, trained_now })
}

/// The error context of an unreadable cache file; without its JSON the cache is retrained.
fn corrupt_cache(file: &Path, info_path: &Path) -> String {
    format!("{}: corrupt classifier cache; delete {} to retrain", file.display(), info_path.display())
}

/// The cache's JSON, `None` if there is none.
fn read_info(path: &Path) -> Result<Option<ClassifierInfo>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(path).with_context(|| corrupt_cache(path, path))?;
    Ok(Some(serde_json::from_slice(&text).with_context(|| corrupt_cache(path, path))?))
}

/// Trains the classifier, measures its test accuracy and writes the cache: the record first, the
/// JSON (which marks a complete cache) last.
fn train_and_cache(
    train_set: &ImageSet,
    test_set: &ImageSet,
    identity: &CacheIdentity,
    record_path: &Path,
    info_path: &Path,
    device: &Device,
) -> Result<()> {
    eprintln!(
        "training the FD classifier on {} images for {} epoch(s), cached as {}",
        train_set.len(),
        identity.epochs,
        record_path.display()
    );
    let started = Instant::now();
    let model = train(train_set, identity, device);
    let train_seconds = started.elapsed().as_secs_f64();
    let info =
        ClassifierInfo { test_accuracy: model.accuracy(test_set, device)?, train_seconds, identity: identity.clone() };
    eprintln!("FD classifier: test accuracy {:.4} after {train_seconds:.0} s", info.test_accuracy);
    let bytes = model.into_record().into_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    write_atomic(record_path, &bytes)?;
    write_json_atomic(info_path, &info)
}

/// Trains a fresh classifier; returns it on the inference device.
fn train(set: &ImageSet, identity: &CacheIdentity, device: &Device) -> Classifier {
    let training_device = device.clone().autodiff();
    // The device RNG is reseeded here, once per data set; the training loop draws its randomness
    // from its own (seed, step) streams, so this does not change a run.
    training_device.seed(TRAINING_SEED);
    let mut model = Classifier::new(identity.image_shape, identity.n_classes, &training_device);
    let mut optimizer = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLoss::new(None, &training_device);
    let mut rng = ChaCha8Rng::seed_from_u64(TRAINING_SEED);
    let mut order: Vec<usize> = (0..set.len()).collect();
    for _ in 0..identity.epochs {
        order.shuffle(&mut rng);
        for indices in order.chunks(BATCH) {
            let images = image_batch(set, indices, &training_device);
            let labels: Vec<i64> = indices.iter().map(|&i| i64::from(set.labels[i])).collect();
            let labels = Tensor::<1, Int>::from_ints(labels.as_slice(), &training_device);
            let loss = loss_fn.forward(model.logits(images), labels);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(LEARNING_RATE, model, grads);
        }
    }
    model.valid()
}

pub fn check_epochs(epochs: usize) -> Result<()> {
    if epochs == 0 {
        bail!("eval.classifier_epochs: must be at least 1 while eval.fd_samples > 0");
    }
    Ok(())
}

fn cache_identity(train_set: &ImageSet, test_set: &ImageSet, epochs: usize) -> Result<CacheIdentity> {
    let image_shape = [train_set.channels, train_set.height, train_set.width];
    if [test_set.channels, test_set.height, test_set.width] != image_shape {
        bail!(
            "FD classifier: train images are {image_shape:?} (CxHxW) but test images {:?}",
            [test_set.channels, test_set.height, test_set.width]
        );
    }
    if image_shape[1] < 4 || image_shape[2] < 4 {
        bail!("FD classifier: images of {image_shape:?} (CxHxW) are smaller than the 4x4 its two poolings need");
    }
    let n_classes = train_set.labels.iter().max().map_or(0, |&m| m as usize + 1);
    if n_classes < 2 {
        bail!(
            "FD classifier: the training labels hold {n_classes} class(es); it needs at least 2 (set eval.fd_samples = 0 for unlabelled data)"
        );
    }
    check_epochs(epochs)?;
    let fingerprint = fingerprint(&[train_set, test_set]);
    let [c, h, w] = image_shape;
    Ok(CacheIdentity {
        key: format!("{c}x{h}x{w}-{fingerprint:016x}-e{epochs}"),
        image_shape,
        n_classes,
        epochs,
        train_images: train_set.len(),
        test_images: test_set.len(),
    })
}

/// 64-bit FNV-1a over the recipe version and every set's shape, pixel bits and labels: stable
/// across Rust versions and platforms (unlike `std`'s hasher), and fast enough (a fraction of a
/// second for Fashion-MNIST) to run at every evaluation.
fn fingerprint(sets: &[&ImageSet]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    };
    feed(&RECIPE_VERSION.to_le_bytes());
    for set in sets {
        for dim in [set.len(), set.channels, set.height, set.width] {
            feed(&(dim as u64).to_le_bytes());
        }
        for pixel in &set.pixels {
            feed(&pixel.to_bits().to_le_bytes());
        }
        for label in &set.labels {
            feed(&label.to_le_bytes());
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// `n` 12x12 grey images of one bar each, label 0 horizontal, 1 vertical, at random places,
    /// lengths and brightness on a dark background: a task a CNN learns in seconds.
    fn bars(n: usize, seed: u64) -> ImageSet {
        const SIZE: usize = 12;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pixels = vec![-1.0f32; n * SIZE * SIZE];
        let mut labels = Vec::with_capacity(n);
        for (image, label) in pixels.chunks_mut(SIZE * SIZE).zip(0u32..) {
            let label = label % 2;
            let (length, brightness) = (rng.random_range(5..=SIZE), rng.random_range(0.0..1.0f32));
            let (across, along) = (rng.random_range(0..SIZE), rng.random_range(0..=SIZE - length));
            for k in along..along + length {
                let (row, column) = if label == 0 { (across, k) } else { (k, across) };
                image[row * SIZE + column] = brightness;
            }
            labels.push(label);
        }
        ImageSet { channels: 1, height: SIZE, width: SIZE, pixels, labels }
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scalelong-eval-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    use std::path::PathBuf;

    #[test]
    fn trains_once_then_loads_retrains_on_a_foreign_json_and_rejects_a_corrupt_record() {
        // 512 images in batches of 128: 4 steps an epoch.
        const EPOCHS: usize = 10;
        let (train_set, test_set) = (bars(512, 1), bars(128, 2));
        let dir = scratch_dir("classifier");
        let device = Device::flex().autodiff();

        let trained = load_or_train(&train_set, &test_set, EPOCHS, &dir, &device).unwrap();
        assert!(trained.trained_now);
        assert!(trained.info.test_accuracy > 0.9, "test accuracy {}", trained.info.test_accuracy);
        let [record_path, info_path] =
            ["bpk", "json"].map(|ext| dir.join(format!("classifier-{}.{ext}", trained.info.identity.key)));
        assert!(record_path.is_file() && info_path.is_file());

        let loaded = load_or_train(&train_set, &test_set, EPOCHS, &dir, &device).unwrap();
        assert!(!loaded.trained_now, "the second call loads the cache");
        assert_eq!(loaded.info, trained.info, "both read from the cache files");
        let images = image_batch(&test_set, &[0, 1, 2], &device.clone().inner());
        let features = |c: &LoadedClassifier| c.model.features(images.clone()).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(features(&loaded), features(&trained));
        assert_eq!(features(&loaded).len(), 3 * FEATURE_DIM);

        // Another epoch count is another classifier, in another file.
        assert_ne!(cache_identity(&train_set, &test_set, EPOCHS + 1).unwrap().key, trained.info.identity.key);

        let mut foreign = trained.info.clone();
        foreign.identity.n_classes = 7;
        write_json_atomic(&info_path, &foreign).unwrap();
        assert!(
            load_or_train(&train_set, &test_set, EPOCHS, &dir, &device).unwrap().trained_now,
            "a foreign JSON is retrained"
        );

        std::fs::write(&record_path, b"not a burn record").unwrap();
        let error = format!(
            "{:#}",
            load_or_train(&train_set, &test_set, EPOCHS, &dir, &device).err().expect("a corrupt record is an error")
        );
        assert!(
            error.contains(&record_path.display().to_string())
                && error.contains(&format!("delete {}", info_path.display())),
            "{error}"
        );

        std::fs::write(&info_path, b"{").unwrap();
        let error = format!(
            "{:#}",
            load_or_train(&train_set, &test_set, EPOCHS, &dir, &device).err().expect("a corrupt JSON is an error")
        );
        assert!(error.contains(&info_path.display().to_string()), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fingerprint_sees_every_pixel_and_label() {
        let set = bars(4, 3);
        let base = fingerprint(&[&set]);
        let mut pixel = set.clone();
        pixel.pixels[40] += 0.5;
        let mut label = set.clone();
        label.labels[3] = 0;
        assert_ne!(fingerprint(&[&pixel]), base);
        assert_ne!(fingerprint(&[&label]), base);
        assert_eq!(fingerprint(&[&set.clone()]), base);
    }

    #[test]
    fn unlabelled_data_is_an_error_pointing_at_fd_samples() {
        let mut set = bars(8, 4);
        set.labels.fill(0);
        let error = load_or_train(&set, &set, 1, &scratch_dir("unlabelled"), &Device::flex())
            .err()
            .expect("one class cannot train");
        assert!(error.to_string().contains("eval.fd_samples = 0"), "{error}");
    }
}

/// A measurement, not a check: trains the classifier on the real Fashion-MNIST (padded to 32x32,
/// as the runs use it) and prints its training time and test accuracy. Ignored by default (it
/// takes minutes and needs the data); run it from the workspace root with
/// `SCALELONG_DATA=$PWD/data/usr/share/datasets/fashion-mnist SCALELONG_CLASSIFIER_EPOCHS=1 cargo test -p scalelong --bin scalelong measure_fashion_mnist_classifier -- --ignored --nocapture`
/// (`cargo test` runs in the crate's folder, where the default relative data paths do not lead).
#[cfg(test)]
mod measurement {
    use super::*;
    use scalelong_data::{Split, fashion_mnist};

    #[test]
    #[ignore = "a measurement on the real data: minutes of CPU"]
    fn measure_fashion_mnist_classifier() {
        let epochs = std::env::var("SCALELONG_CLASSIFIER_EPOCHS")
            .map_or(crate::eval::EvalConfig::default().classifier_epochs, |v| {
                v.parse().expect("SCALELONG_CLASSIFIER_EPOCHS: a number")
            });
        let load = |split| fashion_mnist(split).expect("Fashion-MNIST (run `just data`)").pad_to_multiple(32);
        let (train_set, test_set) = (load(Split::Train), load(Split::Test));
        let dir = std::env::temp_dir().join(format!("scalelong-eval-measure-{}", std::process::id()));
        let started = Instant::now();
        let classifier = load_or_train(&train_set, &test_set, epochs, &dir, &Device::flex()).unwrap();
        println!(
            "Fashion-MNIST 32x32, {} train images, {epochs} epoch(s): training {:.1} s, test accuracy {:.4} ({} test images), load_or_train in all {:.1} s",
            train_set.len(),
            classifier.info.train_seconds,
            classifier.info.test_accuracy,
            test_set.len(),
            started.elapsed().as_secs_f64()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
