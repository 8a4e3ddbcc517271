//! Sums and maxima over a row in 16 interleaved lanes, for the CPU twins' row loops (norms,
//! the causal softmax, the cross-entropy): a fixed order, the same for every SIMD width, in loops the compiler
//! keeps in vector registers (one AVX-512 register, two AVX2, four SSE or wasm SIMD). A
//! single running sum it may not reorder, so it stays scalar; so does a running maximum
//! (`f32::max` is a call with NaN handling in a chain). Called inside `with_simd!` loops.

/// Lanes: one AVX-512 register of f32.
const LANES: usize = 16;

/// `sum_i f(rows[0][i], rows[1][i], ...)`: in 16 interleaved lanes (`i mod 16`) up to the
/// last multiple of 16, the lanes added in order, then the last elements in order. One sum a
/// pass: with two sums in one loop the compiler pairs the sums rather than the lanes.
#[inline(always)]
pub(crate) fn sum<const S: usize>(rows: [&[f32]; S], f: impl Fn([f32; S]) -> f32) -> f32 {
    let n = rows[0].len();
    let full = n / LANES * LANES;
    let mut lanes = [0.0f32; LANES];
    for start in (0..full).step_by(LANES) {
        let chunks: [&[f32; LANES]; S] = rows.map(|r| r[start..start + LANES].try_into().expect("LANES elements"));
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += f(chunks.map(|c| c[l]));
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for i in full..n {
        sum += f(rows.map(|r| r[i]));
    }
    sum
}

/// `max_i f(row[i])`, NaNs left out (as `f32::max`), `-inf` for an empty row. The largest of
/// a set is one of its elements whatever the order, so the lanes give the bits of a running
/// maximum (but for the sign of a zero maximum, which no caller can see: `x - 0` and
/// `x - (-0)` are equal).
#[inline(always)]
pub(crate) fn max(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let full = row.len() / LANES * LANES;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in row[..full].chunks_exact(LANES) {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(f(*x));
        }
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, l| m.max(*l));
    row[full..].iter().fold(max, |m, x| m.max(f(*x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_lanes_then_the_tail() {
        // 35 elements: two rounds of 16 lanes, then 3 in order.
        let x: Vec<f32> = (0..35).map(|i| i as f32 * 0.5).collect();
        let y: Vec<f32> = (0..35).map(|i| (i % 3) as f32).collect();
        let mut lanes = [0.0f32; 16];
        for i in 0..32 {
            lanes[i % 16] += x[i] * y[i];
        }
        let want = lanes.iter().sum::<f32>() + x[32] * y[32] + x[33] * y[33] + x[34] * y[34];
        assert_eq!(sum([&x, &y], |[x, y]| x * y).to_bits(), want.to_bits());
        assert_eq!(sum([&x[..0]], |[x]| x), 0.0);
    }

    #[test]
    fn the_maximum_leaves_nans_out() {
        let mut x: Vec<f32> = (0..37).map(|i| ((i * 7) % 37) as f32 - 20.0).collect();
        x[5] = f32::NAN;
        x[36] = f32::NAN;
        assert_eq!(max(&x, |v| v * 2.0), 32.0);
        // The largest in the tail (past the 32 elements of the lanes).
        x[34] = 40.0;
        assert_eq!(max(&x, |v| v), 40.0);
        assert_eq!(max(&[], |v| v), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NAN; 20], |v| v), f32::NEG_INFINITY);
    }
}
