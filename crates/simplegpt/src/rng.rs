//! Seeded random streams that give the same bits on every platform (x86-64, aarch64, wasm32):
//! ChaCha8 for the bits, and Box-Muller through `libm` (pure Rust, so no platform libm can
//! round differently). Initial weights and batch positions come from here, never from a
//! backend's RNG, so every backend starts from the same weights and sees the same batches.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
            .map(|_| loop {
                let z = self.normal();
                if !truncate || z.abs() <= 3.0 {
                    break (z * std) as f32;
                }
            })
            .collect()
    }
}

/// FNV-1a: a stable 64-bit hash for labels and checksums (std's hasher may change).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use super::*;

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
