//! A folder of PNG images as an [`ImageSet`]: flat (unlabelled) or one subfolder per class.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use png::{ColorType, Transformations};

use crate::{DataError, ImageSet};

/// One decoded image, 8 bits a sample, alpha dropped, samples interleaved (HWC).
struct DecodedPng {
    width: usize,
    height: usize,
    /// 1 (grey) or 3 (RGB).
    channels: usize,
    interleaved: Vec<u8>,
}

fn decode_png(path: &Path) -> Result<DecodedPng, DataError> {
    let png_error = |source| DataError::Png { path: path.to_owned(), source };
    let file = File::open(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    // 16-bit samples become 8-bit, palettes and low bit depths expand to 8-bit grey or RGB(A),
    // so only the four colour types below remain.
    decoder.set_transformations(Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(png_error)?;
    let buffer_len = reader.output_buffer_size().ok_or_else(|| png_error(png::DecodingError::LimitsExceeded))?;
    let mut buffer = vec![0; buffer_len];
    let frame = reader.next_frame(&mut buffer).map_err(png_error)?;
    buffer.truncate(frame.buffer_size());
    let (samples_per_pixel, channels) = match frame.color_type {
        ColorType::Grayscale => (1, 1),
        ColorType::GrayscaleAlpha => (2, 1),
        ColorType::Rgb => (3, 3),
        ColorType::Rgba => (4, 3),
        ColorType::Indexed => unreachable!("Transformations::EXPAND turns palettes into RGB(A)"),
    };
    let interleaved = if samples_per_pixel == channels {
        buffer
    } else {
        buffer.chunks_exact(samples_per_pixel).flat_map(|pixel| &pixel[..channels]).copied().collect()
    };
    Ok(DecodedPng { width: frame.width as usize, height: frame.height as usize, channels, interleaved })
}

/// Appends `image` to `raw_chw` as CHW with `channels` channels: grey is replicated into RGB,
/// RGB becomes grey by ITU-R BT.601 luma (the weights most grey conversions use).
fn append_as_chw(image: &DecodedPng, channels: usize, raw_chw: &mut Vec<u8>) {
    let pixels = image.interleaved.chunks_exact(image.channels);
    match (image.channels, channels) {
        (1, _) => {
            for _ in 0..channels {
                raw_chw.extend_from_slice(&image.interleaved);
            }
        }
        (3, 3) => {
            for channel in 0..3 {
                raw_chw.extend(pixels.clone().map(|pixel| pixel[channel]));
            }
        }
        (3, 1) => raw_chw.extend(pixels.map(|pixel| {
            let luma = 0.299 * f32::from(pixel[0]) + 0.587 * f32::from(pixel[1]) + 0.114 * f32::from(pixel[2]);
            luma.round() as u8
        })),
        _ => unreachable!("decode_png gives 1 or 3 channels and callers ask for 1 or 3"),
    }
}

/// The `*.png` files of `dir` (extension matched case-insensitively), sorted by file name so the
/// image order, and with it every seeded run, is the same on every machine.
fn png_paths(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io_error = |source| DataError::Io { path: dir.to_owned(), source };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        let is_png = path.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(paths)
}

/// The class subfolders of `dir`, sorted by name (hidden ones skipped): label `i` is the `i`-th.
/// Empty when `dir` holds PNGs itself (a flat, unlabelled folder).
pub fn png_class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    if !png_paths(dir)?.is_empty() {
        return Ok(Vec::new());
    }
    Ok(class_folders(dir)?.into_iter().map(|(name, _)| name).collect())
}

fn class_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let io_error = |source| DataError::Io { path: dir.to_owned(), source };
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() && !name.starts_with('.') {
            folders.push((name, path));
        }
    }
    folders.sort();
    Ok(folders)
}

/// Loads the PNGs of `dir` into an [`ImageSet`], in one of two layouts:
///
/// - flat: every `*.png` in `dir` (sorted by name), every label 0;
/// - class folders (`dir` holds no PNG itself): `dir/<class>/*.png`, the classes sorted by name
///   and labelled 0, 1, ... in that order ([`png_class_names`]), as torchvision's `ImageFolder`
///   reads CIFAR-10 or CelebA exported as images. Every class folder must hold a PNG.
///
/// Any bit depth and colour type reads; alpha is dropped. With `channels` `None`, grey images
/// stay 1 channel, colour images 3, and all images must agree. With `Some(1)` or `Some(3)`,
/// every image is converted to that many channels (grey replicated, colour to BT.601 luma).
///
/// # Errors
/// [`DataError::UnsupportedChannels`] for a `channels` other than 1 or 3,
/// [`DataError::NoImages`] for a folder (or class folder) without PNGs, [`DataError::Png`] for an
/// undecodable file, [`DataError::SizeMismatch`] / [`DataError::ChannelMismatch`] naming the first
/// file that differs from the first image.
pub fn load_png_folder(dir: &Path, channels: Option<usize>) -> Result<ImageSet, DataError> {
    if let Some(channels) = channels
        && channels != 1
        && channels != 3
    {
        return Err(DataError::UnsupportedChannels { channels });
    }
    let mut files: Vec<(PathBuf, u32)> = png_paths(dir)?.into_iter().map(|path| (path, 0)).collect();
    if files.is_empty() {
        for (label, (_, class_dir)) in class_folders(dir)?.into_iter().enumerate() {
            let paths = png_paths(&class_dir)?;
            if paths.is_empty() {
                return Err(DataError::NoImages { dir: class_dir });
            }
            files.extend(paths.into_iter().map(|path| (path, label as u32)));
        }
    }
    let Some((first_path, _)) = files.first() else {
        return Err(DataError::NoImages { dir: dir.to_owned() });
    };
    let first = decode_png(first_path)?;
    let requested_channels = channels;
    let channels = requested_channels.unwrap_or(first.channels);
    let mut raw_chw = Vec::with_capacity(files.len() * channels * first.height * first.width);
    append_as_chw(&first, channels, &mut raw_chw);
    for (path, _) in &files[1..] {
        let image = decode_png(path)?;
        if (image.width, image.height) != (first.width, first.height) {
            return Err(DataError::SizeMismatch {
                path: path.clone(),
                found_width: image.width,
                found_height: image.height,
                first_path: first_path.clone(),
                expected_width: first.width,
                expected_height: first.height,
            });
        }
        if requested_channels.is_none() && image.channels != first.channels {
            return Err(DataError::ChannelMismatch {
                path: path.clone(),
                found: image.channels,
                first_path: first_path.clone(),
                expected: first.channels,
            });
        }
        append_as_chw(&image, channels, &mut raw_chw);
    }
    let labels = files.iter().map(|(_, label)| *label).collect();
    Ok(ImageSet::from_raw(channels, first.height, first.width, &raw_chw, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::scale_raw_pixel;
    use crate::test_support::TempDir;

    fn scaled(raw: &[u8]) -> Vec<f32> {
        raw.iter().copied().map(scale_raw_pixel).collect()
    }

    fn write_png(path: &Path, width: u32, height: u32, color: ColorType, data: &[u8]) {
        write_png_with(path, width, height, color, data, |_| {});
    }

    /// Writes a PNG after `configure` has adjusted the encoder (bit depth, palette).
    fn write_png_with(
        path: &Path,
        width: u32,
        height: u32,
        color: ColorType,
        data: &[u8],
        configure: impl FnOnce(&mut png::Encoder<std::io::BufWriter<File>>),
    ) {
        let file = std::io::BufWriter::new(File::create(path).unwrap());
        let mut encoder = png::Encoder::new(file, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        configure(&mut encoder);
        encoder.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn sixteen_bit_and_palette_images_read_as_8_bit() {
        let dir = TempDir::new("png-depths");
        // 16-bit grey, big-endian samples: 0x0000 and 0xffff.
        write_png_with(&dir.path().join("a.png"), 2, 1, ColorType::Grayscale, &[0, 0, 255, 255], |e| {
            e.set_depth(png::BitDepth::Sixteen)
        });
        // Palette of black and white, pixels: white, black.
        write_png_with(&dir.path().join("b.png"), 2, 1, ColorType::Indexed, &[1, 0], |e| {
            e.set_palette(vec![0, 0, 0, 255, 255, 255])
        });
        let set = load_png_folder(dir.path(), Some(1)).unwrap();
        assert_eq!(set.pixels, [-1.0, 1.0, 1.0, -1.0]);
    }

    #[test]
    fn grey_folder_round_trip_in_name_order_with_scaling() {
        let dir = TempDir::new("png-grey");
        // Written out of order; a non-PNG file is ignored.
        write_png(&dir.path().join("b.png"), 2, 1, ColorType::Grayscale, &[255, 0]);
        write_png(&dir.path().join("a.png"), 2, 1, ColorType::Grayscale, &[0, 255]);
        write_png(&dir.path().join("c.PNG"), 2, 1, ColorType::GrayscaleAlpha, &[51, 9, 204, 9]);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let set = load_png_folder(dir.path(), None).unwrap();
        assert_eq!((set.len(), set.channels, set.height, set.width), (3, 1, 1, 2));
        assert_eq!(set.pixels, scaled(&[0, 255, 255, 0, 51, 204]));
        assert_eq!(set.pixels[..4], [-1.0, 1.0, 1.0, -1.0]);
        assert_eq!(set.labels, [0, 0, 0]);
    }

    #[test]
    fn rgba_drops_alpha_and_becomes_chw() {
        let dir = TempDir::new("png-rgba");
        // Two pixels: (0, 255, 51) and (255, 0, 204), alpha ignored.
        let rgba = [0, 255, 51, 7, 255, 0, 204, 7];
        write_png(&dir.path().join("x.png"), 2, 1, ColorType::Rgba, &rgba);
        let set = load_png_folder(dir.path(), None).unwrap();
        assert_eq!(set.channels, 3);
        assert_eq!(set.pixels, scaled(&[0, 255, 255, 0, 51, 204]));
    }

    /// Grey, colour, grey: conversion must work whichever kind comes first.
    fn mixed_folder() -> TempDir {
        let dir = TempDir::new("png-mixed");
        write_png(&dir.path().join("1.png"), 1, 1, ColorType::Grayscale, &[255]);
        write_png(&dir.path().join("2.png"), 1, 1, ColorType::Rgb, &[255, 255, 255]);
        write_png(&dir.path().join("3.png"), 1, 1, ColorType::Grayscale, &[0]);
        dir
    }

    #[test]
    fn mixed_channels_without_a_count_is_an_error_naming_the_file() {
        let dir = mixed_folder();
        let error = load_png_folder(dir.path(), None).unwrap_err();
        assert!(matches!(error, DataError::ChannelMismatch { found: 3, expected: 1, .. }), "{error:?}");
        assert!(error.to_string().contains("2.png"), "{error}");
    }

    #[test]
    fn mixed_channels_convert_to_the_requested_count() {
        let dir = mixed_folder();
        let grey = load_png_folder(dir.path(), Some(1)).unwrap();
        assert_eq!((grey.channels, grey.pixels.as_slice()), (1, [1.0, 1.0, -1.0].as_slice()));
        let rgb = load_png_folder(dir.path(), Some(3)).unwrap();
        let expected_rgb = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0];
        assert_eq!((rgb.channels, rgb.pixels.as_slice()), (3, expected_rgb.as_slice()));
        std::fs::remove_file(dir.path().join("1.png")).unwrap();
        let colour_first = load_png_folder(dir.path(), Some(3)).unwrap();
        assert_eq!(colour_first.pixels, [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn size_mismatch_names_the_first_differing_file() {
        let dir = TempDir::new("png-size");
        write_png(&dir.path().join("a.png"), 2, 2, ColorType::Grayscale, &[0; 4]);
        write_png(&dir.path().join("b.png"), 2, 2, ColorType::Grayscale, &[0; 4]);
        write_png(&dir.path().join("c.png"), 3, 2, ColorType::Grayscale, &[0; 6]);
        write_png(&dir.path().join("d.png"), 1, 1, ColorType::Grayscale, &[0]);
        let error = load_png_folder(dir.path(), None).unwrap_err();
        assert!(matches!(error, DataError::SizeMismatch { found_width: 3, .. }), "{error:?}");
        assert!(error.to_string().contains("c.png: image is 3x2, expected 2x2"), "{error}");
    }

    #[test]
    fn class_folders_are_labelled_in_name_order_and_an_empty_class_is_an_error() {
        let dir = TempDir::new("png-classes");
        for (class, value) in [("dog", 255u8), ("cat", 0)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            write_png(&dir.path().join(class).join("1.png"), 1, 1, ColorType::Rgb, &[value; 3]);
            write_png(&dir.path().join(class).join("2.png"), 1, 1, ColorType::Grayscale, &[value]);
        }
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        assert_eq!(png_class_names(dir.path()).unwrap(), ["cat", "dog"]);
        let set = load_png_folder(dir.path(), Some(3)).unwrap();
        assert_eq!((set.len(), set.channels), (4, 3));
        assert_eq!(set.labels, [0, 0, 1, 1], "cat before dog");
        assert_eq!(set.image(0), [-1.0; 3]);
        assert_eq!(set.image(3), [1.0; 3]);
        std::fs::create_dir(dir.path().join("emu")).unwrap();
        let error = load_png_folder(dir.path(), Some(3)).unwrap_err();
        assert!(matches!(&error, DataError::NoImages { dir } if dir.ends_with("emu")), "{error:?}");
    }

    #[test]
    fn empty_folder_bad_file_and_bad_channel_count_are_errors() {
        let dir = TempDir::new("png-errors");
        let error = load_png_folder(dir.path(), None).unwrap_err();
        assert!(matches!(error, DataError::NoImages { .. }), "{error:?}");
        std::fs::write(dir.path().join("broken.png"), "not a png").unwrap();
        let error = load_png_folder(dir.path(), None).unwrap_err();
        assert!(matches!(error, DataError::Png { .. }), "{error:?}");
        assert!(error.to_string().contains("broken.png"), "{error}");
        let error = load_png_folder(dir.path(), Some(2)).unwrap_err();
        assert!(matches!(error, DataError::UnsupportedChannels { channels: 2 }), "{error:?}");
    }
}
