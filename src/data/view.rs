//! Borrowed raw pixel buffers (camera frames, other libraries' images) for the detector:
//! [`ImageView`] checks a buffer once, up front, so nothing later indexes past its end.

#![warn(missing_docs)]

use crate::data::image::RgbImage;
use std::fmt;

/// The most pixels a view may have (2^28, e.g. 16384 x 16384): beyond it a size is almost
/// surely a corrupt header, and converting it would allocate gigabytes.
pub const MAX_VIEW_PIXELS: usize = 1 << 28;

/// The layout of one pixel in an [`ImageView`]: 8 bits per channel, channels interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Red, green, blue.
    Rgb8,
    /// Blue, green, red (OpenCV's order).
    Bgr8,
    /// One gray level, repeated into R, G and B.
    Gray8,
    /// Red, green, blue, alpha; alpha is dropped (as when decoding files).
    Rgba8,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Gray8 => 1,
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 => 4,
        }
    }
}

/// Why a buffer is not a valid [`ImageView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageViewError {
    /// Width or height is 0.
    Empty {
        /// The width given.
        width: usize,
        /// The height given.
        height: usize,
    },
    /// More than [`MAX_VIEW_PIXELS`] pixels (or a size that overflows).
    TooLarge {
        /// The width given.
        width: usize,
        /// The height given.
        height: usize,
    },
    /// A row's stride is shorter than its pixels (`width * channels` bytes).
    StrideTooSmall {
        /// The stride given.
        stride: usize,
        /// The bytes of one row's pixels.
        min: usize,
    },
    /// The buffer ends before the last row does.
    BufferTooShort {
        /// The buffer's length.
        len: usize,
        /// The bytes its rows need.
        needed: usize,
    },
}

impl fmt::Display for ImageViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageViewError::Empty { width, height } => {
                write!(f, "image view has no pixels ({width}x{height})")
            }
            ImageViewError::TooLarge { width, height } => write!(
                f,
                "image view {width}x{height} is larger than {MAX_VIEW_PIXELS} pixels"
            ),
            ImageViewError::StrideTooSmall { stride, min } => write!(
                f,
                "image view stride {stride} is smaller than one row of pixels ({min} bytes)"
            ),
            ImageViewError::BufferTooShort { len, needed } => write!(
                f,
                "image view buffer has {len} bytes, its rows need {needed}"
            ),
        }
    }
}

impl std::error::Error for ImageViewError {}

impl From<ImageViewError> for crate::error::Error {
    fn from(e: ImageViewError) -> Self {
        crate::error::Error::bad_image(crate::error::ImageOrigin::Memory, e.to_string())
    }
}

/// A checked, borrowed 8-bit image: `height` rows of `width` pixels in `format`, row `y`
/// starting at byte `y * stride` of `data` (rows may be padded: `stride >= width *
/// channels`). Only [`ImageView::new`] makes one, so every view is in bounds.
#[derive(Clone, Copy, Debug)]
pub struct ImageView<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
}

impl<'a> ImageView<'a> {
    /// Checks that `data` holds `height` rows of `stride` bytes (the last row needs only its
    /// `width * channels` pixel bytes, as padding after it is often absent) and returns the
    /// view, or says what is wrong. Never panics.
    pub fn new(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        format: PixelFormat,
    ) -> Result<ImageView<'a>, ImageViewError> {
        if width == 0 || height == 0 {
            return Err(ImageViewError::Empty { width, height });
        }
        match width.checked_mul(height) {
            Some(n) if n <= MAX_VIEW_PIXELS => {}
            _ => return Err(ImageViewError::TooLarge { width, height }),
        }
        // Cannot overflow: width * height * 4 <= 2^30.
        let row = width * format.channels();
        if stride < row {
            return Err(ImageViewError::StrideTooSmall { stride, min: row });
        }
        let needed = (height - 1)
            .checked_mul(stride)
            .and_then(|n| n.checked_add(row))
            .ok_or(ImageViewError::TooLarge { width, height })?;
        if data.len() < needed {
            return Err(ImageViewError::BufferTooShort {
                len: data.len(),
                needed,
            });
        }
        Ok(ImageView {
            data,
            width,
            height,
            stride,
            format,
        })
    }

    /// A tightly packed view (`stride = width * channels`).
    pub fn packed(
        data: &'a [u8],
        width: usize,
        height: usize,
        format: PixelFormat,
    ) -> Result<ImageView<'a>, ImageViewError> {
        let stride = width.saturating_mul(format.channels());
        ImageView::new(data, width, height, stride, format)
    }

    /// Pixels per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Bytes from the start of one row to the next.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The pixel layout.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The pixels as the detector's 8-bit RGB image (BGR swapped, gray repeated, alpha
    /// dropped).
    pub fn to_rgb(&self) -> RgbImage {
        let row = self.width * self.format.channels();
        let mut pixels = Vec::with_capacity(self.width * self.height * 3);
        for y in 0..self.height {
            // In bounds: `new` checked (height - 1) * stride + row <= data.len().
            let r = &self.data[y * self.stride..y * self.stride + row];
            match self.format {
                PixelFormat::Rgb8 => pixels.extend_from_slice(r),
                PixelFormat::Bgr8 => r.chunks_exact(3).for_each(|p| {
                    pixels.extend([p[2], p[1], p[0]]);
                }),
                PixelFormat::Gray8 => r.iter().for_each(|&g| pixels.extend([g, g, g])),
                PixelFormat::Rgba8 => r.chunks_exact(4).for_each(|p| {
                    pixels.extend_from_slice(&p[..3]);
                }),
            }
        }
        RgbImage {
            width: self.width,
            height: self.height,
            pixels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_convert_to_the_same_rgb() {
        let rgb = [1u8, 2, 3, 4, 5, 6];
        let bgr = [3u8, 2, 1, 6, 5, 4];
        let rgba = [1u8, 2, 3, 9, 4, 5, 6, 9];
        let a = ImageView::packed(&rgb, 2, 1, PixelFormat::Rgb8).unwrap();
        let b = ImageView::packed(&bgr, 2, 1, PixelFormat::Bgr8).unwrap();
        let c = ImageView::packed(&rgba, 2, 1, PixelFormat::Rgba8).unwrap();
        assert_eq!(a.to_rgb().pixels, rgb);
        assert_eq!(b.to_rgb().pixels, rgb);
        assert_eq!(c.to_rgb().pixels, rgb);
        let g = ImageView::packed(&[7, 8], 1, 2, PixelFormat::Gray8).unwrap();
        assert_eq!(g.to_rgb().pixels, [7, 7, 7, 8, 8, 8]);
    }

    #[test]
    fn padded_rows_and_a_short_last_row_are_read_right() {
        // 2x2 RGB with 2 bytes of padding per row, none after the last.
        let data = [1u8, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12];
        let v = ImageView::new(&data, 2, 2, 8, PixelFormat::Rgb8).unwrap();
        assert_eq!(v.to_rgb().pixels, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn malformed_views_are_errors() {
        let d = [0u8; 12];
        use ImageViewError::*;
        let err = |w, h, s, f| ImageView::new(&d, w, h, s, f).unwrap_err();
        assert!(matches!(err(0, 2, 6, PixelFormat::Rgb8), Empty { .. }));
        assert!(matches!(err(2, 0, 6, PixelFormat::Rgb8), Empty { .. }));
        assert!(matches!(
            err(2, 2, 5, PixelFormat::Rgb8),
            StrideTooSmall { .. }
        ));
        assert!(matches!(
            err(2, 3, 6, PixelFormat::Rgb8),
            BufferTooShort { .. }
        ));
        assert!(matches!(
            err(2, 2, 6, PixelFormat::Rgba8),
            StrideTooSmall { .. }
        ));
        assert!(matches!(
            err(1 << 20, 1 << 20, 1 << 22, PixelFormat::Gray8),
            TooLarge { .. }
        ));
        assert!(matches!(
            err(usize::MAX, 2, usize::MAX, PixelFormat::Gray8),
            TooLarge { .. }
        ));
        assert!(matches!(
            err(4, 2, usize::MAX, PixelFormat::Gray8),
            TooLarge { .. }
        ));
        assert!(ImageView::packed(&d, usize::MAX, 1, PixelFormat::Rgba8).is_err());
    }
}
