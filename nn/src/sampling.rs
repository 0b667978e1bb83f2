//! Choosing the next token from one row of logits: repetition penalty (Keskar et al. 2019),
//! temperature, top-k, nucleus/top-p (Holtzman et al. 2019), then a seeded draw; temperature 0
//! is greedy (argmax).

use llmlab_plugin_api::GenerateOptions;

use crate::rng::Rng;

/// CTRL's repetition penalty: the logit of every token in `seen` is divided by `penalty` when
/// positive and multiplied by it when negative (so `penalty > 1` always makes it less likely).
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let penalty = penalty as f32;
    let mut done = vec![false; logits.len()];
    for &token in seen {
        let i = token as usize;
        if i < logits.len() && !done[i] {
            done[i] = true;
            let l = &mut logits[i];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The next token under `options` (temperature, top_k, top_p), drawing from `rng`.
pub fn sample(logits: &[f32], options: &GenerateOptions, rng: &mut Rng) -> u32 {
    if options.temperature == 0.0 {
        return argmax(logits);
    }
    let t = options.temperature as f32;
    // Candidates sorted by logit, best first; top-k and top-p cut this list.
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i].is_finite())
        .collect();
    if order.is_empty() {
        return argmax(logits);
    }
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if options.top_k > 0 && options.top_k < order.len() {
        order.truncate(options.top_k);
    }
    let max = logits[order[0]] / t;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] / t - max) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if options.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            cumulative += p;
            if cumulative >= options.top_p {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.uniform() * total;
    for (n, p) in probs.iter().enumerate() {
        if u < *p {
            return order[n] as u32;
        }
        u -= p;
    }
    order[probs.len() - 1] as u32
}

/// `log_softmax` of one row, in f64 for beam scores.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&l| l as f64 - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f64, top_k: usize, top_p: f64) -> GenerateOptions {
        GenerateOptions {
            temperature,
            top_k,
            top_p,
            ..GenerateOptions::default()
        }
    }

    fn histogram(logits: &[f32], o: &GenerateOptions, n: usize) -> Vec<usize> {
        let mut rng = Rng::new(1);
        let mut h = vec![0; logits.len()];
        for _ in 0..n {
            h[sample(logits, o, &mut rng) as usize] += 1;
        }
        h
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut rng = Rng::new(0);
        assert_eq!(sample(&[0.1, 3.0, 2.9], &opts(0.0, 0, 1.0), &mut rng), 1);
    }

    #[test]
    fn top_k_only_draws_the_k_best() {
        let h = histogram(&[1.0, 0.9, 0.8, 0.7, 5.0], &opts(1.0, 2, 1.0), 2000);
        assert_eq!(h[2] + h[3], 0);
        assert!(h[0] > 0 && h[4] > 0);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probs ≈ [0.643, 0.237, 0.087, 0.032]: p = 0.8 needs the first two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let h = histogram(&logits, &opts(1.0, 0, 0.8), 3000);
        assert_eq!(h[2] + h[3], 0, "{h:?}");
        assert!(h[1] > 500, "{h:?}");
    }

    #[test]
    fn sampling_follows_the_softmax_and_is_seeded() {
        let logits = [0.0f32, (3.0f32).ln()];
        let h = histogram(&logits, &opts(1.0, 0, 1.0), 8000);
        let frac = h[1] as f64 / 8000.0;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
        assert_eq!(h, histogram(&logits, &opts(1.0, 0, 1.0), 8000));
        // High temperature flattens the distribution.
        let hot = histogram(&logits, &opts(100.0, 0, 1.0), 8000);
        assert!((hot[1] as f64 / 8000.0 - 0.5).abs() < 0.03);
    }

    #[test]
    fn repetition_penalty_lowers_seen_tokens_either_sign() {
        let mut l = vec![2.0f32, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn log_softmax_normalises() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f64 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
