//! The MNIST IDX format: a big-endian header (magic `0x0000TTRR`, TT the data type code, RR the
//! number of dimensions, then one u32 per dimension) followed by the raw values. Only unsigned
//! bytes (TT = 0x08) are read: images `[n, rows, cols]` and labels `[n]`.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::{DataError, ImageSet};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UNSIGNED_BYTE: u8 = 0x08;

/// What one IDX file must hold.
#[derive(Clone, Copy)]
enum IdxKind {
    Images,
    Labels,
}

impl IdxKind {
    fn rank(self) -> usize {
        match self {
            IdxKind::Images => 3,
            IdxKind::Labels => 1,
        }
    }

    fn magic(self) -> u32 {
        (u32::from(UNSIGNED_BYTE) << 8) | self.rank() as u32
    }

    fn description(self) -> &'static str {
        match self {
            IdxKind::Images => "IDX u8 images [n, rows, cols]",
            IdxKind::Labels => "IDX u8 labels [n]",
        }
    }
}

/// A parsed IDX file: its dimensions and the bytes after the header, exactly as many as the
/// dimensions say.
struct IdxArray {
    dims: Vec<usize>,
    values: Vec<u8>,
}

/// Reads the whole file, gunzipping it if it starts with the gzip magic bytes (the name does not
/// matter: a renamed file still reads).
fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut decompressed = Vec::new();
    // MultiGzDecoder, not GzDecoder: the latter stops after the first gzip member and would
    // silently ignore whatever follows it.
    MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut decompressed)
        .map_err(|source| DataError::Gzip { path: path.to_owned(), source })?;
    Ok(decompressed)
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
}

fn parse_idx(path: &Path, bytes: &[u8], kind: IdxKind) -> Result<IdxArray, DataError> {
    let header_len = 4 + 4 * kind.rank();
    let Some((header, payload)) = bytes.split_at_checked(header_len) else {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            needed: format!("an {} header", kind.description()),
            expected_bytes: header_len as u128,
            found_bytes: bytes.len(),
        });
    };
    let words: Vec<u32> =
        header.chunks_exact(4).map(|word| u32::from_be_bytes(word.try_into().expect("chunks of 4"))).collect();
    let magic = words[0];
    // The data type byte is checked apart from the rest so that, say, an IDX file of floats
    // is reported as such and not as "not IDX at all".
    let [zero_high, zero_low, dtype, rank] = magic.to_be_bytes();
    if (zero_high, zero_low, usize::from(rank)) != (0, 0, kind.rank()) {
        return Err(DataError::BadMagic {
            path: path.to_owned(),
            found: magic,
            expected: kind.magic(),
            expected_kind: kind.description(),
        });
    }
    if dtype != UNSIGNED_BYTE {
        return Err(DataError::BadDtype { path: path.to_owned(), found: dtype });
    }
    let dims: Vec<usize> = words[1..].iter().map(|&dim| dim as usize).collect();
    if dims.contains(&0) {
        return Err(DataError::ZeroDimension { path: path.to_owned(), dims: dims_text(&dims) });
    }
    // u128: three u32 dimensions can overflow u64.
    let expected_bytes: u128 = dims.iter().map(|&dim| dim as u128).product();
    if (payload.len() as u128) < expected_bytes {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            needed: format!("header says {}", dims_text(&dims)),
            expected_bytes,
            found_bytes: payload.len(),
        });
    }
    let expected_bytes = expected_bytes as usize; // fits: at most payload.len()
    if payload.len() > expected_bytes {
        return Err(DataError::TrailingBytes {
            path: path.to_owned(),
            dims: dims_text(&dims),
            expected_bytes,
            found_bytes: payload.len(),
        });
    }
    Ok(IdxArray { dims, values: payload.to_vec() })
}

fn read_idx(path: &Path, kind: IdxKind) -> Result<IdxArray, DataError> {
    parse_idx(path, &read_maybe_gzipped(path)?, kind)
}

/// Loads an IDX images file (`[n, rows, cols]`, u8) and, if given, its IDX labels file (`[n]`,
/// u8) into a one-channel [`ImageSet`]. Without a labels file every label is 0. Either file may
/// be gzipped.
///
/// # Errors
/// [`DataError`] naming the file for anything unreadable or malformed: wrong magic number, data
/// type other than unsigned byte, a zero dimension, fewer or more payload bytes than the header
/// says, or a labels count different from the images count.
pub fn load_idx(images_path: &Path, labels_path: Option<&Path>) -> Result<ImageSet, DataError> {
    let images = read_idx(images_path, IdxKind::Images)?;
    let (count, height, width) = (images.dims[0], images.dims[1], images.dims[2]);
    let labels = match labels_path {
        None => vec![0; count],
        Some(labels_path) => {
            let labels = read_idx(labels_path, IdxKind::Labels)?;
            if labels.values.len() != count {
                return Err(DataError::CountMismatch {
                    images_path: images_path.to_owned(),
                    images_count: count,
                    labels_path: labels_path.to_owned(),
                    labels_count: labels.values.len(),
                });
            }
            labels.values.into_iter().map(u32::from).collect()
        }
    };
    Ok(ImageSet::from_raw(1, height, width, &images.values, labels))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;
    use crate::test_support::TempDir;

    /// Writes `header_words` (big-endian) then `payload`, gzipped or not.
    pub(crate) fn write_raw_idx(path: &Path, header_words: &[u32], payload: &[u8], gzip: bool) {
        let mut bytes: Vec<u8> = header_words.iter().flat_map(|w| w.to_be_bytes()).collect();
        bytes.extend_from_slice(payload);
        if gzip {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(&bytes).unwrap();
            bytes = encoder.finish().unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// Writes a valid images file and a valid labels file for `count` images of 3x2 pixels,
    /// pixel values `0, 1, 2, ...` (wrapping at 256) and labels `0, 1, 2, ...`.
    pub(crate) fn write_valid_pair(dir: &Path, count: u32, gzip: bool) -> (PathBuf, PathBuf) {
        let images_path = dir.join("images");
        let labels_path = dir.join("labels");
        let pixels: Vec<u8> = (0..count * 6).map(|v| v as u8).collect();
        let labels: Vec<u8> = (0..count).map(|v| v as u8).collect();
        write_raw_idx(&images_path, &[0x803, count, 3, 2], &pixels, gzip);
        write_raw_idx(&labels_path, &[0x801, count], &labels, gzip);
        (images_path, labels_path)
    }

    fn read_back_matches_what_was_written(gzip: bool) {
        let dir = TempDir::new("idx-round-trip");
        let (images_path, labels_path) = write_valid_pair(dir.path(), 4, gzip);
        let set = load_idx(&images_path, Some(&labels_path)).unwrap();
        assert_eq!((set.len(), set.channels, set.height, set.width), (4, 1, 3, 2));
        let expected: Vec<f32> = (0..24u8).map(crate::dataset::scale_raw_pixel).collect();
        assert_eq!(set.pixels, expected);
        assert_eq!(set.labels, [0, 1, 2, 3]);
    }

    #[test]
    fn plain_round_trip() {
        read_back_matches_what_was_written(false);
    }

    #[test]
    fn gzipped_round_trip() {
        read_back_matches_what_was_written(true);
    }

    #[test]
    fn gzip_is_detected_by_content_not_name() {
        let dir = TempDir::new("idx-gzip-detect");
        let (images_path, _) = write_valid_pair(dir.path(), 2, true);
        let renamed = dir.path().join("images.plain-looking-name");
        std::fs::rename(&images_path, &renamed).unwrap();
        assert_eq!(load_idx(&renamed, None).unwrap().len(), 2);
    }

    #[test]
    fn without_labels_every_label_is_zero() {
        let dir = TempDir::new("idx-no-labels");
        let (images_path, _) = write_valid_pair(dir.path(), 3, false);
        assert_eq!(load_idx(&images_path, None).unwrap().labels, [0, 0, 0]);
    }

    /// Loads a malformed images file (no labels) and returns the error and its message.
    fn images_error(header_words: &[u32], payload: &[u8], gzip: bool) -> (DataError, String) {
        let dir = TempDir::new("idx-malformed");
        let path = dir.path().join("bad-images");
        write_raw_idx(&path, header_words, payload, gzip);
        let error = load_idx(&path, None).expect_err("malformed input must be an error");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "message does not name the file: {message}");
        (error, message)
    }

    #[test]
    fn wrong_magic_is_bad_magic() {
        let (error, message) = images_error(&[0x0102_0803, 1, 1, 1], &[0], false);
        assert!(matches!(error, DataError::BadMagic { found: 0x0102_0803, .. }), "{error:?}");
        assert!(message.contains("expected 0x00000803"), "{message}");
    }

    #[test]
    fn labels_file_given_as_images_is_bad_magic() {
        let (error, _) = images_error(&[0x801, 1, 1, 1], &[0], false);
        assert!(matches!(error, DataError::BadMagic { found: 0x801, expected: 0x803, .. }));
    }

    #[test]
    fn wrong_dtype_is_bad_dtype() {
        let (error, message) = images_error(&[0x0d03, 1, 1, 1], &[0; 4], false);
        assert!(matches!(error, DataError::BadDtype { found: 0x0d, .. }), "{error:?}");
        assert!(message.contains("expected 0x08"), "{message}");
    }

    #[test]
    fn short_payload_is_truncated_with_the_sizes() {
        let (error, message) = images_error(&[0x803, 60000, 28, 28], &[0; 1234], true);
        assert!(matches!(error, DataError::Truncated { .. }), "{error:?}");
        assert!(message.ends_with("truncated: header says 60000x28x28 = 47040000 bytes, found 1234"), "{message}");
    }

    #[test]
    fn short_header_is_truncated() {
        let dir = TempDir::new("idx-short-header");
        let path = dir.path().join("bad-images");
        std::fs::write(&path, [0, 0, 8, 3, 0, 0]).unwrap();
        let error = load_idx(&path, None).unwrap_err();
        assert!(matches!(error, DataError::Truncated { expected_bytes: 16, found_bytes: 6, .. }), "{error:?}");
    }

    #[test]
    fn huge_dims_are_truncated_not_an_overflow_or_allocation() {
        let (error, _) = images_error(&[0x803, u32::MAX, u32::MAX, u32::MAX], &[0; 8], false);
        assert!(matches!(error, DataError::Truncated { .. }), "{error:?}");
    }

    #[test]
    fn extra_payload_is_trailing_bytes() {
        let (error, message) = images_error(&[0x803, 1, 2, 2], &[0; 5], false);
        assert!(matches!(error, DataError::TrailingBytes { expected_bytes: 4, found_bytes: 5, .. }), "{error:?}");
        assert!(message.contains("1x2x2 = 4 bytes, found 5"), "{message}");
    }

    #[test]
    fn zero_dimension_is_an_error() {
        let (error, message) = images_error(&[0x803, 0, 28, 28], &[], false);
        assert!(matches!(error, DataError::ZeroDimension { .. }), "{error:?}");
        assert!(message.contains("0x28x28"), "{message}");
    }

    #[test]
    fn corrupt_gzip_is_a_gzip_error() {
        let dir = TempDir::new("idx-corrupt-gzip");
        let path = dir.path().join("bad-images.gz");
        std::fs::write(&path, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let error = load_idx(&path, None).unwrap_err();
        assert!(matches!(error, DataError::Gzip { .. }), "{error:?}");
        assert!(error.to_string().contains("bad-images.gz"));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let path = Path::new("/nonexistent/scalelong/images");
        let error = load_idx(path, None).unwrap_err();
        assert!(matches!(error, DataError::Io { .. }), "{error:?}");
        assert!(error.to_string().starts_with("/nonexistent/scalelong/images: "));
    }

    #[test]
    fn label_count_mismatch_names_both_files() {
        let dir = TempDir::new("idx-count-mismatch");
        let (images_path, _) = write_valid_pair(dir.path(), 3, false);
        let labels_path = dir.path().join("two-labels");
        write_raw_idx(&labels_path, &[0x801, 2], &[0, 1], false);
        let error = load_idx(&images_path, Some(&labels_path)).unwrap_err();
        assert!(matches!(error, DataError::CountMismatch { images_count: 3, labels_count: 2, .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&images_path.display().to_string()), "{message}");
        assert!(message.contains(&labels_path.display().to_string()), "{message}");
    }

    #[test]
    fn malformed_labels_file_is_an_error_naming_it() {
        let dir = TempDir::new("idx-bad-labels");
        let (images_path, labels_path) = write_valid_pair(dir.path(), 2, false);
        write_raw_idx(&labels_path, &[0x801, 2], &[0, 1, 2], false);
        let error = load_idx(&images_path, Some(&labels_path)).unwrap_err();
        assert!(matches!(error, DataError::TrailingBytes { .. }), "{error:?}");
        assert!(error.to_string().contains(&labels_path.display().to_string()));
    }
}
