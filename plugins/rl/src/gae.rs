//! Generalised advantage estimation (Schulman et al. 2016) over one completion's tokens:
//!
//! ```text
//! δ_t = r_t + γ V_{t+1} − V_t          (V_T = 0: the episode ends after the last token)
//! A_t = δ_t + γ λ A_{t+1}              R_t = A_t + V_t  (the value targets)
//! ```
//!
//! `λ = 1` gives Monte-Carlo returns minus the baseline, `λ = 0` one-step TD errors.

/// Advantages and returns of one sequence of per-token `rewards` and `values` (same length).
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lam: f32) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(rewards.len(), values.len(), "one value per reward");
    let n = rewards.len();
    let mut advantages = vec![0f32; n];
    let mut next_advantage = 0f32;
    let mut next_value = 0f32;
    for t in (0..n).rev() {
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lam * next_advantage;
        advantages[t] = next_advantage;
        next_value = values[t];
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}
