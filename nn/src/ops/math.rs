//! The scalar math inside the kernels, written so that loops over slices vectorise: `exp`,
//! `tanh` and `sigmoid` from a polynomial with plain arithmetic (libm's scalar calls stop the
//! vectoriser: tanh-GELU was 15% of a forward pass), and reductions with independent lanes
//! (float sums only vectorise when the code itself reassociates).
//!
//! [`simd_kernel!`] compiles a kernel twice, for the baseline target and for AVX2+FMA, and picks
//! at run time, because the workspace builds for generic x86-64 (SSE2: 4 lanes).

/// Independent accumulators per reduction: two AVX2 registers.
pub const LANES: usize = 16;

/// Defines `fn $name(args) -> ret` whose body is compiled for the baseline target and, on x86-64,
/// again with AVX2 + FMA enabled; the AVX2 copy runs when the CPU has both.
#[macro_export]
#[doc(hidden)]
macro_rules! simd_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub use simd_kernel;

/// `e^x` to ~2 ulp (Cephes' `expf` polynomial); 0 below -87, NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and removing 1.5·2^23 rounds to the nearest integer without `round` (a libm call
    // before SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let xc = if x > 88.0 { 88.0 } else { x };
    let xc = if xc < -87.0 { -87.0 } else { xc };
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from integer operations only: `shifted` holds n in its low mantissa bits (the
    // exponent does not change over the clamped range). `n as i32` — a saturating float-to-int
    // conversion — kept the loops around this function from running at vector speed (GELU
    // 2–3 ns per element); the result is the same bits.
    let scale = f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23,
    );
    if x < -87.0 {
        0.0
    } else {
        e * scale
    }
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`; absolute error below 1e-7.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// `σ(x) = 1 / (1 + e^{-x})`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `Σ x`.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a·b`.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a·b·c`.
#[inline(always)]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for i in (0..full).step_by(LANES) {
        for l in 0..LANES {
            acc[l] += a[i + l] * b[i + l] * c[i + l];
        }
    }
    let tail: f32 = (full..n).map(|i| a[i] * b[i] * c[i]).sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ (x - m)²`.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - m) * (v - m)).sum();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - m;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `max x` (-inf for an empty slice); NaNs are skipped here and caught by the `exp` after it.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        m = if v > m { v } else { m };
    }
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().fold(m, |m, &v| if v > m { v } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_tanh_match_libm() {
        let mut worst_exp = 0f32;
        let mut worst_tanh = 0f32;
        for i in -8000..8000 {
            let x = i as f32 * 0.01;
            worst_exp = worst_exp.max(((exp(x) - x.exp()) / x.exp()).abs());
            worst_tanh = worst_tanh.max((tanh(x) - x.tanh()).abs());
        }
        assert!(worst_exp < 5e-7, "exp rel err {worst_exp}");
        assert!(worst_tanh < 2e-7, "tanh abs err {worst_tanh}");
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(100.0).is_finite());
    }

    /// The integer-only `2^n` gives the bits the float-to-int conversion gave, over the whole
    /// range, its clamps and the infinities (NaN stays NaN).
    #[test]
    fn exp_scale_from_the_mantissa_bits_matches_the_conversion() {
        // `exp` as it was: `2^n` through `n as i32`.
        fn exp_by_conversion(x: f32) -> f32 {
            let xc = x.clamp(-87.0, 88.0);
            let n = (xc * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
            let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
            let mut p = 1.987_569_2e-4f32;
            for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
                p = p * r + c;
            }
            let e = p * r * r + r + 1.0;
            let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
            if x < -87.0 {
                0.0
            } else {
                e * scale
            }
        }
        let mut x = -100.0f32;
        while x < 100.0 {
            assert_eq!(exp(x).to_bits(), exp_by_conversion(x).to_bits(), "x {x}");
            x += 0.000_37;
        }
        for x in [f32::INFINITY, f32::NEG_INFINITY, 88.0, -87.0, 0.0, -0.0] {
            assert_eq!(exp(x).to_bits(), exp_by_conversion(x).to_bits(), "x {x}");
        }
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_cover_the_tail() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 - 20.0).collect();
        assert_eq!(sum(&x), x.iter().sum::<f32>());
        assert_eq!(max(&x), 16.0);
        assert_eq!(dot(&x, &x), x.iter().map(|v| v * v).sum::<f32>());
    }
}
