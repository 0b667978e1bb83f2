//! Choosing each sequence's next token from its logits: temperature, top-k, top-p (nucleus),
//! greedy at temperature 0, from a per-sequence seeded generator (same `seed`, same text, alone
//! or in a batch), and the log probabilities OpenAI's `logprobs` reports (the model's own
//! distribution, before temperature and truncation, as vLLM reports them).

use llmlab_nn::ops::math::{self, simd_kernel};
use llmlab_plugin_api::rng::SplitMix64;

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f64,
    /// Alternatives to report per token; `None` = no log probabilities.
    pub logprobs: Option<usize>,
}

/// One chosen token with its log probability and the most likely alternatives.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

simd_kernel! {
    /// `log Σ exp(logits)` (`max` the largest logit): a token's log probability is its logit
    /// minus this. The polynomial
    /// `exp` in independent lanes: libm's scalar `exp` here and in [`weights_into`] was ≈ 8% of
    /// the quickstart model's CPU when serving 16 streams (docs/serving.md).
    fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
        let mut acc = [0f32; math::LANES];
        let chunks = logits.chunks_exact(math::LANES);
        let tail: f32 = chunks.remainder().iter().map(|&l| math::exp(l - max)).sum();
        for c in chunks {
            for l in 0..math::LANES {
                acc[l] += math::exp(c[l] - max);
            }
        }
        (acc.iter().sum::<f32>() + tail).ln() + max
    }
}

simd_kernel! {
    /// `weights[i] = exp((logits[i] - max) / temperature)`: the unnormalised probabilities at the
    /// request's temperature (`max` is the largest logit, so the largest weight is 1).
    fn weights_into(logits: &[f32], max: f32, inv_temperature: f32, weights: &mut [f32]) {
        for (w, &l) in weights.iter_mut().zip(logits) {
            *w = math::exp((l - max) * inv_temperature);
        }
    }
}

/// Indices of `values` from largest to smallest (ties by index, so the order is deterministic).
fn descending(values: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let by_value = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if keep < order.len() {
        order.select_nth_unstable_by(keep, by_value);
        order.truncate(keep);
    }
    order.sort_by(by_value);
    order
}

/// The first index of the largest value (by `total_cmp`): `descending(values, 1)[0]` without
/// the vector of indices.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate().skip(1) {
        if v.total_cmp(&values[best]).is_gt() {
            best = i;
        }
    }
    best
}

pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut SplitMix64) -> Sampled {
    let max = math::max(logits);
    let log_sum = log_sum_exp(logits, max);
    let token = if params.temperature == 0.0 {
        argmax(logits)
    } else {
        let keep = match params.top_k {
            0 => logits.len(),
            k => k.min(logits.len()),
        };
        // Sorting the vocabulary is needed only to truncate it; it was the costliest part of a
        // serving step's per-sequence work (perf, docs/serving.md), so plain sampling draws in
        // vocabulary order, straight from the logits (no index or logit copies per token).
        let candidates: Option<Vec<usize>> =
            (keep < logits.len() || params.top_p < 1.0).then(|| descending(logits, keep));
        let gathered: Vec<f32>;
        let (candidate_logits, candidate_max) = match &candidates {
            None => (logits, max),
            Some(order) => {
                gathered = order.iter().map(|&i| logits[i]).collect();
                (&gathered[..], math::max(&gathered))
            }
        };
        let mut weights = vec![0f32; candidate_logits.len()];
        weights_into(
            candidate_logits,
            candidate_max,
            (1.0 / params.temperature) as f32,
            &mut weights,
        );
        // The walks below sum in f64: a 100k-token vocabulary's tail stays visible.
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        // Nucleus: the smallest prefix (most likely first) holding top_p of the probability.
        let mut nucleus = weights.len();
        if params.top_p < 1.0 {
            let mut mass = 0.0;
            for (i, &w) in weights.iter().enumerate() {
                mass += w as f64 / total;
                if mass >= params.top_p {
                    nucleus = i + 1;
                    break;
                }
            }
        }
        let kept: f64 = if nucleus == weights.len() {
            total
        } else {
            weights[..nucleus].iter().map(|&w| w as f64).sum()
        };
        let id = |i: usize| candidates.as_ref().map_or(i, |order| order[i]);
        let mut draw = rng.next_unit() * kept;
        let mut chosen = id(nucleus - 1);
        for (i, &w) in weights[..nucleus].iter().enumerate() {
            if draw < w as f64 {
                chosen = id(i);
                break;
            }
            draw -= w as f64;
        }
        chosen
    };
    let top = match params.logprobs {
        Some(n) if n > 0 => descending(logits, n)
            .into_iter()
            .map(|i| (i as u32, logits[i] - log_sum))
            .collect(),
        _ => Vec::new(),
    };
    Sampled {
        token: token as u32,
        logprob: logits[token] - log_sum,
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_k: usize, top_p: f64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            logprobs: Some(2),
        }
    }

    #[test]
    fn greedy_takes_the_largest_and_reports_its_logprob() {
        let mut rng = SplitMix64::new(0);
        let s = sample(&[0.0, 2.0, 1.0], &params(0.0, 0, 1.0), &mut rng);
        assert_eq!(s.token, 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((s.logprob - expected).abs() < 1e-5);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_nucleus() {
        let logits = [0.0, 5.0, 4.9, -3.0];
        for seed in 0..50 {
            let mut rng = SplitMix64::new(seed);
            assert_eq!(sample(&logits, &params(1.0, 1, 1.0), &mut rng).token, 1);
            let t = sample(&logits, &params(1.0, 0, 0.5), &mut rng).token;
            assert!(
                t == 1,
                "top_p 0.5 keeps only the most likely token here, got {t}"
            );
            let t = sample(&logits, &params(1.0, 0, 0.9), &mut rng).token;
            assert!(t == 1 || t == 2, "top_p 0.9 keeps two tokens, got {t}");
        }
    }

    #[test]
    fn log_probabilities_match_a_double_precision_log_sum_exp_over_a_large_vocabulary() {
        let mut rng = SplitMix64::new(7);
        // 50,257 logits (GPT-2's vocabulary: lanes and a tail) spread over ±20.
        let logits: Vec<f32> = (0..50_257)
            .map(|_| (rng.next_unit() as f32 - 0.5) * 40.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let reference = logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        let got = log_sum_exp(&logits, max as f32) as f64;
        assert!(
            (got - reference).abs() < 1e-4,
            "log Σ exp: {got} vs {reference}"
        );
        let mut weights = vec![0f32; 5];
        weights_into(&[1.0, 0.0, -1.0, 3.0, 3.0], 3.0, 0.5, &mut weights);
        for (w, l) in weights.iter().zip([1.0f64, 0.0, -1.0, 3.0, 3.0]) {
            let expected = ((l - 3.0) * 0.5).exp();
            assert!(
                (*w as f64 - expected).abs() < 1e-6 * expected.max(1e-30),
                "{w} vs {expected}"
            );
        }
    }

    #[test]
    fn same_seed_same_draws_and_sampling_follows_the_distribution() {
        let logits = [0.0f32, (3f32).ln()];
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..2000)
                .map(|_| sample(&logits, &params(1.0, 0, 1.0), &mut rng).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let ones = draw(3).iter().filter(|&&t| t == 1).count() as f64 / 2000.0;
        assert!(
            (ones - 0.75).abs() < 0.04,
            "p(1) should be 0.75, got {ones}"
        );
    }

    /// `sample` as it was before it drew straight from the logits (issue 23): the
    /// reference the current one must match token for token.
    fn sample_before(logits: &[f32], params: &SamplingParams, rng: &mut SplitMix64) -> Sampled {
        let log_sum = log_sum_exp(logits, math::max(logits));
        let token = if params.temperature == 0.0 {
            descending(logits, 1)[0]
        } else {
            let keep = match params.top_k {
                0 => logits.len(),
                k => k.min(logits.len()),
            };
            // Sorting the vocabulary is needed only to truncate it; it was the costliest part of a
            // serving step's per-sequence work (perf, docs/serving.md), so plain sampling draws in
            // vocabulary order.
            let candidates: Vec<usize> = if keep == logits.len() && params.top_p >= 1.0 {
                (0..logits.len()).collect()
            } else {
                descending(logits, keep)
            };
            let candidate_logits: Vec<f32> = candidates.iter().map(|&i| logits[i]).collect();
            let mut weights = vec![0f32; candidates.len()];
            weights_into(
                &candidate_logits,
                math::max(&candidate_logits),
                (1.0 / params.temperature) as f32,
                &mut weights,
            );
            // The walks below sum in f64: a 100k-token vocabulary's tail stays visible.
            let total: f64 = weights.iter().map(|&w| w as f64).sum();
            // Nucleus: the smallest prefix (most likely first) holding top_p of the probability.
            let mut nucleus = weights.len();
            if params.top_p < 1.0 {
                let mut mass = 0.0;
                for (i, &w) in weights.iter().enumerate() {
                    mass += w as f64 / total;
                    if mass >= params.top_p {
                        nucleus = i + 1;
                        break;
                    }
                }
            }
            let kept: f64 = weights[..nucleus].iter().map(|&w| w as f64).sum();
            let mut draw = rng.next_unit() * kept;
            let mut chosen = candidates[nucleus - 1];
            for (i, &w) in weights[..nucleus].iter().enumerate() {
                if draw < w as f64 {
                    chosen = candidates[i];
                    break;
                }
                draw -= w as f64;
            }
            chosen
        };
        let top = match params.logprobs {
            Some(n) if n > 0 => descending(logits, n)
                .into_iter()
                .map(|i| (i as u32, logits[i] - log_sum))
                .collect(),
            _ => Vec::new(),
        };
        Sampled {
            token: token as u32,
            logprob: logits[token] - log_sum,
            top,
        }
    }

    /// Dropping the per-token copies changed no draw: over 300 seeded draws each, plain
    /// sampling, top-k, top-p, both, greedy and logprobs give the same tokens, log
    /// probabilities and alternatives as the implementation before, on a 721-token vocabulary
    /// (the quickstart model's) with ties.
    #[test]
    fn sampling_draws_the_same_tokens_as_before_for_a_seed() {
        let mut g = SplitMix64::new(5);
        let mut logits: Vec<f32> = (0..721)
            .map(|_| (g.next_unit() as f32 - 0.5) * 12.0)
            .collect();
        logits[17] = logits[3];
        let cases = [
            (0.8, 0, 1.0, None),
            (1.0, 0, 1.0, Some(3)),
            (0.7, 40, 1.0, None),
            (1.2, 0, 0.9, Some(1)),
            (0.5, 50, 0.8, None),
            (0.0, 0, 1.0, Some(5)),
        ];
        for (temperature, top_k, top_p, logprobs) in cases {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                logprobs,
            };
            let (mut a, mut b) = (SplitMix64::new(99), SplitMix64::new(99));
            for draw in 0..300 {
                let (new, old) = (
                    sample(&logits, &p, &mut a),
                    sample_before(&logits, &p, &mut b),
                );
                assert_eq!(
                    (new.token, new.logprob.to_bits(), &new.top),
                    (old.token, old.logprob.to_bits(), &old.top),
                    "{p:?}, draw {draw}"
                );
            }
        }
    }
}
