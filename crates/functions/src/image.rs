//! `image`: an image-processing pipeline, as FunctionBench's `image_processing` does.
//!
//! FunctionBench's image_processing loads a photo with PIL and applies flip, rotate,
//! filter, grayscale and resize, each producing a new image. Here a 2560×1920 RGB "photo"
//! (gradients, shapes and noise) is built at init; an invocation crops a band of it (input 0
//! rows `0..1280`, input 1 rows `640..1920`), upscales it by 3/2 with bilinear
//! interpolation, blurs it with a separable 5-tap Gaussian, rotates it by 90°, and converts
//! it to grayscale. Every stage allocates its output image fresh and the previous one is
//! freed, as PIL does.
//!
//! Memory behaviour: allocation-heavy. Per invocation it reads a 9.4 MiB band of the
//! 14 MiB source image and walks about 57 % of a 24 MiB runtime heap, and it allocates
//! four fresh 21 MiB RGB images and one 7 MiB grayscale one, about 91 MiB of fresh memory
//! (at most about 63 MiB live at once). About 115 MiB touched per invocation (estimate),
//! most of it fresh memory.

use alloc::vec;
use alloc::vec::Vec;

use crate::runtime::Runtime;
use crate::synth::Rng;
use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "image",
    description: "crop, bilinear resize, Gaussian blur, rotate and grayscale of an RGB image",
    mem_mib: 192,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Width of the source image, in pixels.
const SOURCE_WIDTH: usize = 2560;
/// Height of the source image, in pixels.
const SOURCE_HEIGHT: usize = 1920;
/// Height of the band an invocation crops.
const BAND_HEIGHT: usize = 1280;
/// Distance between the bands of consecutive inputs.
const BAND_STRIDE: usize = 640;
/// Upscaling factor, as a fraction.
const SCALE_NUMERATOR: usize = 3;
const SCALE_DENOMINATOR: usize = 2;
/// Bytes per RGB pixel.
const CHANNELS: usize = 3;
/// Payload bytes of the simulated runtime heap (PIL and the interpreter).
const RUNTIME_BYTES: usize = 24 << 20;

/// An interleaved 8-bit RGB (or single-channel) image.
#[derive(Debug)]
pub(crate) struct Picture {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Picture {
    /// A black picture, freshly allocated.
    fn blank(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            pixels: vec![0; width * height * channels],
        }
    }

    /// The bytes of row `y`.
    fn row(&self, y: usize) -> &[u8] {
        let stride = self.width * self.channels;
        &self.pixels[y * stride..(y + 1) * stride]
    }
}

pub(crate) struct Image {
    source: Picture,
    runtime: Runtime,
}

impl Image {
    pub(crate) fn init() -> Self {
        let runtime = Runtime::build(RUNTIME_BYTES, 0x0069_6d61_6765);
        Self {
            source: synthetic_photo(),
            runtime,
        }
    }
}

impl Function for Image {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let bands = (SOURCE_HEIGHT - BAND_HEIGHT) / BAND_STRIDE + 1;
        let top = (input as usize % bands) * BAND_STRIDE;
        let resized = resize_band(&self.source, top, BAND_HEIGHT);
        let blurred = gaussian_blur(&resized);
        drop(resized);
        let rotated = rotate_clockwise(&blurred);
        drop(blurred);
        let gray = grayscale(&rotated);
        // Sample the colour image sparsely and the final grayscale image fully.
        for y in (0..rotated.height).step_by(97) {
            sum.update(rotated.row(y));
        }
        drop(rotated);
        sum.update_u64(gray.width as u64);
        sum.update_u64(gray.height as u64);
        sum.update(&gray.pixels);
        sum.value()
    }
}

/// Builds the source photo: colour gradients, a few filled discs and rectangles, and noise.
fn synthetic_photo() -> Picture {
    let mut rng = Rng::new(0x0070_686f_746f);
    let mut photo = Picture::blank(SOURCE_WIDTH, SOURCE_HEIGHT, CHANNELS);
    // Shapes are drawn into a scratch coverage mask that is freed afterwards.
    let mut shape_mask = vec![0u8; SOURCE_WIDTH * SOURCE_HEIGHT];
    for _ in 0..40 {
        let (cx, cy) = (rng.below(SOURCE_WIDTH), rng.below(SOURCE_HEIGHT));
        let radius = rng.in_range(20..200);
        let shade = rng.in_range(1..256) as u8;
        let round = rng.below(2) == 0;
        for y in cy.saturating_sub(radius)..(cy + radius).min(SOURCE_HEIGHT) {
            for x in cx.saturating_sub(radius)..(cx + radius).min(SOURCE_WIDTH) {
                let (dx, dy) = (x.abs_diff(cx), y.abs_diff(cy));
                if !round || dx * dx + dy * dy <= radius * radius {
                    shape_mask[y * SOURCE_WIDTH + x] = shade;
                }
            }
        }
    }
    for y in 0..SOURCE_HEIGHT {
        for x in 0..SOURCE_WIDTH {
            let noise = (rng.next_u64() & 0x1f) as usize;
            let shade = usize::from(shape_mask[y * SOURCE_WIDTH + x]);
            let at = (y * SOURCE_WIDTH + x) * CHANNELS;
            let red = x * 255 / SOURCE_WIDTH;
            let green = y * 255 / SOURCE_HEIGHT;
            let blue = (x + y) % 256;
            photo.pixels[at] = ((red + shade + noise) / 2) as u8;
            photo.pixels[at + 1] = ((green + shade + noise) / 2) as u8;
            photo.pixels[at + 2] = ((blue + 255 - shade + noise) / 2) as u8;
        }
    }
    photo
}

/// Crops rows `top..top + height` of `source` and upscales them by
/// `SCALE_NUMERATOR / SCALE_DENOMINATOR` with bilinear interpolation (16.16 fixed point).
fn resize_band(source: &Picture, top: usize, height: usize) -> Picture {
    let out_width = source.width * SCALE_NUMERATOR / SCALE_DENOMINATOR;
    let out_height = height * SCALE_NUMERATOR / SCALE_DENOMINATOR;
    let mut out = Picture::blank(out_width, out_height, source.channels);
    let channels = source.channels;
    let step_x = (source.width << 16) / out_width;
    let step_y = (height << 16) / out_height;
    let out_stride = out_width * channels;
    for (oy, out_row) in out.pixels.chunks_exact_mut(out_stride).enumerate() {
        let fy = oy * step_y;
        let y0 = (fy >> 16).min(height - 1);
        let y1 = (y0 + 1).min(height - 1);
        let wy = fy & 0xffff;
        let (row0, row1) = (source.row(top + y0), source.row(top + y1));
        for (ox, pixel) in out_row.chunks_exact_mut(channels).enumerate() {
            let fx = ox * step_x;
            let x0 = (fx >> 16).min(source.width - 1);
            let x1 = (x0 + 1).min(source.width - 1);
            let wx = fx & 0xffff;
            for (c, value) in pixel.iter_mut().enumerate() {
                let top_mix = usize::from(row0[x0 * channels + c]) * (0x10000 - wx)
                    + usize::from(row0[x1 * channels + c]) * wx;
                let bottom_mix = usize::from(row1[x0 * channels + c]) * (0x10000 - wx)
                    + usize::from(row1[x1 * channels + c]) * wx;
                let mixed = ((top_mix >> 8) * (0x10000 - wy) + (bottom_mix >> 8) * wy) >> 24;
                *value = mixed.min(255) as u8;
            }
        }
    }
    out
}

/// Blurs with the separable kernel `[1 4 6 4 1] / 16`, clamping at the borders. The
/// horizontal pass goes to a fresh intermediate image, freed before returning.
fn gaussian_blur(image: &Picture) -> Picture {
    const KERNEL: [usize; 5] = [1, 4, 6, 4, 1];
    let (width, height, channels) = (image.width, image.height, image.channels);
    let stride = width * channels;
    let mut horizontal = Picture::blank(width, height, channels);
    for (y, out_row) in horizontal.pixels.chunks_exact_mut(stride).enumerate() {
        let in_row = image.row(y);
        for x in 0..width {
            for c in 0..channels {
                let mut acc = 0;
                for (k, weight) in KERNEL.iter().enumerate() {
                    let sx = (x + k).saturating_sub(2).min(width - 1);
                    acc += weight * usize::from(in_row[sx * channels + c]);
                }
                out_row[x * channels + c] = (acc / 16) as u8;
            }
        }
    }
    let mut out = Picture::blank(width, height, channels);
    for (y, out_row) in out.pixels.chunks_exact_mut(stride).enumerate() {
        let rows: [&[u8]; 5] =
            core::array::from_fn(|k| horizontal.row((y + k).saturating_sub(2).min(height - 1)));
        for (i, value) in out_row.iter_mut().enumerate() {
            let acc: usize = KERNEL
                .iter()
                .zip(rows)
                .map(|(weight, row)| weight * usize::from(row[i]))
                .sum();
            *value = (acc / 16) as u8;
        }
    }
    out
}

/// Rotates by 90° clockwise into a fresh image.
fn rotate_clockwise(image: &Picture) -> Picture {
    let (width, height, channels) = (image.width, image.height, image.channels);
    let mut out = Picture::blank(height, width, channels);
    let out_stride = height * channels;
    for (oy, out_row) in out.pixels.chunks_exact_mut(out_stride).enumerate() {
        // Output row `oy` is input column `oy`, read bottom to top.
        for (ox, pixel) in out_row.chunks_exact_mut(channels).enumerate() {
            let at = ((height - 1 - ox) * width + oy) * channels;
            pixel.copy_from_slice(&image.pixels[at..at + channels]);
        }
    }
    out
}

/// Converts RGB to 8-bit luma with the ITU-R BT.601 weights (integer arithmetic).
fn grayscale(image: &Picture) -> Picture {
    let mut out = Picture::blank(image.width, image.height, 1);
    for (luma, rgb) in out
        .pixels
        .iter_mut()
        .zip(image.pixels.chunks_exact(image.channels))
    {
        let weighted = 299 * u32::from(rgb[0]) + 587 * u32::from(rgb[1]) + 114 * u32::from(rgb[2]);
        *luma = (weighted / 1000) as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(width: usize, height: usize) -> Picture {
        let mut picture = Picture::blank(width, height, CHANNELS);
        for (i, byte) in picture.pixels.iter_mut().enumerate() {
            *byte = (i * 7 % 251) as u8;
        }
        picture
    }

    #[test]
    fn rotation_moves_corners() {
        let picture = tiny(4, 3);
        let rotated = rotate_clockwise(&picture);
        assert_eq!((rotated.width, rotated.height), (3, 4));
        // The bottom-left source pixel becomes the top-left one.
        assert_eq!(
            rotated.pixels[..3],
            picture.pixels[2 * 4 * 3..2 * 4 * 3 + 3]
        );
        assert_eq!(
            rotate_clockwise(&rotate_clockwise(&rotate_clockwise(&rotated))).pixels,
            picture.pixels
        );
    }

    #[test]
    fn blur_keeps_flat_images_flat_and_resize_scales() {
        let mut flat = Picture::blank(8, 6, CHANNELS);
        flat.pixels.fill(200);
        assert!(gaussian_blur(&flat).pixels.iter().all(|&p| p == 200));
        let resized = resize_band(&flat, 2, 4);
        assert_eq!((resized.width, resized.height), (12, 6));
        assert!(resized.pixels.iter().all(|&p| p == 200));
    }
}
