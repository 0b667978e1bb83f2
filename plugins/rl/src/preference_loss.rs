//! The offline preference losses of `rl("dpo", #{ loss })` (and the `kto`, `orpo`, `simpo`
//! components, which are `dpo` with that loss), as functions of per-sequence log-probabilities
//! so each is checked against hand-computed values. For `n` pairs, `chosen` / `rejected` are the
//! policy's summed answer log-probabilities `(n,)`, `*_ref` the frozen reference's, `*_tokens`
//! the answer lengths (answer + end-of-text tokens).
//!
//! ```text
//! sigmoid (DPO, Rafailov 2023):  h = Δc − Δr, Δ = log π − log π_ref;  −(1−ε) log σ(βh) − ε log σ(−βh)
//! ipo (Azar 2023):               (h − 1/(2β))²
//! kto (Ethayarajh 2024):         z = max(0, mean Δ over the batch), no gradient;
//!                                λ_D (1 − σ(β(Δc − z))) per desirable answer,
//!                                λ_U (1 − σ(β(z − Δr))) per undesirable one, mean over all 2n
//! orpo (Hong 2024), no reference: ā = log π / tokens;  odds(y) = ā − log(1 − e^ā);
//!                                −ā_c − β log σ(odds_c − odds_r)
//! simpo (Meng 2024), no reference: −log σ(β(ā_c − ā_r) − γ)
//! ```
//!
//! KTO learns from unpaired examples: each pair gives one desirable and one undesirable answer,
//! treated independently; the only coupling is the batch's KL estimate `z` (the paper estimates
//! it from mismatched prompt/answer pairs; the mean log-ratio of the batch's own answers is the
//! cheaper estimate several implementations use).

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::Result;
use llmlab_train::loss::log_sigmoid;

/// The loss `rl("dpo", #{ loss })` minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum PreferenceLoss {
    Sigmoid,
    Ipo,
    Kto,
    Orpo,
    Simpo,
}

impl PreferenceLoss {
    /// The component name that presets this loss (`rl("simpo")`), `dpo` for DPO's own.
    pub fn component(self) -> &'static str {
        match self {
            PreferenceLoss::Sigmoid | PreferenceLoss::Ipo => "dpo",
            PreferenceLoss::Kto => "kto",
            PreferenceLoss::Orpo => "orpo",
            PreferenceLoss::Simpo => "simpo",
        }
    }

    /// ORPO and SimPO need no frozen reference model.
    pub fn needs_reference(self) -> bool {
        !matches!(self, PreferenceLoss::Orpo | PreferenceLoss::Simpo)
    }
}

/// The settings the losses read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSettings {
    pub loss: PreferenceLoss,
    pub beta: f64,
    pub label_smoothing: f64,
    pub gamma: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
}

/// Per-sequence inputs of one batch of `n` pairs, all `(n,)` f32.
pub struct Sequences<'a> {
    pub chosen: &'a Tensor,
    pub rejected: &'a Tensor,
    /// The reference's log-probabilities (constants); `None` for the reference-free losses.
    pub reference: Option<(&'a Tensor, &'a Tensor)>,
    pub chosen_tokens: &'a Tensor,
    pub rejected_tokens: &'a Tensor,
    /// KTO: the batch's mean log-ratio when the batch is split over data-parallel ranks (each
    /// rank holds a shard, the estimate is the global batch's); `None`: this batch's own.
    pub kl_mean: Option<f64>,
}

/// The loss (a scalar) and each pair's margin `(n,)`: what "the policy prefers the chosen
/// answer" means for this loss (`h` for the reference-based losses, the length-normalised
/// log-probability difference for SimPO, the log-odds difference for ORPO); accuracy is
/// the fraction of positive margins.
pub struct PairLoss {
    pub loss: Tensor,
    pub margin: Tensor,
}

pub fn pair_loss(s: &LossSettings, x: &Sequences<'_>) -> Result<PairLoss> {
    let beta = s.beta;
    let ratios = || -> Result<(Tensor, Tensor)> {
        let (ref_c, ref_r) = x
            .reference
            .expect("reference-based losses are given the reference's log-probabilities");
        Ok(((x.chosen - ref_c)?, (x.rejected - ref_r)?))
    };
    match s.loss {
        PreferenceLoss::Sigmoid => {
            let (dc, dr) = ratios()?;
            let h = (dc - dr)?;
            let bh = h.affine(beta, 0.0)?;
            let eps = s.label_smoothing;
            let mut loss = log_sigmoid(&bh)?.affine(-(1.0 - eps), 0.0)?;
            if eps > 0.0 {
                loss = (loss + log_sigmoid(&bh.neg()?)?.affine(-eps, 0.0)?)?;
            }
            Ok(PairLoss {
                loss: loss.mean_all()?,
                margin: h,
            })
        }
        PreferenceLoss::Ipo => {
            let (dc, dr) = ratios()?;
            let h = (dc - dr)?;
            let loss = h.affine(1.0, -1.0 / (2.0 * beta))?.sqr()?.mean_all()?;
            Ok(PairLoss { loss, margin: h })
        }
        PreferenceLoss::Kto => {
            let (dc, dr) = ratios()?;
            let z = match x.kl_mean {
                Some(mean) => Tensor::new(mean.max(0.0) as f32, dc.device())?,
                None => Tensor::cat(&[&dc, &dr], 0)?.mean_all()?.detach().relu()?,
            };
            let desirable = log_sigmoid(&dc.broadcast_sub(&z)?.affine(beta, 0.0)?)?
                .exp()?
                .affine(-s.desirable_weight, s.desirable_weight)?;
            let undesirable = log_sigmoid(&dr.broadcast_sub(&z)?.affine(-beta, 0.0)?)?
                .exp()?
                .affine(-s.undesirable_weight, s.undesirable_weight)?;
            let loss = Tensor::cat(&[&desirable, &undesirable], 0)?.mean_all()?;
            Ok(PairLoss {
                loss,
                margin: (dc - dr)?,
            })
        }
        PreferenceLoss::Orpo => {
            let avg_c = (x.chosen / x.chosen_tokens)?;
            let avg_r = (x.rejected / x.rejected_tokens)?;
            let odds = (log_odds(&avg_c)? - log_odds(&avg_r)?)?;
            let loss = (avg_c.neg()? - log_sigmoid(&odds)?.affine(beta, 0.0)?)?.mean_all()?;
            Ok(PairLoss { loss, margin: odds })
        }
        PreferenceLoss::Simpo => {
            let diff = ((x.chosen / x.chosen_tokens)? - (x.rejected / x.rejected_tokens)?)?;
            let loss = log_sigmoid(&diff.affine(beta, -s.gamma)?)?
                .neg()?
                .mean_all()?;
            Ok(PairLoss { loss, margin: diff })
        }
    }
}

/// `log(p / (1 − p))` from `log p` (≤ 0): `a − log(1 − e^a)`, with `1 − e^a` kept above the
/// smallest normal f32 so a certain answer (`a = 0`) gives a large finite value, not ∞.
fn log_odds(log_p: &Tensor) -> Result<Tensor> {
    let one_minus_p = log_p
        .exp()?
        .affine(-1.0, 1.0)?
        .clamp(f32::MIN_POSITIVE, 1.0)?;
    Ok((log_p - one_minus_p.log()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::candle::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn settings(loss: PreferenceLoss, beta: f64) -> LossSettings {
        LossSettings {
            loss,
            beta,
            label_smoothing: 0.0,
            gamma: 0.0,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
        }
    }

    fn close(a: &Tensor, expected: f64) {
        let a = a.to_scalar::<f32>().unwrap() as f64;
        assert!((a - expected).abs() < 1e-5, "{a} vs {expected}");
    }

    /// Two pairs: policy and reference log-probabilities, answers of 2/4 and 1/3 tokens.
    fn pairs() -> [Tensor; 6] {
        [
            t(&[-2.0, -3.0]), // chosen
            t(&[-4.0, -1.0]), // rejected
            t(&[-2.5, -2.0]), // chosen, reference
            t(&[-3.0, -1.5]), // rejected, reference
            t(&[2.0, 1.0]),   // chosen tokens
            t(&[4.0, 3.0]),   // rejected tokens
        ]
    }

    fn run(s: LossSettings) -> PairLoss {
        let [c, r, rc, rr, nc, nr] = pairs();
        pair_loss(
            &s,
            &Sequences {
                chosen: &c,
                rejected: &r,
                reference: Some((&rc, &rr)),
                chosen_tokens: &nc,
                rejected_tokens: &nr,
                kl_mean: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn dpo_sigmoid_matches_hand_computed_value() {
        // Δc = [0.5, -1.0], Δr = [-1.0, 0.5], h = [1.5, -1.5]; β = 0.1.
        let out = run(settings(PreferenceLoss::Sigmoid, 0.1));
        let expected = -(sigmoid(0.15).ln() + sigmoid(-0.15).ln()) / 2.0;
        close(&out.loss, expected);
    }

    #[test]
    fn kto_matches_hand_computed_value() {
        // Δ over the batch: 0.5, -1.0, -1.0, 0.5 → mean -0.25 → z = max(0, -0.25) = 0.
        // Desirable: 1 − σ(0.1·0.5), 1 − σ(0.1·−1.0); undesirable: 1 − σ(−0.1·−1.0), 1 − σ(−0.1·0.5).
        let out = run(settings(PreferenceLoss::Kto, 0.1));
        let expected = ((1.0 - sigmoid(0.05))
            + (1.0 - sigmoid(-0.1))
            + (1.0 - sigmoid(0.1))
            + (1.0 - sigmoid(-0.05)))
            / 4.0;
        close(&out.loss, expected);
        // With weights and a positive z: chosen Δ raised so the mean is 0.5 (z = 0.5).
        let (c, r, rc, rr, nc, nr) = (
            t(&[0.0, 1.0]),
            t(&[-4.0, -1.0]),
            t(&[-2.5, -2.0]),
            t(&[-3.0, -1.5]),
            t(&[2.0, 1.0]),
            t(&[4.0, 3.0]),
        );
        // Δc = [2.5, 3.0], Δr = [-1.0, 0.5]; mean = 1.25 → z = 1.25.
        let s = LossSettings {
            desirable_weight: 2.0,
            undesirable_weight: 0.5,
            ..settings(PreferenceLoss::Kto, 1.0)
        };
        let out = pair_loss(
            &s,
            &Sequences {
                chosen: &c,
                rejected: &r,
                reference: Some((&rc, &rr)),
                chosen_tokens: &nc,
                rejected_tokens: &nr,
                kl_mean: None,
            },
        )
        .unwrap();
        let expected = (2.0 * (1.0 - sigmoid(1.25))
            + 2.0 * (1.0 - sigmoid(1.75))
            + 0.5 * (1.0 - sigmoid(2.25))
            + 0.5 * (1.0 - sigmoid(0.75)))
            / 4.0;
        close(&out.loss, expected);
    }

    #[test]
    fn orpo_matches_hand_computed_value() {
        // ā_c = [-1.0, -3.0], ā_r = [-1.0, -1/3]; odds(a) = a − ln(1 − e^a); λ = β = 0.5.
        let out = run(settings(PreferenceLoss::Orpo, 0.5));
        let odds = |a: f64| a - (1.0 - a.exp()).ln();
        let pair = |ac: f64, ar: f64| -ac - 0.5 * sigmoid(odds(ac) - odds(ar)).ln();
        let expected = (pair(-1.0, -1.0) + pair(-3.0, -1.0 / 3.0)) / 2.0;
        close(&out.loss, expected);
    }

    #[test]
    fn simpo_matches_hand_computed_value() {
        // ā_c − ā_r = [0.0, -8/3]; β = 2, γ = 0.5: −ln σ(−0.5), −ln σ(−16/3 − 0.5).
        let s = LossSettings {
            gamma: 0.5,
            ..settings(PreferenceLoss::Simpo, 2.0)
        };
        let out = run(s);
        let expected = -(sigmoid(-0.5).ln() + sigmoid(-16.0 / 3.0 - 0.5).ln()) / 2.0;
        close(&out.loss, expected);
        let margin: Vec<f32> = out.margin.to_vec1().unwrap();
        assert!(margin[0].abs() < 1e-6 && (margin[1] + 8.0 / 3.0).abs() < 1e-5);
    }

    #[test]
    fn ipo_matches_hand_computed_value() {
        // h = [1.5, -1.5], β = 0.25: (1.5 − 2)², (−1.5 − 2)².
        let out = run(settings(PreferenceLoss::Ipo, 0.25));
        close(&out.loss, (0.25 + 12.25) / 2.0);
    }

    #[test]
    fn orpo_is_finite_for_a_certain_answer() {
        let out = pair_loss(
            &settings(PreferenceLoss::Orpo, 0.1),
            &Sequences {
                chosen: &t(&[0.0]),
                rejected: &t(&[-1.0]),
                reference: None,
                chosen_tokens: &t(&[1.0]),
                rejected_tokens: &t(&[1.0]),
                kl_mean: None,
            },
        )
        .unwrap();
        assert!(out.loss.to_scalar::<f32>().unwrap().is_finite());
    }

    /// Data parallel: a KTO batch split into shards, each given the global batch's mean
    /// log-ratio, has shard losses that, weighted by their share of pairs, add up to the whole
    /// batch's loss (the shards' own means would not: z is positive here).
    #[test]
    fn kto_shards_with_the_global_kl_mean_add_up_to_the_whole_batch() {
        let [c, r, rc, rr, nc, nr] = pairs();
        let s = settings(PreferenceLoss::Kto, 1.0);
        let c = (c + t(&[5.0, 0.0])).unwrap();
        let seqs = |i: usize, kl_mean: Option<f64>| -> Tensor {
            let part = |x: &Tensor| x.narrow(0, i, 1).unwrap();
            pair_loss(
                &s,
                &Sequences {
                    chosen: &part(&c),
                    rejected: &part(&r),
                    reference: Some((&part(&rc), &part(&rr))),
                    chosen_tokens: &part(&nc),
                    rejected_tokens: &part(&nr),
                    kl_mean,
                },
            )
            .unwrap()
            .loss
        };
        let whole = pair_loss(
            &s,
            &Sequences {
                chosen: &c,
                rejected: &r,
                reference: Some((&rc, &rr)),
                chosen_tokens: &nc,
                rejected_tokens: &nr,
                kl_mean: None,
            },
        )
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap() as f64;
        // Δc = [5.5, -1.0], Δr = [-1.0, 0.5]: the global mean is 1.0; the shards' own are
        // 2.25 and -0.25 (z = 0). (With Δc₀ = 3.5 the two happened to agree within 1e-3.)
        let scalar = |t: Tensor| t.to_scalar::<f32>().unwrap() as f64;
        let sharded = 0.5 * scalar(seqs(0, Some(1.0))) + 0.5 * scalar(seqs(1, Some(1.0)));
        assert!((sharded - whole).abs() < 1e-6, "{sharded} vs {whole}");
        let own = 0.5 * scalar(seqs(0, None)) + 0.5 * scalar(seqs(1, None));
        assert!(
            (own - whole).abs() > 5e-3,
            "the shards' own z would differ: {own} vs {whole}"
        );
    }
}
