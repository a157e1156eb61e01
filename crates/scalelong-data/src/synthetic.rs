//! Small structured images generated from a seed, for tests and smoke runs that must not depend
//! on downloaded data.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ImageSet;

/// Raw (0..=255) background levels: dark, like Fashion-MNIST, but not always exactly black so
/// the model cannot learn a constant background.
const BACKGROUND_LEVELS: std::ops::RangeInclusive<u8> = 0..=24;
/// Raw shape levels: well above the background so every shape is visible.
const SHAPE_LEVELS: std::ops::RangeInclusive<u8> = 80..=255;
const MAX_SHAPES: usize = 3;

/// `count` images of `channels` x `size` x `size`: 1 to 3 axis-aligned rectangles and discs of
/// random levels (one per channel, so grey for 1 channel, colours for 3) on a dark background,
/// later shapes drawn over earlier ones. The label is the number of shapes minus 1 (0, 1 or 2),
/// which a classifier can learn. The same arguments always give the same images.
///
/// # Panics
/// If `channels` or `size` is 0.
pub fn synthetic(count: usize, channels: usize, size: usize, seed: u64) -> ImageSet {
    assert!(channels > 0 && size > 0, "synthetic: channels and size must be at least 1");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let plane_len = size * size;
    let mut raw = Vec::with_capacity(count * channels * plane_len);
    let mut labels = Vec::with_capacity(count);
    // Shapes span between an eighth and a half of the image (at least 1 pixel).
    let min_extent = (size / 8).max(1);
    let max_extent = (size / 2).max(min_extent);
    for _ in 0..count {
        let background = rng.random_range(BACKGROUND_LEVELS);
        let mut image = vec![background; channels * plane_len];
        let shape_count = rng.random_range(1..=MAX_SHAPES);
        for _ in 0..shape_count {
            let levels: Vec<u8> = (0..channels).map(|_| rng.random_range(SHAPE_LEVELS)).collect();
            let is_disc = rng.random_bool(0.5);
            // A rectangle spans rows top..top + height and columns left..left + width; a disc
            // is centred on (top, left) with diameter `height`.
            let height = rng.random_range(min_extent..=max_extent);
            let (top, left) = (rng.random_range(0..size), rng.random_range(0..size));
            let width = rng.random_range(min_extent..=max_extent);
            let covers = |row: usize, column: usize| {
                if is_disc {
                    let radius = (height / 2).max(1) as isize;
                    let (dy, dx) = (row as isize - top as isize, column as isize - left as isize);
                    dy * dy + dx * dx <= radius * radius
                } else {
                    (top..top + height).contains(&row) && (left..left + width).contains(&column)
                }
            };
            for row in 0..size {
                for column in 0..size {
                    if covers(row, column) {
                        for (channel, &level) in levels.iter().enumerate() {
                            image[channel * plane_len + row * size + column] = level;
                        }
                    }
                }
            }
        }
        raw.extend_from_slice(&image);
        labels.push((shape_count - 1) as u32);
    }
    ImageSet::from_raw(channels, size, size, &raw, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_images_other_seed_other_images() {
        let first = synthetic(16, 3, 12, 7);
        assert_eq!(first, synthetic(16, 3, 12, 7));
        assert_ne!(first.pixels, synthetic(16, 3, 12, 8).pixels);
    }

    #[test]
    fn shape_range_and_labels() {
        let set = synthetic(64, 1, 16, 0);
        assert_eq!((set.len(), set.channels, set.height, set.width), (64, 1, 16, 16));
        assert_eq!(set.pixels.len(), 64 * 16 * 16);
        assert!(set.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(set.labels.iter().all(|&label| label < 3));
        // Structured, not blank: every image has a bright shape on a dark background.
        for index in 0..set.len() {
            let image = set.image(index);
            let brightest = image.iter().copied().fold(f32::MIN, f32::max);
            let darkest = image.iter().copied().fold(f32::MAX, f32::min);
            assert!(brightest > -0.4 && darkest < -0.8, "image {index}: {darkest}..{brightest}");
        }
    }
}
