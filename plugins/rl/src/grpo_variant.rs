//! The GRPO variants people compare, as `rl("grpo", #{ loss_type, importance })`:
//!
//! | `loss_type` | advantage of completion `i` | also |
//! | --- | --- | --- |
//! | `grpo` (Shao et al. 2024) | `(r_i − mean(group)) / (std(group) + ε)` | `scale_rewards: false` = Dr. GRPO |
//! | `dapo` (Yu et al. 2025) | as `grpo` | token-level loss, clip-higher (`clip_eps_high` 0.28), dynamic sampling (only groups whose rewards differ are learned from; more prompts are sampled to fill the batch), soft overlong penalty |
//! | `rloo` (Ahmadian et al. 2024) | `r_i − mean(r_j, j ≠ i)`: leave-one-out baseline | |
//! | `reinforce_pp` (Hu 2025, REINFORCE++) | `(r_i − mean(batch)) / (std(batch) + ε)`: global normalisation, no group baseline | |
//!
//! `importance: "sequence"` (GSPO, Zheng et al. 2025) replaces the per-token ratio with one per
//! completion, `s_i = exp(mean_t(log π − log π_old))`, clipped and applied to the whole
//! completion ([`crate::policy_loss`]); `"token"` is the per-token ratio of PPO/GRPO.
//!
//! The overlong penalty (DAPO eq. 13) with `L = max_tokens` and buffer `B`: 0 for a
//! completion of at most `L − B` tokens, `((L − B) − len) / B` (from 0 down to −1) inside the
//! buffer, times `overlong_penalty`, added to the reward before advantages.

use llmlab_plugin_api::serde::{Deserialize, Serialize};

use crate::advantage;

/// Which advantage estimator and loss shape `grpo` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "snake_case")]
pub enum LossType {
    Grpo,
    Dapo,
    Rloo,
    ReinforcePp,
}

/// The level of the importance ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Importance {
    Token,
    Sequence,
}

/// Advantages of `rewards` (consecutive groups of `group_size`) for `loss_type`.
pub fn advantages(
    loss_type: LossType,
    rewards: &[f32],
    group_size: usize,
    scale: bool,
    eps: f32,
) -> Vec<f32> {
    match loss_type {
        LossType::Grpo | LossType::Dapo => {
            advantage::group_normalized(rewards, group_size, scale, eps)
        }
        LossType::Rloo => leave_one_out(rewards, group_size),
        LossType::ReinforcePp => {
            let mut a = rewards.to_vec();
            advantage::whiten(&mut a, eps);
            a
        }
    }
}

/// `r_i − (Σ_group r − r_i) / (G − 1)`: each completion against the mean of the others.
pub fn leave_one_out(rewards: &[f32], group_size: usize) -> Vec<f32> {
    assert!(group_size >= 2 && rewards.len().is_multiple_of(group_size));
    rewards
        .chunks(group_size)
        .flat_map(|g| {
            let sum: f32 = g.iter().sum();
            let others = (g.len() - 1) as f32;
            g.iter().map(move |&r| r - (sum - r) / others)
        })
        .collect()
}

/// DAPO's soft overlong punishment of a completion of `len` tokens (see the module docs).
pub fn overlong_penalty(len: usize, max_tokens: usize, buffer: usize, weight: f64) -> f32 {
    let free = max_tokens.saturating_sub(buffer);
    if buffer == 0 || len <= free {
        return 0.0;
    }
    let over = (len.min(max_tokens) - free) as f64 / buffer as f64;
    (-over * weight) as f32
}

/// Indices of the groups whose rewards are not all equal (DAPO's dynamic sampling keeps them).
pub fn informative_groups(rewards: &[f32], group_size: usize) -> Vec<usize> {
    rewards
        .chunks(group_size)
        .enumerate()
        .filter(|(_, g)| g.iter().any(|&r| r != g[0]))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rloo_baseline_is_the_mean_of_the_others() {
        // Group [1, 0, 0, 1]: others' means 1/3, 2/3, 2/3, 1/3.
        let a = leave_one_out(&[1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], 4);
        let expected = [
            2.0 / 3.0,
            -2.0 / 3.0,
            -2.0 / 3.0,
            2.0 / 3.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        for (x, y) in a.iter().zip(expected) {
            assert!((x - y).abs() < 1e-6, "{a:?}");
        }
    }

    #[test]
    fn reinforce_pp_normalises_over_the_whole_batch() {
        // Rewards [1, 0, 0, 0] in two groups of 2: batch mean 0.25, std sqrt(0.1875), no group
        // baseline (the flat second group still gets −0.25/std each).
        let a = advantages(LossType::ReinforcePp, &[1.0, 0.0, 0.0, 0.0], 2, true, 0.0);
        let s = 0.1875f32.sqrt();
        let expected = [0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s];
        for (x, y) in a.iter().zip(expected) {
            assert!((x - y).abs() < 1e-5, "{a:?}");
        }
    }

    #[test]
    fn overlong_penalty_ramps_inside_the_buffer() {
        // max 16, buffer 4: free up to 12 tokens, then −1/4 per token down to −1 at 16.
        assert_eq!(overlong_penalty(12, 16, 4, 1.0), 0.0);
        assert_eq!(overlong_penalty(13, 16, 4, 1.0), -0.25);
        assert_eq!(overlong_penalty(16, 16, 4, 1.0), -1.0);
        assert_eq!(overlong_penalty(14, 16, 4, 0.5), -0.25);
        assert_eq!(overlong_penalty(16, 16, 0, 1.0), 0.0);
    }

    #[test]
    fn dynamic_sampling_keeps_groups_with_reward_variance() {
        assert_eq!(
            informative_groups(&[1.0, 1.0, 0.0, 1.0, 0.0, 0.0], 2),
            vec![1]
        );
    }
}
