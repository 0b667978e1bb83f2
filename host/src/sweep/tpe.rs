//! The Tree-structured Parzen Estimator sampler, as Optuna's default `TPESampler` (univariate):
//!
//! 1. after `startup` random trials, rank the finished trials (complete ones by value, then
//!    pruned ones by how far they got and their last intermediate value; failed ones are left
//!    out) and split them at the quantile `gamma(n) = min(ceil(0.1 n), 25)` into "good" and "bad";
//! 2. per dimension, fit a Parzen density to each group: a mixture of truncated normals, one per
//!    observation plus a wide prior, in log space for log dimensions, bandwidths from the gaps
//!    between neighbours clipped to [range / min(100, 1 + n), range]; for a categorical
//!    dimension, a mixture of smoothed one-hot distributions;
//! 3. draw `candidates` points from the good density and keep the one with the largest
//!    `log l(x) - log g(x)`, which maximises expected improvement (Bergstra et al. 2011).

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{Map, Value};

use super::records::{Direction, TrialRecord, TrialState};
use super::space::{Coordinates, Dimension, Space};

/// TPE settings; the defaults are Optuna's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TpeOptions {
    /// Random trials before the densities are used.
    pub startup: usize,
    /// Points drawn from the good density per dimension.
    pub candidates: usize,
    /// Weight of the prior component in each mixture.
    pub prior_weight: f64,
}

impl Default for TpeOptions {
    fn default() -> Self {
        TpeOptions {
            startup: 10,
            candidates: 24,
            prior_weight: 1.0,
        }
    }
}

/// Parameters for the next trial given the finished ones.
pub fn sample(
    space: &Space,
    history: &[TrialRecord],
    direction: Direction,
    options: &TpeOptions,
    rng: &mut SplitMix64,
) -> Map<String, Value> {
    let ranked = rank(history, direction);
    if ranked.len() < options.startup.max(1) {
        return space.sample_uniform(rng);
    }
    let n_below = gamma(ranked.len()).min(ranked.len());
    let (below, above) = ranked.split_at(n_below);
    // Each group in trial order, so the recency weights fall on the newest trials.
    let (below, above) = (in_order(below), in_order(above));
    space
        .dims
        .iter()
        .map(|(name, dim)| {
            let value = sample_dimension(name, dim, &below, &above, options, rng);
            (name.clone(), value)
        })
        .collect()
}

fn in_order<'a>(group: &[&'a TrialRecord]) -> Vec<&'a TrialRecord> {
    let mut g = group.to_vec();
    g.sort_by_key(|t| t.number);
    g
}

/// Optuna's `default_gamma`: the size of the good group.
pub fn gamma(n: usize) -> usize {
    (n as f64 * 0.1).ceil().clamp(1.0, 25.0) as usize
}

/// Optuna's `default_weights`: 1 for the newest 25 observations, a ramp up from 1/n before them.
pub fn recency_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let mut w: Vec<f64> = (0..ramp)
        .map(|i| {
            let lo = 1.0 / n as f64;
            if ramp == 1 {
                lo
            } else {
                lo + (1.0 - lo) * i as f64 / (ramp - 1) as f64
            }
        })
        .collect();
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

/// Finished trials best first: complete by value, then pruned (further first, then by their
/// last intermediate value). Failed trials and values that are not finite say nothing.
fn rank(history: &[TrialRecord], direction: Direction) -> Vec<&TrialRecord> {
    let mut complete: Vec<(&TrialRecord, f64)> = history
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| {
            t.value
                .filter(|v| v.is_finite())
                .map(|v| (t, direction.loss(v)))
        })
        .collect();
    complete.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut pruned: Vec<(&TrialRecord, u64, f64)> = history
        .iter()
        .filter(|t| t.state == TrialState::Pruned)
        .filter_map(|t| {
            t.intermediate
                .last()
                .filter(|(_, v)| v.is_finite())
                .map(|&(s, v)| (t, s, direction.loss(v)))
        })
        .collect();
    pruned.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.total_cmp(&b.2)));
    complete
        .into_iter()
        .map(|(t, _)| t)
        .chain(pruned.into_iter().map(|(t, ..)| t))
        .collect()
}

fn sample_dimension(
    name: &str,
    dim: &Dimension,
    below: &[&TrialRecord],
    above: &[&TrialRecord],
    options: &TpeOptions,
    rng: &mut SplitMix64,
) -> Value {
    let observed = |group: &[&TrialRecord]| -> Vec<f64> {
        group
            .iter()
            .filter_map(|t| t.params.get(name).and_then(|v| dim.to_coordinate(v)))
            .collect()
    };
    let (good, bad) = (observed(below), observed(above));
    let (l, g) = match dim.coordinates() {
        Coordinates::Numeric { low, high, .. } => (
            Parzen::numeric(&good, low, high, options.prior_weight),
            Parzen::numeric(&bad, low, high, options.prior_weight),
        ),
        Coordinates::Categorical { n } => (
            Parzen::categorical(&good, n, options.prior_weight),
            Parzen::categorical(&bad, n, options.prior_weight),
        ),
    };
    let round = matches!(dim.coordinates(), Coordinates::Numeric { round: true, .. });
    let mut best = (f64::NEG_INFINITY, f64::NAN);
    for _ in 0..options.candidates.max(1) {
        let mut x = l.sample(rng);
        if round {
            x = x.round();
        }
        let score = l.log_pdf(x) - g.log_pdf(x);
        if score > best.0 || best.1.is_nan() {
            best = (score, x);
        }
    }
    dim.from_coordinate(best.1)
}

/// A Parzen density over one dimension's coordinates.
#[derive(Debug, Clone)]
pub enum Parzen {
    /// Truncated normals on `[low, high]`: weights (summing to 1), means, bandwidths.
    Numeric {
        weights: Vec<f64>,
        mus: Vec<f64>,
        sigmas: Vec<f64>,
        low: f64,
        high: f64,
    },
    /// Probabilities of the `n` values.
    Categorical { probs: Vec<f64> },
}

impl Parzen {
    /// One kernel per observation plus the prior (centred, as wide as the range).
    pub fn numeric(observations: &[f64], low: f64, high: f64, prior_weight: f64) -> Parzen {
        let range = high - low;
        let mut mus: Vec<f64> = observations.to_vec();
        mus.push(0.5 * (low + high));
        let n = mus.len();
        // Bandwidth of each kernel: the larger gap to its neighbours in sorted order (the
        // outermost ones use their inner gap: Optuna's consider_endpoints = false).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
        let sorted: Vec<f64> = order.iter().map(|&i| mus[i]).collect();
        let mut with_ends = vec![low];
        with_ends.extend(&sorted);
        with_ends.push(high);
        let mut sorted_sigmas: Vec<f64> = (0..n)
            .map(|i| (with_ends[i + 1] - with_ends[i]).max(with_ends[i + 2] - with_ends[i + 1]))
            .collect();
        if n >= 2 {
            sorted_sigmas[0] = with_ends[2] - with_ends[1];
            sorted_sigmas[n - 1] = with_ends[n] - with_ends[n - 1];
        }
        let mut sigmas = vec![0.0; n];
        for (k, &i) in order.iter().enumerate() {
            sigmas[i] = sorted_sigmas[k];
        }
        sigmas[n - 1] = range;
        // Optuna's "magic clip": no kernel narrower than range / min(100, 1 + n).
        let min_sigma = range / (100.0f64).min(1.0 + n as f64);
        for s in &mut sigmas {
            *s = s.clamp(min_sigma, range);
        }
        let mut weights = recency_weights(observations.len());
        weights.push(prior_weight);
        normalise(&mut weights);
        Parzen::Numeric {
            weights,
            mus,
            sigmas,
            low,
            high,
        }
    }

    /// Each observation a one-hot row smoothed by `prior_weight / n`; the prior row uniform.
    pub fn categorical(observations: &[f64], n: usize, prior_weight: f64) -> Parzen {
        let mut kernel_weights = recency_weights(observations.len());
        kernel_weights.push(prior_weight);
        normalise(&mut kernel_weights);
        let mut probs = vec![0.0; n];
        for (k, w) in kernel_weights.iter().enumerate() {
            let mut row = vec![prior_weight / n as f64; n];
            if let Some(&x) = observations.get(k) {
                row[(x as usize).min(n - 1)] += 1.0;
            }
            let total: f64 = row.iter().sum();
            for (p, r) in probs.iter_mut().zip(&row) {
                *p += w * r / total;
            }
        }
        Parzen::Categorical { probs }
    }

    pub fn sample(&self, rng: &mut SplitMix64) -> f64 {
        match self {
            Parzen::Numeric {
                weights,
                mus,
                sigmas,
                low,
                high,
            } => {
                let k = pick(weights, rng);
                let (mu, sigma) = (mus[k], sigmas[k]);
                // Rejection from the normal: sigma <= range and mu inside the range keep the
                // acceptance above ~1/3; the clamp only guards the pathological case.
                for _ in 0..100 {
                    let x = mu + sigma * rng.normal();
                    if (*low..=*high).contains(&x) {
                        return x;
                    }
                }
                mu.clamp(*low, *high)
            }
            Parzen::Categorical { probs } => pick(probs, rng) as f64,
        }
    }

    pub fn log_pdf(&self, x: f64) -> f64 {
        match self {
            Parzen::Numeric {
                weights,
                mus,
                sigmas,
                low,
                high,
            } => {
                let terms: Vec<f64> = weights
                    .iter()
                    .zip(mus.iter().zip(sigmas))
                    .map(|(w, (mu, s))| {
                        let z = (x - mu) / s;
                        let mass = normal_cdf((high - mu) / s) - normal_cdf((low - mu) / s);
                        w.ln()
                            - 0.5 * z * z
                            - 0.5 * (2.0 * std::f64::consts::PI).ln()
                            - s.ln()
                            - mass.max(1e-300).ln()
                    })
                    .collect();
                log_sum_exp(&terms)
            }
            Parzen::Categorical { probs } => {
                let i = (x.round().max(0.0) as usize).min(probs.len() - 1);
                probs[i].max(1e-300).ln()
            }
        }
    }
}

fn normalise(weights: &mut [f64]) {
    let total: f64 = weights.iter().sum();
    for w in weights {
        *w /= total;
    }
}

/// An index drawn with probability proportional to `weights`.
fn pick(weights: &[f64], rng: &mut SplitMix64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_unit() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// Φ(z) through erfc (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use llmlab_plugin_api::serde_json::json;

    use super::*;

    fn quadratic_space() -> Space {
        let mut dims = BTreeMap::new();
        dims.insert(
            "x".into(),
            Dimension::Uniform {
                low: -1.0,
                high: 1.0,
            },
        );
        dims.insert(
            "y".into(),
            Dimension::Uniform {
                low: -1.0,
                high: 1.0,
            },
        );
        Space { dims }
    }

    fn f(p: &Map<String, Value>) -> f64 {
        let (x, y) = (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap());
        (x - 0.3).powi(2) + (y + 0.2).powi(2)
    }

    fn record(number: usize, params: Map<String, Value>, value: f64) -> TrialRecord {
        TrialRecord {
            number,
            params,
            state: TrialState::Complete,
            value: Some(value),
            ..TrialRecord::default()
        }
    }

    /// Trials until the 2-D quadratic is below `target` (the disc of radius 0.1 around the
    /// optimum: 0.8% of the square), at most `cap`.
    fn trials_to_region(tpe: bool, seed: u64, cap: usize, target: f64) -> usize {
        let space = quadratic_space();
        let mut history = Vec::new();
        for n in 0..cap {
            let mut rng = SplitMix64::new(seed.wrapping_mul(1_000_003).wrapping_add(n as u64));
            let params = if tpe {
                sample(
                    &space,
                    &history,
                    Direction::Minimize,
                    &TpeOptions::default(),
                    &mut rng,
                )
            } else {
                space.sample_uniform(&mut rng)
            };
            let value = f(&params);
            if value < target {
                return n + 1;
            }
            history.push(record(n, params, value));
        }
        cap
    }

    #[test]
    fn tpe_reaches_the_quadratic_optimum_region_faster_than_random() {
        let seeds = 0..8u64;
        let (cap, target) = (300, 0.01);
        let tpe: Vec<usize> = seeds
            .clone()
            .map(|s| trials_to_region(true, s, cap, target))
            .collect();
        let random: Vec<usize> = seeds
            .map(|s| trials_to_region(false, s, cap, target))
            .collect();
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
        let (tpe_mean, random_mean) = (mean(&tpe), mean(&random));
        eprintln!("trials to f < {target}: tpe {tpe:?} (mean {tpe_mean}), random {random:?} (mean {random_mean})");
        // Random needs ~1/0.0079 = 127 trials on average; TPE, once its 10 startup trials
        // are in, concentrates near the optimum.
        assert!(
            tpe_mean * 2.0 < random_mean,
            "tpe mean {tpe_mean} not under half of random's {random_mean}"
        );
    }

    #[test]
    fn startup_trials_are_uniform_and_later_ones_follow_the_good_group() {
        let mut dims = BTreeMap::new();
        dims.insert(
            "lr".into(),
            Dimension::LogUniform {
                low: 1e-5,
                high: 1.0,
            },
        );
        dims.insert(
            "act".into(),
            Dimension::Choice(vec![json!("relu"), json!("gelu"), json!("tanh")]),
        );
        let space = Space { dims };
        // Good trials: lr near 1e-3 and "gelu"; bad: everything else.
        let mut history = Vec::new();
        let mut rng = SplitMix64::new(1);
        for n in 0..40 {
            let params = space.sample_uniform(&mut rng);
            let lr = params["lr"].as_f64().unwrap();
            let value = (lr.log10() + 3.0).abs()
                + if params["act"] == json!("gelu") {
                    0.0
                } else {
                    1.0
                };
            history.push(record(n, params, value));
        }
        let mut near = 0;
        let mut gelu = 0;
        for k in 0..50 {
            let mut rng = SplitMix64::new(100 + k);
            let p = sample(
                &space,
                &history,
                Direction::Minimize,
                &TpeOptions::default(),
                &mut rng,
            );
            let lr = p["lr"].as_f64().unwrap();
            assert!((1e-5..=1.0).contains(&lr));
            near += usize::from((lr.log10() + 3.0).abs() < 1.0);
            gelu += usize::from(p["act"] == json!("gelu"));
        }
        // Uniform would give 2/5 of the draws within a decade of 1e-3 and 1/3 gelu.
        assert!(near >= 35, "{near} of 50 within a decade of 1e-3");
        assert!(gelu >= 30, "{gelu} of 50 chose gelu");
        // Maximising the same values prefers the other end.
        let mut rng = SplitMix64::new(7);
        let p = sample(
            &space,
            &history,
            Direction::Maximize,
            &TpeOptions::default(),
            &mut rng,
        );
        assert_ne!(p["act"], json!("gelu"));
    }

    #[test]
    fn parzen_density_integrates_to_one() {
        let p = Parzen::numeric(&[0.1, 0.15, 0.7], 0.0, 1.0, 1.0);
        let n = 20_000;
        let integral: f64 = (0..n)
            .map(|i| p.log_pdf((i as f64 + 0.5) / n as f64).exp() / n as f64)
            .sum();
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        let c = Parzen::categorical(&[0.0, 0.0, 2.0], 3, 1.0);
        let total: f64 = (0..3).map(|i| c.log_pdf(i as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(c.log_pdf(0.0) > c.log_pdf(1.0));
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7 && (normal_cdf(1.96) - 0.975).abs() < 1e-4);
    }
}
