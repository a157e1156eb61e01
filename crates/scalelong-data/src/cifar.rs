//! CIFAR-10's binary version (`cifar-10-batches-bin`) as a labelled [`ImageSet`].

use std::path::{Path, PathBuf};

use crate::{DataError, ImageSet};

/// One record: the label byte, then a 32x32 RGB image channel by channel (1024 red bytes, 1024
/// green, 1024 blue; each row by row), which is already the CHW layout of an [`ImageSet`].
pub const CIFAR10_RECORD_BYTES: usize = 1 + 3 * 32 * 32;

/// The training split's files, read in this order.
pub const CIFAR10_TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];

/// The test split's file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";

/// The files of one split in `dir`, all of which must exist (a partial download is an error,
/// not a smaller data set).
pub(crate) fn cifar10_split_files(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>, DataError> {
    let paths: Vec<PathBuf> = names.iter().map(|name| dir.join(name)).collect();
    let missing: Vec<String> =
        names.iter().zip(&paths).filter(|(_, path)| !path.is_file()).map(|(name, _)| name.to_string()).collect();
    if missing.is_empty() { Ok(paths) } else { Err(DataError::MissingCifar10 { dir: dir.to_owned(), missing }) }
}

/// Reads CIFAR-10 binary files, in the order given, into one set of 3x32x32 images with their
/// labels (0..=9).
///
/// # Errors
/// [`DataError::Io`] for an unreadable file, [`DataError::BadRecords`] for a file that is empty or
/// not a whole number of records (CIFAR-100's files, with two label bytes, are caught here),
/// [`DataError::BadLabel`] for a label above 9.
pub fn load_cifar10(paths: &[PathBuf]) -> Result<ImageSet, DataError> {
    let mut raw_chw = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.clone(), source })?;
        if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR10_RECORD_BYTES) {
            return Err(DataError::BadRecords {
                path: path.clone(),
                found_bytes: bytes.len(),
                record_bytes: CIFAR10_RECORD_BYTES,
                format: "CIFAR-10 (1 label byte, then 3072 bytes of a 32x32 RGB image)",
            });
        }
        for (record, bytes) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
            let label = u32::from(bytes[0]);
            if label > 9 {
                return Err(DataError::BadLabel { path: path.clone(), record, label, max: 9 });
            }
            labels.push(label);
            raw_chw.extend_from_slice(&bytes[1..]);
        }
    }
    Ok(ImageSet::from_raw(3, 32, 32, &raw_chw, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    /// `count` records, record `i` with label `i % 10` and every byte of channel `c` equal to
    /// `10 * i + c`.
    fn records(count: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for i in 0..count {
            bytes.push((i % 10) as u8);
            for channel in 0..3 {
                bytes.extend(std::iter::repeat_n((10 * i + channel) as u8, 1024));
            }
        }
        bytes
    }

    #[test]
    fn records_read_in_file_order_as_chw_with_labels() {
        let dir = TempDir::new("cifar-read");
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        std::fs::write(&a, records(2)).unwrap();
        std::fs::write(&b, &records(3)[2 * CIFAR10_RECORD_BYTES..]).unwrap();
        let set = load_cifar10(&[a, b]).unwrap();
        assert_eq!((set.len(), set.channels, set.height, set.width), (3, 3, 32, 32));
        assert_eq!(set.labels, [0, 1, 2]);
        let image = set.image(2);
        let expected = |raw: u8| f32::from(raw) / 127.5 - 1.0;
        assert_eq!((image[0], image[1024], image[3071]), (expected(20), expected(21), expected(22)));
    }

    #[test]
    fn bad_lengths_labels_and_missing_files_are_errors_naming_the_file() {
        let dir = TempDir::new("cifar-errors");
        let short = dir.path().join("short.bin");
        std::fs::write(&short, &records(1)[..100]).unwrap();
        let error = load_cifar10(std::slice::from_ref(&short)).unwrap_err();
        assert!(error.to_string().contains("short.bin: 100 bytes"), "{error}");
        let mut bad = records(2);
        bad[CIFAR10_RECORD_BYTES] = 42;
        let labelled = dir.path().join("label.bin");
        std::fs::write(&labelled, bad).unwrap();
        let error = load_cifar10(&[labelled]).unwrap_err();
        assert!(error.to_string().contains("label.bin: record 1 has label 42"), "{error}");
        std::fs::write(dir.path().join("data_batch_1.bin"), records(1)).unwrap();
        let error = cifar10_split_files(dir.path(), &CIFAR10_TRAIN_FILES).unwrap_err();
        assert!(error.to_string().contains("data_batch_2.bin, data_batch_3.bin"), "{error}");
    }
}
