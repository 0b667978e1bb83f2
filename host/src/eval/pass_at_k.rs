//! pass@k, the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained
//! on Code"): with `n` samples of which `c` pass, the chance that at least one of `k` samples drawn
//! without replacement passes is `1 − C(n−c, k) / C(n, k)`.
//!
//! The binomials overflow long before `n` gets interesting, so it is computed as the product
//! `1 − Π_{i=n−c+1}^{n} (1 − k/i)`, which never forms a binomial.

/// pass@k for one problem with `n` samples, `c` of them correct; `k ≤ n`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        k >= 1 && k <= n && c <= n,
        "pass@k needs 1 ≤ k ≤ n and c ≤ n"
    );
    if n - c < k {
        // Every draw of k samples contains a correct one.
        return 1.0;
    }
    let none_pass: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - none_pass
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fraction of the k-subsets of n samples (the first c correct) holding a correct one,
    /// by enumerating every subset as a bit mask.
    fn brute_force(n: usize, c: usize, k: usize) -> f64 {
        let (mut hits, mut subsets) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != k {
                continue;
            }
            subsets += 1;
            if mask & ((1u32 << c) - 1) != 0 {
                hits += 1;
            }
        }
        hits as f64 / subsets as f64
    }

    #[test]
    fn matches_brute_force_enumeration_for_small_n() {
        for n in 1..=10 {
            for c in 0..=n {
                for k in 1..=n {
                    let (fast, slow) = (pass_at_k(n, c, k), brute_force(n, c, k));
                    assert!(
                        (fast - slow).abs() < 1e-12,
                        "n={n} c={c} k={k}: {fast} vs {slow}"
                    );
                }
            }
        }
    }

    #[test]
    fn hand_computed_values() {
        // pass@1 is the fraction correct.
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 0, 10), 0.0);
        assert_eq!(pass_at_k(10, 1, 10), 1.0);
        // Large n where C(n, k) overflows f64: still finite and in range.
        let p = pass_at_k(2000, 7, 100);
        assert!(p > 0.0 && p < 1.0, "{p}");
    }
}
