//! Image data for scalelong, as plain `Vec<f32>` so it does not depend on burn.
//!
//! - [`ImageSet`]: an in-memory image set, NCHW, pixels scaled to [-1, 1].
//! - [`load_idx`], [`load_png_folder`], [`load_cifar10`], [`synthetic`]: the sources.
//! - [`fashion_mnist`] and [`DatasetSpec`]: finding the data a run config names.
//! - [`Loader`]: a seeded, resumable, prefetching batch loader.

// All unsafe code lives in scalelong-kernels, behind safe APIs.
#![forbid(unsafe_code)]

mod cifar;
mod dataset;
mod idx;
mod loader;
mod locate;
mod png_folder;
mod synthetic;

#[cfg(test)]
mod test_support;

use std::path::PathBuf;

pub use cifar::{CIFAR10_RECORD_BYTES, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, load_cifar10};
pub use dataset::{BLACK, ImageSet};
pub use idx::load_idx;
pub use loader::{Batch, Loader};
pub use locate::{DATA_DIR_ENV, DatasetSpec, Split, fashion_mnist};
pub use png_folder::{load_png_folder, png_class_names};
pub use synthetic::synthetic;

/// Everything that can go wrong while reading or loading data. Every message names the file or
/// folder involved and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: starts with the gzip magic bytes but is not a valid gzip stream: {source}", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: bad magic number 0x{found:08x}, expected 0x{expected:08x} ({expected_kind})", path.display())]
    BadMagic { path: PathBuf, found: u32, expected: u32, expected_kind: &'static str },

    #[error("{}: data type code 0x{found:02x}, expected 0x08 (unsigned byte)", path.display())]
    BadDtype { path: PathBuf, found: u8 },

    #[error("{}: truncated: {needed} = {expected_bytes} bytes, found {found_bytes}", path.display())]
    Truncated {
        path: PathBuf,
        /// What the expected size comes from, e.g. "header says 60000x28x28".
        needed: String,
        expected_bytes: u128,
        found_bytes: usize,
    },

    #[error(
        "{}: trailing bytes: header says {dims} = {expected_bytes} bytes, found {found_bytes}",
        path.display()
    )]
    TrailingBytes { path: PathBuf, dims: String, expected_bytes: usize, found_bytes: usize },

    #[error("{}: header has a zero dimension: {dims}", path.display())]
    ZeroDimension { path: PathBuf, dims: String },

    #[error(
        "{} has {images_count} images but {} has {labels_count} labels, expected the same count",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch { images_path: PathBuf, images_count: usize, labels_path: PathBuf, labels_count: usize },

    #[error("{}: not a readable PNG: {source}", path.display())]
    Png {
        path: PathBuf,
        #[source]
        source: png::DecodingError,
    },

    #[error("{}: no *.png files in this folder (nor in class subfolders)", dir.display())]
    NoImages { dir: PathBuf },

    #[error(
        "{}: class folders {found:?} differ from the training split's {expected:?} ({}); the labels would not match",
        test_dir.display(),
        train_dir.display()
    )]
    ClassMismatch { test_dir: PathBuf, found: Vec<String>, train_dir: PathBuf, expected: Vec<String> },

    #[error("{}: {found_bytes} bytes is not a whole, non-zero number of {format} records of {record_bytes} bytes", path.display())]
    BadRecords { path: PathBuf, found_bytes: usize, record_bytes: usize, format: &'static str },

    #[error("{}: record {record} has label {label}, expected 0..={max}", path.display())]
    BadLabel { path: PathBuf, record: usize, label: u32, max: u32 },

    #[error(
        "{}: {} missing; expected CIFAR-10's binary version (the folder cifar-10-batches-bin: data_batch_1.bin ... data_batch_5.bin, test_batch.bin)",
        dir.display(),
        missing.join(", ")
    )]
    MissingCifar10 { dir: PathBuf, missing: Vec<String> },

    #[error(
        "{}: image is {found_width}x{found_height}, expected {expected_width}x{expected_height} like {}",
        path.display(),
        first_path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        found_width: usize,
        found_height: usize,
        first_path: PathBuf,
        expected_width: usize,
        expected_height: usize,
    },

    #[error(
        "{}: image has {found} channel(s), expected {expected} like {}; the folder mixes grey and colour images: give the channel count (1 or 3) to convert them all",
        path.display(),
        first_path.display()
    )]
    ChannelMismatch { path: PathBuf, found: usize, first_path: PathBuf, expected: usize },

    #[error("cannot convert images to {channels} channels: only 1 (grey) and 3 (RGB) are supported")]
    UnsupportedChannels { channels: usize },

    #[error(
        "Fashion-MNIST {split} split not found: looked for {images_file}[.gz] and {labels_file}[.gz] in {}; run `just data` to fetch it, or set SCALELONG_DATA to a folder holding these files",
        searched.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MissingData { split: Split, images_file: &'static str, labels_file: &'static str, searched: Vec<PathBuf> },

    #[error("dataset {dataset} has no test split: set {field}")]
    NoTestSplit { dataset: &'static str, field: &'static str },

    #[error("invalid dataset spec: {reason}")]
    InvalidSpec { reason: String },

    #[error("batch size {batch_size} does not fit a set of {set_len} images: need 1 <= batch size <= set size")]
    InvalidBatchSize { batch_size: usize, set_len: usize },

    #[error("cannot start the loader thread: {0}")]
    SpawnLoader(#[source] std::io::Error),
}
