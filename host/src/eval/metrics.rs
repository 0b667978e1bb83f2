//! The metrics a task can ask for, each with a standard error: analytic for means of per-document
//! scores (sample standard deviation / √n, as lm-evaluation-harness reports), bootstrap over
//! documents for corpus-level ratios (F1, MCC, perplexity, bits per byte).

use std::fmt;

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::{Error, Result};

use super::output::{Outcome, OutputType};
use super::pass_at_k::pass_at_k;

/// Resamples behind a bootstrap standard error (seeded: the same documents give the same error).
const BOOTSTRAP_ITERATIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Acc,
    /// Choice log-likelihood divided by its length in bytes.
    AccNorm,
    ExactMatch,
    /// Binary F1 over (predicted, gold) choices with choice 1 positive (multiple choice), or the
    /// mean token-overlap F1 of answer and target (generation, as SQuAD).
    F1,
    /// Matthews correlation over (predicted, gold) choices.
    Mcc,
    /// `exp(−Σ ll / Σ tokens)`.
    Perplexity,
    /// `exp(−Σ ll / Σ words)`: comparable across tokenizers.
    WordPerplexity,
    /// `−Σ ll / (Σ bytes · ln 2)`: comparable across tokenizers.
    BitsPerByte,
    /// pass@k of executed samples (unbiased estimator over the task's repeats).
    PassAt(usize),
}

impl Metric {
    pub const NAMES: &'static str =
        "acc, acc_norm, exact_match, f1, mcc, perplexity, word_perplexity, bits_per_byte, pass@k";

    pub fn parse(name: &str) -> Result<Metric> {
        Ok(match name {
            "acc" => Metric::Acc,
            "acc_norm" => Metric::AccNorm,
            "exact_match" => Metric::ExactMatch,
            "f1" => Metric::F1,
            "mcc" => Metric::Mcc,
            "perplexity" => Metric::Perplexity,
            "word_perplexity" => Metric::WordPerplexity,
            "bits_per_byte" => Metric::BitsPerByte,
            other => match other.strip_prefix("pass@").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 1 => Metric::PassAt(k),
                _ => {
                    return Err(Error::Other(format!(
                        "unknown metric `{other}`; known: {}",
                        Metric::NAMES
                    )))
                }
            },
        })
    }

    /// Whether `output_type` produces what this metric needs.
    pub fn fits(self, output_type: OutputType) -> bool {
        use OutputType::*;
        match self {
            Metric::Acc => matches!(output_type, Loglikelihood | MultipleChoice),
            Metric::AccNorm | Metric::Mcc => output_type == MultipleChoice,
            Metric::F1 => matches!(output_type, MultipleChoice | GenerateUntil),
            Metric::ExactMatch | Metric::PassAt(_) => output_type == GenerateUntil,
            Metric::Perplexity => matches!(output_type, Loglikelihood | LoglikelihoodRolling),
            Metric::WordPerplexity | Metric::BitsPerByte => output_type == LoglikelihoodRolling,
        }
    }

    /// Whether a larger value is better (for reports).
    pub fn higher_is_better(self) -> bool {
        !matches!(
            self,
            Metric::Perplexity | Metric::WordPerplexity | Metric::BitsPerByte
        )
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Acc => f.write_str("acc"),
            Metric::AccNorm => f.write_str("acc_norm"),
            Metric::ExactMatch => f.write_str("exact_match"),
            Metric::F1 => f.write_str("f1"),
            Metric::Mcc => f.write_str("mcc"),
            Metric::Perplexity => f.write_str("perplexity"),
            Metric::WordPerplexity => f.write_str("word_perplexity"),
            Metric::BitsPerByte => f.write_str("bits_per_byte"),
            Metric::PassAt(k) => write!(f, "pass@{k}"),
        }
    }
}

/// A metric's value and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub stderr: f64,
}

/// Mean and its standard error `s / √n` (`s` with Bessel's correction; 0 for one value).
pub fn mean_with_stderr(xs: &[f64]) -> Estimate {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let stderr = if xs.len() > 1 {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (var / n).sqrt()
    } else {
        0.0
    };
    Estimate {
        value: mean,
        stderr,
    }
}

/// Standard deviation of `statistic` over resamples (with replacement) of `n` items.
pub fn bootstrap_stderr(n: usize, seed: u64, statistic: impl Fn(&[usize]) -> f64) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let mut rng = SplitMix64::new(seed ^ 0xB007_57A9);
    let mut values = Vec::with_capacity(BOOTSTRAP_ITERATIONS);
    let mut picks = vec![0; n];
    for _ in 0..BOOTSTRAP_ITERATIONS {
        for p in picks.iter_mut() {
            *p = rng.below(n);
        }
        let v = statistic(&picks);
        if v.is_finite() {
            values.push(v);
        }
    }
    if values.len() < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// Binary F1 of `(predicted, gold)` pairs, class 1 positive: `2tp / (2tp + fp + fn)`; 0 when
/// there are no positives at all.
pub fn f1_binary(pairs: &[(usize, usize)]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for &(p, g) in pairs {
        match (p == 1, g == 1) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            _ => {}
        }
    }
    if tp + fp + fn_ == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

/// Matthews correlation of `(predicted, gold)` pairs over any number of classes (Gorodkin's
/// form; the binary formula for two): 0 when a marginal is constant.
pub fn mcc(pairs: &[(usize, usize)]) -> f64 {
    let classes = pairs.iter().map(|&(p, g)| p.max(g) + 1).max().unwrap_or(0);
    let (mut predicted, mut actual) = (vec![0.0; classes], vec![0.0; classes]);
    let mut correct = 0.0;
    for &(p, g) in pairs {
        predicted[p] += 1.0;
        actual[g] += 1.0;
        if p == g {
            correct += 1.0;
        }
    }
    let s = pairs.len() as f64;
    let pt: f64 = predicted.iter().zip(&actual).map(|(p, t)| p * t).sum();
    let pp: f64 = predicted.iter().map(|p| p * p).sum();
    let tt: f64 = actual.iter().map(|t| t * t).sum();
    let denominator = ((s * s - pp) * (s * s - tt)).sqrt();
    if denominator == 0.0 {
        return 0.0;
    }
    (correct * s - pt) / denominator
}

/// Token-overlap F1 of two texts (whitespace tokens, lowercased), as SQuAD scores answers.
pub fn token_f1(answer: &str, target: &str) -> f64 {
    let a: Vec<String> = answer.split_whitespace().map(str::to_lowercase).collect();
    let mut t: Vec<String> = target.split_whitespace().map(str::to_lowercase).collect();
    if a.is_empty() || t.is_empty() {
        return if a.is_empty() && t.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let t_len = t.len() as f64;
    let mut common = 0.0;
    for word in &a {
        if let Some(i) = t.iter().position(|w| w == word) {
            t.swap_remove(i);
            common += 1.0;
        }
    }
    if common == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (common / a.len() as f64, common / t_len);
    2.0 * precision * recall / (precision + recall)
}

/// `metric` over the documents' outcomes.
pub fn aggregate(metric: Metric, outcomes: &[Outcome], seed: u64) -> Result<Estimate> {
    if outcomes.is_empty() {
        return Err(Error::Data(format!(
            "{metric}: no documents were evaluated"
        )));
    }
    let per_doc = |f: &dyn Fn(&Outcome) -> Option<f64>| -> Result<Estimate> {
        let xs = outcomes
            .iter()
            .map(f)
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| Error::Data(format!("{metric} does not apply to these outcomes")))?;
        Ok(mean_with_stderr(&xs))
    };
    let one = |b: bool| if b { 1.0 } else { 0.0 };
    match metric {
        Metric::Acc => per_doc(&|o| match o {
            Outcome::Loglikelihood { is_greedy, .. } => Some(one(*is_greedy)),
            Outcome::MultipleChoice { gold, .. } => {
                Some(one(o.predicted_choice(false) == Some(*gold)))
            }
            _ => None,
        }),
        Metric::AccNorm => per_doc(&|o| match o {
            Outcome::MultipleChoice { gold, .. } => {
                Some(one(o.predicted_choice(true) == Some(*gold)))
            }
            _ => None,
        }),
        Metric::ExactMatch => per_doc(&|o| match o {
            Outcome::Generated { correct, .. } => Some(one(*correct)),
            _ => None,
        }),
        Metric::PassAt(k) => per_doc(&|o| match o {
            Outcome::Generated { samples, .. } if samples.len() >= k => {
                let c = samples.iter().filter(|s| s.correct).count();
                Some(pass_at_k(samples.len(), c, k))
            }
            _ => None,
        })
        .map_err(|_| {
            Error::Other(format!(
                "{metric} needs at least {k} samples per problem: set `repeats` to {k} or more"
            ))
        }),
        Metric::F1 if matches!(outcomes[0], Outcome::Generated { .. }) => per_doc(&|o| match o {
            Outcome::Generated { answer, target, .. } => Some(token_f1(answer, target)),
            _ => None,
        }),
        Metric::F1 | Metric::Mcc => {
            let pairs = choice_pairs(outcomes)
                .ok_or_else(|| Error::Data(format!("{metric} needs multiple-choice outcomes")))?;
            let statistic = if metric == Metric::F1 { f1_binary } else { mcc };
            let resampled =
                |picks: &[usize]| statistic(&picks.iter().map(|&i| pairs[i]).collect::<Vec<_>>());
            Ok(Estimate {
                value: statistic(&pairs),
                stderr: bootstrap_stderr(pairs.len(), seed, resampled),
            })
        }
        Metric::Perplexity | Metric::WordPerplexity | Metric::BitsPerByte => {
            let parts = outcomes
                .iter()
                .map(|o| match (metric, o) {
                    (Metric::Perplexity, Outcome::Loglikelihood { ll, tokens, .. }) => {
                        Some((*ll, *tokens as f64))
                    }
                    (Metric::Perplexity, Outcome::Rolling { ll, tokens, .. }) => {
                        Some((*ll, *tokens as f64))
                    }
                    (Metric::WordPerplexity, Outcome::Rolling { ll, words, .. }) => {
                        Some((*ll, *words as f64))
                    }
                    (Metric::BitsPerByte, Outcome::Rolling { ll, bytes, .. }) => {
                        Some((*ll, *bytes as f64))
                    }
                    _ => None,
                })
                .collect::<Option<Vec<(f64, f64)>>>()
                .ok_or_else(|| Error::Data(format!("{metric} does not apply to these outcomes")))?;
            let ratio = |picks: &mut dyn Iterator<Item = (f64, f64)>| {
                let (ll, units) = picks.fold((0.0, 0.0), |(a, b), (l, u)| (a + l, b + u));
                if metric == Metric::BitsPerByte {
                    -ll / (units * std::f64::consts::LN_2)
                } else {
                    (-ll / units).exp()
                }
            };
            Ok(Estimate {
                value: ratio(&mut parts.iter().copied()),
                stderr: bootstrap_stderr(parts.len(), seed, |picks| {
                    ratio(&mut picks.iter().map(|&i| parts[i]))
                }),
            })
        }
    }
}

/// `(predicted, gold)` of every multiple-choice outcome.
fn choice_pairs(outcomes: &[Outcome]) -> Option<Vec<(usize, usize)>> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::MultipleChoice { gold, .. } => Some((o.predicted_choice(false)?, *gold)),
            _ => None,
        })
        .collect()
}

/// Bits per byte of the corpus's own distribution over the same documents: the floor no model
/// can beat (`None` unless every document's probability is known).
pub fn floor_bits_per_byte(outcomes: &[Outcome]) -> Option<f64> {
    let (mut nats, mut bytes) = (0.0, 0usize);
    for o in outcomes {
        let Outcome::Rolling {
            floor_nats: Some(f),
            bytes: b,
            ..
        } = o
        else {
            return None;
        };
        nats += f;
        bytes += b;
    }
    Some(nats / (bytes.max(1) as f64 * std::f64::consts::LN_2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::output::Sample;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn choice(lls: &[f64], bytes: &[usize], gold: usize) -> Outcome {
        Outcome::MultipleChoice {
            lls: lls.to_vec(),
            choice_bytes: bytes.to_vec(),
            gold,
        }
    }

    #[test]
    fn mean_and_stderr_by_hand() {
        // 1,0,1,1: mean 0.75, sample variance 0.25, stderr sqrt(0.25/4) = 0.25.
        let e = mean_with_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert!(close(e.value, 0.75) && close(e.stderr, 0.25), "{e:?}");
    }

    #[test]
    fn acc_and_acc_norm_by_hand() {
        let docs = [
            // Raw: choice 0 (−2 > −3); per byte: choice 1 (−3/6 = −0.5 > −2/2 = −1). Gold 1.
            choice(&[-2.0, -3.0], &[2, 6], 1),
            // Both pick choice 0. Gold 0.
            choice(&[-1.0, -5.0], &[1, 1], 0),
        ];
        let acc = aggregate(Metric::Acc, &docs, 0).unwrap();
        let norm = aggregate(Metric::AccNorm, &docs, 0).unwrap();
        assert!(close(acc.value, 0.5) && close(acc.stderr, 0.5), "{acc:?}");
        assert!(
            close(norm.value, 1.0) && close(norm.stderr, 0.0),
            "{norm:?}"
        );
    }

    #[test]
    fn f1_and_mcc_by_hand() {
        // tp=2 (1,1)(1,1), fp=1 (1,0), fn=1 (0,1), tn=1 (0,0).
        let pairs = [(1, 1), (1, 1), (1, 0), (0, 1), (0, 0)];
        assert!(close(f1_binary(&pairs), 4.0 / 6.0));
        // (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2−1)/sqrt(3·3·2·2) = 1/6.
        assert!(close(mcc(&pairs), 1.0 / 6.0), "{}", mcc(&pairs));
        assert!(close(mcc(&[(0, 0), (1, 1)]), 1.0));
        assert!(close(mcc(&[(0, 1), (1, 0)]), -1.0));
        assert_eq!(mcc(&[(1, 0), (1, 1)]), 0.0, "constant prediction");
        let docs: Vec<Outcome> = pairs
            .iter()
            .map(|&(p, g)| {
                let lls = if p == 1 { [-2.0, -1.0] } else { [-1.0, -2.0] };
                choice(&lls, &[1, 1], g)
            })
            .collect();
        let f1 = aggregate(Metric::F1, &docs, 3).unwrap();
        assert!(close(f1.value, 4.0 / 6.0));
        assert!(f1.stderr > 0.0 && f1.stderr < 0.5, "{f1:?}");
    }

    #[test]
    fn token_f1_by_hand() {
        // common {the, cat}: precision 2/3, recall 2/4, F1 = 2·(2/3)(1/2)/(2/3+1/2) = 4/7.
        assert!(close(token_f1("the cat sat", "The cat is here"), 4.0 / 7.0));
        assert_eq!(token_f1("", "x"), 0.0);
    }

    #[test]
    fn perplexity_and_bits_per_byte_by_hand() {
        let docs = [
            Outcome::Rolling {
                ll: -10.0,
                tokens: 5,
                bytes: 20,
                words: 4,
                floor_nats: Some(4.0),
            },
            Outcome::Rolling {
                ll: -20.0,
                tokens: 5,
                bytes: 10,
                words: 2,
                floor_nats: Some(6.0),
            },
        ];
        let ppl = aggregate(Metric::Perplexity, &docs, 0).unwrap();
        assert!(close(ppl.value, 3.0f64.exp()), "{ppl:?}");
        let wppl = aggregate(Metric::WordPerplexity, &docs, 0).unwrap();
        assert!(close(wppl.value, 5.0f64.exp()));
        let bpb = aggregate(Metric::BitsPerByte, &docs, 0).unwrap();
        assert!(close(bpb.value, 1.0 / std::f64::consts::LN_2));
        assert!(close(
            floor_bits_per_byte(&docs).unwrap(),
            (10.0 / 30.0) / std::f64::consts::LN_2
        ));
    }

    #[test]
    fn pass_at_k_over_documents() {
        let doc = |passes: &[bool]| Outcome::Generated {
            samples: passes
                .iter()
                .map(|&p| Sample {
                    text: String::new(),
                    filtered: String::new(),
                    correct: p,
                    reason: None,
                })
                .collect(),
            answer: String::new(),
            target: String::new(),
            correct: passes[0],
        };
        let docs = [doc(&[true, false, false, false]), doc(&[false; 4])];
        let p1 = aggregate(Metric::PassAt(1), &docs, 0).unwrap();
        assert!(close(p1.value, 0.125));
        let p2 = aggregate(Metric::PassAt(2), &docs, 0).unwrap();
        // 1 − C(3,2)/C(4,2) = 0.5 for the first problem, 0 for the second.
        assert!(close(p2.value, 0.25));
        let err = aggregate(Metric::PassAt(5), &docs, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("repeats"), "{err}");
    }

    #[test]
    fn metric_names_round_trip_and_unknown_is_named() {
        for name in [
            "acc",
            "acc_norm",
            "exact_match",
            "f1",
            "mcc",
            "pass@10",
            "bits_per_byte",
        ] {
            assert_eq!(Metric::parse(name).unwrap().to_string(), name);
        }
        let err = Metric::parse("bleu").unwrap_err().to_string();
        assert!(err.contains("`bleu`"), "{err}");
    }
}
