//! Seeded random streams that give the same bits on every platform (x86-64, aarch64, wasm32):
//! ChaCha8 for the bits, and Box-Muller through `libm` (pure Rust, so no platform libm can
//! round differently). Initial weights and batch positions come from here, never from a
//! backend's RNG, so every backend starts from the same weights and sees the same batches.
//!
//! Dropout masks are drawn on the device, but not from the device's RNG (whose bits differ
//! between backends and between reseeds): each element's keep/drop bit is a keyed hash of its
//! index (`feistel30`), computed by one kernel per backend (`simplegpt_shaders::dropout`) that
//! gives the same bits on every backend, browser included. `tests/reference_gpt.py` implements
//! the same hash in numpy. The hash is specified beside its kernels, in the shaders crate
//! (which cannot depend on this one); here are its keys, one per batch and dropout site.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simplegpt_shaders::dropout::splitmix64;
/// The dropout hash's specification (`simplegpt_shaders::dropout`), where the rest of simplegpt
/// and its tests find it.
pub use simplegpt_shaders::dropout::{MASK_MAX_ELEMENTS, MUL, feistel30, keep_threshold, round_keys};

pub struct Stream(ChaCha8Rng);

impl Stream {
    /// One independent stream per (seed, purpose, index): e.g. the batches of step 17 are
    /// `Stream::new(seed, "batch", 17)`, so resuming at any step needs no saved RNG state.
    pub fn new(seed: u64, purpose: &str, index: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(fnv1a(purpose.as_bytes()) ^ index.rotate_left(32));
        Stream(rng)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n as u64) as usize
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.0.random::<u64>() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1]: ln is finite
        let u2 = self.uniform();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
    }

    /// `n` draws from N(0, std^2), cut at 3 std when `truncate` (redrawn, as torch's
    /// `trunc_normal_`), as f32.
    pub fn normal_vec(&mut self, n: usize, std: f64, truncate: bool) -> Vec<f32> {
        (0..n)
            .map(|_| {
                loop {
                    let z = self.normal();
                    if !truncate || z.abs() <= 3.0 {
                        break (z * std) as f32;
                    }
                }
            })
            .collect()
    }
}

/// FNV-1a: a stable 64-bit hash for labels and checksums (std's hasher may change).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// A 64-bit hash as 16 lowercase hex digits, the form every checksum is written in.
pub fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// The dropout key of one training batch (`batch_index` = step * grad_accum + micro-step) at
/// one dropout site of the model (0: the embeddings; block l: 1 + 3l attention weights,
/// 2 + 3l attention output, 3 + 3l MLP output).
pub fn dropout_key(seed: u64, batch_index: u64, site: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ batch_index) ^ site)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pearson correlation of two 0/1 sequences.
    fn correlation(a: &[bool], b: &[bool]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().filter(|x| **x).count() as f64 / n, b.iter().filter(|x| **x).count() as f64 / n);
        let cov = a.iter().zip(b).map(|(x, y)| (*x as u8 as f64 - ma) * (*y as u8 as f64 - mb)).sum::<f64>() / n;
        cov / (ma * (1.0 - ma) * mb * (1.0 - mb)).sqrt()
    }

    /// The hash (`simplegpt_shaders::dropout`) on the keys training gives it: the statistics
    /// its number of rounds is chosen by.
    #[test]
    fn dropout_masks_keep_the_right_fraction_without_correlations() {
        let n = 1 << 20;
        let mask = |key| (0..n).map(|i| feistel30(i, &round_keys(key)) >= keep_threshold(0.2)).collect::<Vec<_>>();
        let (a, b) = (mask(dropout_key(1, 0, 0)), mask(dropout_key(1, 1, 0)));
        let kept = a.iter().filter(|x| **x).count() as f64 / n as f64;
        assert!((kept - 0.8).abs() < 0.003, "kept {kept}");
        // Neighbours, elements one 15-bit half apart, and the next batch's mask.
        for (what, r) in [
            ("lag 1", correlation(&a[1..], &a[..n as usize - 1])),
            ("lag 2^15", correlation(&a[1 << 15..], &a[..n as usize - (1 << 15)])),
            ("next key", correlation(&a, &b)),
        ] {
            assert!(r.abs() < 0.01, "{what}: correlation {r}");
        }
    }

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<f32> = Stream::new(7, "init", 0).normal_vec(1000, 1.0, false);
        let b: Vec<f32> = Stream::new(7, "init", 0).normal_vec(1000, 1.0, false);
        let c: Vec<f32> = Stream::new(7, "init", 1).normal_vec(1000, 1.0, false);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().map(|x| *x as f64).sum::<f64>() / 1000.0;
        let var = a.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "mean {mean} var {var}");
        let t = Stream::new(7, "init", 2).normal_vec(5000, 2.0, true);
        assert!(t.iter().all(|x| x.abs() <= 6.0));
    }
}
