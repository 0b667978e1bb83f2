//! Routing: from the router's scores `(tokens, experts)` to which tokens each expert processes.
//! Selection is discrete (no gradient), so it runs on the scores as plain numbers; the weights
//! that multiply the expert outputs are gathered from the router's probabilities as tensors
//! (`mod.rs`), so gradients reach the router through them.
//!
//! The result lists the assignments grouped by expert (expert 0's tokens first, each group in
//! token order), which is what the grouped dispatch (`experts.rs`) gathers and scatters by.

use super::config::{MoeConfig, RouterKind};

/// The assignments of one routed pass.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// The token of each assignment, grouped by expert.
    pub tokens: Vec<u32>,
    /// Each assignment's entry `token · experts + expert` in the flat `(tokens, experts)` weights.
    pub weight_index: Vec<u32>,
    /// Assignments per expert (the group sizes of `tokens`).
    pub counts: Vec<usize>,
    /// Tokens the router chose for each expert before capacity (the load it asked for).
    pub chosen: Vec<usize>,
    /// `(tokens, experts)`: 1 where a token is processed by an expert, else 0.
    pub mask: Vec<f32>,
    /// Tokens processed by no expert (over capacity; `expert_choice`: picked by none).
    pub dropped: usize,
    pub n_tokens: usize,
}

/// Routes `n` tokens over `scores` (`n · experts`, row-major; the probabilities plus any
/// selection bias). `capacity`: the slots per expert, `None` = unbounded.
pub fn route(scores: &[f32], n: usize, config: &MoeConfig, capacity: Option<usize>) -> Routing {
    let e = config.experts;
    debug_assert_eq!(scores.len(), n * e);
    let mut picked: Vec<Vec<u32>> = vec![Vec::new(); e];
    let mut chosen = vec![0usize; e];
    match config.router {
        RouterKind::Topk | RouterKind::Switch => {
            let k = if config.router == RouterKind::Switch {
                1
            } else {
                config.top_k
            };
            for t in 0..n {
                let row = &scores[t * e..(t + 1) * e];
                for expert in top_indices(row, k) {
                    chosen[expert] += 1;
                    // Switch: first come, first served, in token order.
                    if capacity.is_none_or(|c| picked[expert].len() < c) {
                        picked[expert].push(t as u32);
                    }
                }
            }
        }
        RouterKind::ExpertChoice => {
            let c = capacity.unwrap_or(n).min(n);
            let mut column = vec![0f32; n];
            for (expert, tokens) in picked.iter_mut().enumerate() {
                for (t, slot) in column.iter_mut().enumerate() {
                    *slot = scores[t * e + expert];
                }
                let mut best = top_indices(&column, c);
                best.sort_unstable();
                chosen[expert] = best.len();
                tokens.extend(best.into_iter().map(|t| t as u32));
            }
        }
    }
    let mut routing = Routing {
        mask: vec![0.0; n * e],
        chosen,
        n_tokens: n,
        ..Routing::default()
    };
    for (expert, tokens) in picked.iter().enumerate() {
        routing.counts.push(tokens.len());
        for &t in tokens {
            let flat = t as usize * e + expert;
            routing.mask[flat] = 1.0;
            routing.tokens.push(t);
            routing.weight_index.push(flat as u32);
        }
    }
    routing.dropped = (0..n)
        .filter(|t| routing.mask[t * e..(t + 1) * e].iter().all(|m| *m == 0.0))
        .count();
    routing
}

/// Indices of the `k` largest values, largest first; ties go to the lower index, NaN loses.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let key = |i: usize| {
        if values[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            values[i]
        }
    };
    let k = k.min(values.len());
    if k < values.len() {
        order.select_nth_unstable_by(k, |&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        order.truncate(k);
    }
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(router: RouterKind, experts: usize, top_k: usize) -> MoeConfig {
        MoeConfig {
            router,
            experts,
            top_k,
            ..MoeConfig::default()
        }
    }

    #[test]
    fn topk_picks_the_best_experts_and_groups_by_expert() {
        // 3 tokens, 3 experts.
        let scores = [0.1, 0.7, 0.2, 0.5, 0.1, 0.4, 0.3, 0.3, 0.4];
        let r = route(&scores, 3, &config(RouterKind::Topk, 3, 2), None);
        assert_eq!(r.counts, vec![2, 1, 3]);
        assert_eq!(r.tokens, vec![1, 2, 0, 0, 1, 2]);
        assert_eq!(r.weight_index, vec![3, 6, 1, 2, 5, 8]);
        assert_eq!(r.dropped, 0);
        assert_eq!(r.mask.iter().sum::<f32>(), 6.0);
    }

    #[test]
    fn switch_drops_tokens_over_capacity_in_token_order() {
        let scores = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.1, 0.9];
        let r = route(&scores, 4, &config(RouterKind::Switch, 2, 1), Some(2));
        assert_eq!(r.chosen, vec![3, 1]);
        assert_eq!(r.counts, vec![2, 1]);
        assert_eq!(r.tokens, vec![0, 1, 3]);
        assert_eq!(r.dropped, 1);
    }

    #[test]
    fn expert_choice_fills_every_expert_to_capacity() {
        let scores = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4];
        let r = route(&scores, 4, &config(RouterKind::ExpertChoice, 2, 1), Some(2));
        assert_eq!(r.counts, vec![2, 2]);
        assert_eq!(r.tokens, vec![0, 1, 2, 3]);
        assert_eq!(r.dropped, 0);
        let r = route(&scores, 4, &config(RouterKind::ExpertChoice, 2, 1), Some(1));
        assert_eq!(r.tokens, vec![0, 3]);
        assert_eq!(r.dropped, 2);
    }
}
