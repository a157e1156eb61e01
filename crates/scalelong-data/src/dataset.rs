//! The in-memory image set and its transforms.

/// The value raw pixel 0 (black) maps to. Padding uses it: Fashion-MNIST's background is black,
/// so padding with it extends the background instead of drawing a grey frame (which padding with
/// 0.0, mid-grey in [-1, 1] space, would do).
pub const BLACK: f32 = -1.0;

/// A set of same-sized images with one label each.
///
/// Invariant (kept by every constructor in this crate; keep it when building one by hand):
/// `pixels.len() == labels.len() * channels * height * width`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// All images, NCHW, each value in [-1, 1] (raw 0 -> -1, raw 255 -> 1).
    pub pixels: Vec<f32>,
    /// One label per image; 0 for every image of an unlabelled source.
    pub labels: Vec<u32>,
}

/// Maps a raw 8-bit pixel value to [-1, 1]: 0 -> -1, 255 -> 1 (both exact in f32).
pub(crate) fn scale_raw_pixel(raw: u8) -> f32 {
    f32::from(raw) / 127.5 - 1.0
}

impl ImageSet {
    /// Builds a set from raw 8-bit pixels in NCHW order, scaling them to [-1, 1].
    pub(crate) fn from_raw(channels: usize, height: usize, width: usize, raw_pixels: &[u8], labels: Vec<u32>) -> Self {
        assert_eq!(raw_pixels.len(), labels.len() * channels * height * width);
        Self { channels, height, width, pixels: raw_pixels.iter().copied().map(scale_raw_pixel).collect(), labels }
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The number of values in one image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `index`, CHW.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn image(&self, index: usize) -> &[f32] {
        let image_len = self.image_len();
        &self.pixels[index * image_len..(index + 1) * image_len]
    }

    /// Pads height and width up to the next multiple of `multiple` with [`BLACK`] (-1.0, what raw
    /// pixel 0 maps to), centred: 28 -> 32 puts 2 rows above, 2 below, 2 columns left, 2 right.
    /// An odd amount of padding puts the extra row at the bottom and the extra column at the
    /// right. Sizes already a multiple are returned unchanged.
    ///
    /// # Panics
    /// If `multiple` is 0.
    #[must_use = "pad_to_multiple returns the padded set"]
    pub fn pad_to_multiple(self, multiple: usize) -> Self {
        assert!(multiple > 0, "pad_to_multiple: the multiple must be at least 1");
        let padded_height = self.height.next_multiple_of(multiple);
        let padded_width = self.width.next_multiple_of(multiple);
        if (padded_height, padded_width) == (self.height, self.width) {
            return self;
        }
        let top = (padded_height - self.height) / 2;
        let left = (padded_width - self.width) / 2;
        let mut pixels = vec![BLACK; self.len() * self.channels * padded_height * padded_width];
        // Every plane (one channel of one image) is copied row by row into the middle of its
        // padded plane; planes keep their order, so NCHW is preserved.
        let planes = self.pixels.chunks_exact(self.height * self.width);
        let padded_planes = pixels.chunks_exact_mut(padded_height * padded_width);
        for (plane, padded_plane) in planes.zip(padded_planes) {
            for (row_index, row) in plane.chunks_exact(self.width).enumerate() {
                let start = (top + row_index) * padded_width + left;
                padded_plane[start..start + self.width].copy_from_slice(row);
            }
        }
        Self { height: padded_height, width: padded_width, pixels, ..self }
    }

    /// Keeps the first `count` images (all of them if the set has fewer). Sources keep their file
    /// order, so this is deterministic; Fashion-MNIST's files are already class-mixed.
    #[must_use = "subset returns the smaller set"]
    pub fn subset(mut self, count: usize) -> Self {
        let kept = count.min(self.len());
        self.pixels.truncate(kept * self.image_len());
        self.labels.truncate(kept);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_pixels_scale_to_minus_one_one() {
        assert_eq!(scale_raw_pixel(0), -1.0);
        assert_eq!(scale_raw_pixel(255), 1.0);
        assert!(scale_raw_pixel(127) < 0.0 && scale_raw_pixel(128) > 0.0);
    }

    fn two_images_3x2() -> ImageSet {
        // Image 0 has values 1..=6, image 1 has 7..=12, row-major, one channel.
        ImageSet {
            channels: 1,
            height: 3,
            width: 2,
            pixels: (1..=12).map(|v| v as f32 / 100.0).collect(),
            labels: vec![4, 5],
        }
    }

    #[test]
    fn pad_28_to_32_is_centred_with_black() {
        let set = ImageSet { channels: 1, height: 28, width: 28, pixels: vec![0.5; 28 * 28], labels: vec![0] }
            .pad_to_multiple(32);
        assert_eq!((set.height, set.width, set.pixels.len()), (32, 32, 32 * 32));
        for row in 0..32 {
            for column in 0..32 {
                let inside = (2..30).contains(&row) && (2..30).contains(&column);
                let expected = if inside { 0.5 } else { BLACK };
                assert_eq!(set.pixels[row * 32 + column], expected, "at ({row}, {column})");
            }
        }
    }

    #[test]
    fn odd_padding_puts_the_extra_at_bottom_right_and_keeps_every_image() {
        let set = two_images_3x2().pad_to_multiple(4);
        assert_eq!((set.height, set.width), (4, 4));
        let b = BLACK;
        #[rustfmt::skip]
        let expected_first = [
            b, 0.01, 0.02, b,
            b, 0.03, 0.04, b,
            b, 0.05, 0.06, b,
            b, b, b, b,
        ];
        assert_eq!(set.image(0), expected_first);
        assert_eq!(set.image(1)[1..3], [0.07, 0.08]);
        assert_eq!(set.labels, [4, 5]);
    }

    #[test]
    fn pad_of_a_multiple_is_unchanged() {
        assert_eq!(two_images_3x2().pad_to_multiple(1), two_images_3x2());
    }

    #[test]
    fn subset_keeps_the_first_images() {
        let set = two_images_3x2().subset(1);
        assert_eq!(set.len(), 1);
        assert_eq!(set.pixels, two_images_3x2().image(0));
        assert_eq!(set.labels, [4]);
        assert_eq!(two_images_3x2().subset(10), two_images_3x2());
    }

    #[test]
    fn image_returns_one_chw_image() {
        let set = ImageSet { channels: 2, height: 3, width: 1, ..two_images_3x2() };
        assert_eq!(set.image_len(), 6);
        assert_eq!(set.image(1), &set.pixels[6..12]);
    }
}
