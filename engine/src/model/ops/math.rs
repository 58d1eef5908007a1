//! Scalar math the CPU passes share, in f32 and without library calls so that their loops
//! vectorise: `exp`, `erf`, GELU (erf form) and its derivative.

/// exp(x) in f32 without a library call, so loops over it vectorise: range reduction to
/// r ∈ [-ln2/2, ln2/2] and Cephes' `expf` polynomial (relative error about 1e-7); 0 below -87.
#[inline]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer (SSE2, no call)
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    let r = xc - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^k, k read back from t's low mantissa bits.
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let v = y * f32::from_bits(((ki + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        v
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), in f32.
#[inline]
pub fn erf(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6)
            * t
            * exp(-a * a);
    s * y
}

/// GELU with the exact (erf) form: x·Φ(x).
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's derivative (erf form): Φ(z) + z·φ(z).
pub fn gelu_grad(z: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(z * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = 0.398_942_3 * exp(-0.5 * z * z);
    cdf + z * pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn erf_matches_the_reference() {
        // Reference values of erf to 10 digits.
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.1124629160),
            (0.5, 0.5204998778),
            (1.0, 0.8427007929),
            (2.0, 0.9953222650),
            (3.5, 0.9999992569),
            (-1.3, -0.9340079449),
        ] {
            assert!(
                (erf(x) as f64 - want).abs() < 3e-7,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }
}
