//! Finding the data a run config names: Fashion-MNIST in its usual places, or a [`DatasetSpec`].

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cifar::cifar10_split_files;
use crate::{
    CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, DataError, ImageSet, load_cifar10, load_idx, load_png_folder,
    png_class_names, synthetic,
};

/// Environment variable naming a folder searched for Fashion-MNIST before the default places.
pub const DATA_DIR_ENV: &str = "SCALELONG_DATA";

/// Where Fashion-MNIST is searched after [`DATA_DIR_ENV`], in order: a hand-placed copy, what
/// `just data` produces (`dpkg-deb -x` of Debian's `dataset-fashion-mnist` into `data/`), and a
/// system-wide install of that package. The first two are relative to the current folder.
const FASHION_MNIST_DIRS: [&str; 3] =
    ["data/fashion-mnist", "data/usr/share/datasets/fashion-mnist", "/usr/share/datasets/fashion-mnist"];

/// Mixed into a synthetic set's seed for its test split, so the test images differ from the
/// training images of every seed a sweep is likely to use (a plain `seed + 1` would collide with
/// the next run's training seed).
const SYNTHETIC_TEST_SEED_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// The Fashion-MNIST file names of `split`, without the optional `.gz`: (images, labels).
fn fashion_mnist_file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// `dir/name` if it exists, else `dir/name.gz` if that exists. The plain file comes first
/// because it reads without decompressing; the reader detects gzip by content either way.
fn find_maybe_gzipped(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|path| path.is_file())
}

fn load_fashion_mnist_from(dirs: &[PathBuf], split: Split) -> Result<ImageSet, DataError> {
    let (images_file, labels_file) = fashion_mnist_file_names(split);
    for dir in dirs {
        // A folder counts only if it holds both files of the split; a half-filled one is
        // passed over rather than half-used.
        if let (Some(images_path), Some(labels_path)) =
            (find_maybe_gzipped(dir, images_file), find_maybe_gzipped(dir, labels_file))
        {
            return load_idx(&images_path, Some(&labels_path));
        }
    }
    Err(DataError::MissingData { split, images_file, labels_file, searched: dirs.to_vec() })
}

/// Loads a Fashion-MNIST split (train: 60000, test: 10000 images of 1x28x28, labels 0..10) from
/// the first folder holding both its files: `$SCALELONG_DATA` if set, then
/// `data/fashion-mnist/`, `data/usr/share/datasets/fashion-mnist/` and
/// `/usr/share/datasets/fashion-mnist/`. Each file may be gzipped (`.gz`) or not.
///
/// # Errors
/// [`DataError::MissingData`] listing the folders searched and saying to run `just data`, or the
/// error of reading a file that is there but malformed.
pub fn fashion_mnist(split: Split) -> Result<ImageSet, DataError> {
    let env_dir = std::env::var_os(DATA_DIR_ENV).filter(|dir| !dir.is_empty());
    let dirs: Vec<PathBuf> =
        env_dir.map(PathBuf::from).into_iter().chain(FASHION_MNIST_DIRS.iter().map(PathBuf::from)).collect();
    load_fashion_mnist_from(&dirs, split)
}

/// The data set of a run config, e.g. in TOML:
///
/// ```toml
/// [dataset]
/// kind = "fashion-mnist"
/// # kind = "idx", images = "a-images.gz", labels = "a-labels.gz", test_images = "...", test_labels = "..."
/// # kind = "png-folder", path = "faces/", channels = 1, test_path = "faces-test/"
/// # kind = "png-folder", path = "cifar/train", test_path = "cifar/test"   (cifar/train/<class>/*.png)
/// # kind = "cifar10", path = "cifar-10-batches-bin"
/// # kind = "synthetic", n = 512, channels = 1, size = 28, seed = 0
/// ```
///
/// Relative paths are relative to the current folder. `idx` and `png-folder` have a test split
/// only if `test_images` / `test_path` is given; loading the test split without it is
/// [`DataError::NoTestSplit`] rather than a silent reuse of the training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DatasetSpec {
    /// Fashion-MNIST, found by [`fashion_mnist`].
    // A struct variant, not a unit variant: serde ignores unknown fields next to the tag of a
    // unit variant even with deny_unknown_fields.
    FashionMnist {},
    /// IDX files, see [`load_idx`]; without labels every label is 0.
    Idx { images: PathBuf, labels: Option<PathBuf>, test_images: Option<PathBuf>, test_labels: Option<PathBuf> },
    /// A folder of PNGs, see [`load_png_folder`]: flat (every label 0) or one subfolder per class
    /// (labelled in name order; the test split must have the same classes).
    PngFolder {
        path: PathBuf,
        /// Convert every image to this many channels (1 or 3); without it they must agree.
        channels: Option<usize>,
        test_path: Option<PathBuf>,
    },
    /// CIFAR-10's binary version, see [`load_cifar10`]: the folder holding `data_batch_1.bin` ...
    /// `data_batch_5.bin` (the training split) and `test_batch.bin` (the test split).
    Cifar10 { path: PathBuf },
    /// Generated images, see [`synthetic`]. The test split has the same size and shape, from a
    /// seed derived from `seed`.
    Synthetic { n: usize, channels: usize, size: usize, seed: u64 },
}

impl DatasetSpec {
    /// The `kind` a config names this data set by (`fashion-mnist`, `cifar10`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            DatasetSpec::FashionMnist {} => "fashion-mnist",
            DatasetSpec::Idx { .. } => "idx",
            DatasetSpec::PngFolder { .. } => "png-folder",
            DatasetSpec::Cifar10 { .. } => "cifar10",
            DatasetSpec::Synthetic { .. } => "synthetic",
        }
    }

    /// Loads `split` of this data set.
    ///
    /// # Errors
    /// [`DataError::NoTestSplit`] for the test split of an `idx` or `png-folder` spec without
    /// one, [`DataError::InvalidSpec`] for a synthetic spec with 0 channels or size 0, and any
    /// error of the underlying loader.
    pub fn load(&self, split: Split) -> Result<ImageSet, DataError> {
        match self {
            DatasetSpec::FashionMnist {} => fashion_mnist(split),
            DatasetSpec::Idx { images, labels, test_images, test_labels } => match split {
                Split::Train => load_idx(images, labels.as_deref()),
                Split::Test => {
                    let test_images = test_images
                        .as_deref()
                        .ok_or(DataError::NoTestSplit { dataset: "idx", field: "test_images" })?;
                    load_idx(test_images, test_labels.as_deref())
                }
            },
            DatasetSpec::PngFolder { path, channels, test_path } => {
                let folder = match split {
                    Split::Train => path,
                    Split::Test => {
                        let test_path = test_path
                            .as_ref()
                            .ok_or(DataError::NoTestSplit { dataset: "png-folder", field: "test_path" })?;
                        let (expected, found) = (png_class_names(path)?, png_class_names(test_path)?);
                        if expected != found {
                            return Err(DataError::ClassMismatch {
                                test_dir: test_path.clone(),
                                found,
                                train_dir: path.clone(),
                                expected,
                            });
                        }
                        test_path
                    }
                };
                load_png_folder(folder, *channels)
            }
            DatasetSpec::Cifar10 { path } => match split {
                Split::Train => load_cifar10(&cifar10_split_files(path, &CIFAR10_TRAIN_FILES)?),
                Split::Test => load_cifar10(&cifar10_split_files(path, &[CIFAR10_TEST_FILE])?),
            },
            &DatasetSpec::Synthetic { n, channels, size, seed } => {
                if channels == 0 || size == 0 {
                    return Err(DataError::InvalidSpec {
                        reason: format!(
                            "synthetic data needs channels >= 1 and size >= 1, got channels = {channels}, size = {size}"
                        ),
                    });
                }
                let seed = match split {
                    Split::Train => seed,
                    Split::Test => seed ^ SYNTHETIC_TEST_SEED_SALT,
                };
                Ok(synthetic(n, channels, size, seed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::tests::write_valid_pair;
    use crate::test_support::TempDir;

    #[test]
    fn fashion_mnist_uses_the_first_folder_holding_both_files() {
        let half_filled = TempDir::new("locate-half");
        let complete = TempDir::new("locate-complete");
        let (images, labels) = write_valid_pair(complete.path(), 3, true);
        std::fs::rename(&images, complete.path().join("t10k-images-idx3-ubyte.gz")).unwrap();
        // Plain and gzipped files mix freely.
        std::fs::copy(&labels, complete.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let (images, _) = write_valid_pair(half_filled.path(), 5, false);
        std::fs::rename(&images, half_filled.path().join("t10k-images-idx3-ubyte")).unwrap();

        let dirs = [half_filled.path().to_owned(), complete.path().to_owned()];
        let set = load_fashion_mnist_from(&dirs, Split::Test).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.labels, [0, 1, 2]);
    }

    #[test]
    fn missing_fashion_mnist_lists_the_places_and_says_just_data() {
        let empty = TempDir::new("locate-empty");
        let dirs = [empty.path().to_owned(), PathBuf::from("/nonexistent/fmnist")];
        let error = load_fashion_mnist_from(&dirs, Split::Train).unwrap_err();
        assert!(matches!(error, DataError::MissingData { split: Split::Train, .. }), "{error:?}");
        let message = error.to_string();
        for expected in [
            &empty.path().display().to_string(),
            "/nonexistent/fmnist",
            "train-images-idx3-ubyte[.gz]",
            "train-labels-idx1-ubyte[.gz]",
            "`just data`",
            DATA_DIR_ENV,
        ] {
            assert!(message.contains(expected), "{expected:?} missing from: {message}");
        }
    }

    fn parse(toml_text: &str) -> Result<DatasetSpec, toml::de::Error> {
        #[derive(Deserialize)]
        struct Config {
            dataset: DatasetSpec,
        }
        toml::from_str::<Config>(toml_text).map(|config| config.dataset)
    }

    #[test]
    fn specs_parse_from_toml() {
        assert_eq!(parse("[dataset]\nkind = \"fashion-mnist\"").unwrap(), DatasetSpec::FashionMnist {});
        assert_eq!(
            parse("[dataset]\nkind = \"idx\"\nimages = \"a.gz\"").unwrap(),
            DatasetSpec::Idx { images: "a.gz".into(), labels: None, test_images: None, test_labels: None }
        );
        assert_eq!(
            parse("[dataset]\nkind = \"png-folder\"\npath = \"faces\"\nchannels = 1").unwrap(),
            DatasetSpec::PngFolder { path: "faces".into(), channels: Some(1), test_path: None }
        );
        assert_eq!(
            parse("dataset = { kind = \"synthetic\", n = 8, channels = 3, size = 16, seed = 2 }").unwrap(),
            DatasetSpec::Synthetic { n: 8, channels: 3, size: 16, seed: 2 }
        );
        assert_eq!(
            parse("dataset = { kind = \"cifar10\", path = \"cifar-10-batches-bin\" }").unwrap(),
            DatasetSpec::Cifar10 { path: "cifar-10-batches-bin".into() }
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        for bad in [
            "[dataset]\nkind = \"idx\"\nimages = \"a\"\nlabel = \"typo\"",
            "[dataset]\nkind = \"fashion-mnist\"\npath = \"x\"",
            "[dataset]\nkind = \"synthetic\"\nn = 1\nchannels = 1\nsize = 4\nseed = 0\nsizee = 3",
            "[dataset]\nkind = \"cifar\"",
            "[dataset]\nkind = \"cifar10\"",
            "[dataset]\nimages = \"a\"",
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn specs_load_their_splits() {
        let dir = TempDir::new("locate-spec");
        let (images, labels) = write_valid_pair(dir.path(), 4, false);
        let mut spec =
            DatasetSpec::Idx { images: images.clone(), labels: Some(labels), test_images: None, test_labels: None };
        assert_eq!(spec.load(Split::Train).unwrap().labels, [0, 1, 2, 3]);
        let error = spec.load(Split::Test).unwrap_err();
        assert_eq!(error.to_string(), "dataset idx has no test split: set test_images");
        if let DatasetSpec::Idx { test_images, .. } = &mut spec {
            *test_images = Some(images);
        }
        assert_eq!(spec.load(Split::Test).unwrap().labels, [0; 4]);

        let png_spec = DatasetSpec::PngFolder { path: dir.path().to_owned(), channels: None, test_path: None };
        assert!(matches!(png_spec.load(Split::Test), Err(DataError::NoTestSplit { .. })));

        let synthetic_spec = DatasetSpec::Synthetic { n: 4, channels: 1, size: 8, seed: 3 };
        let train = synthetic_spec.load(Split::Train).unwrap();
        assert_eq!(train, synthetic(4, 1, 8, 3));
        assert_ne!(train.pixels, synthetic_spec.load(Split::Test).unwrap().pixels);
        let empty_spec = DatasetSpec::Synthetic { n: 4, channels: 0, size: 8, seed: 3 };
        assert!(matches!(empty_spec.load(Split::Train), Err(DataError::InvalidSpec { .. })));
    }
}
