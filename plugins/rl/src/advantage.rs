//! Advantages from scalar rewards: GRPO's group normalisation (Shao et al. 2024), where each
//! completion is compared with the other completions of the same prompt, and batch whitening
//! (PPO's advantage normalisation). Plain numbers in, plain numbers out, so both are checked
//! against hand-computed values.

/// `A_i = (r_i − mean(group)) / (std(group) + eps)` for consecutive groups of `group_size`
/// rewards (`scale = false`: `r_i − mean(group)`, the "Dr. GRPO" variant without the division).
/// The standard deviation is the population one (divide by `n`), so a group whose rewards are all
/// equal has advantages exactly 0: it carries no learning signal.
pub fn group_normalized(rewards: &[f32], group_size: usize, scale: bool, eps: f32) -> Vec<f32> {
    assert!(
        group_size > 0 && rewards.len().is_multiple_of(group_size),
        "rewards come in whole groups"
    );
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        let n = group.len() as f32;
        let mean = group.iter().sum::<f32>() / n;
        let std = (group.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / n).sqrt();
        out.extend(group.iter().map(|r| {
            if scale && std == 0.0 {
                0.0
            } else if scale {
                (r - mean) / (std + eps)
            } else {
                r - mean
            }
        }));
    }
    out
}

/// Whitens `values` in place to mean 0, standard deviation 1 (population std, plus `eps`).
pub fn whiten(values: &mut [f32], eps: f32) {
    if values.is_empty() {
        return;
    }
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let scale = 1.0 / (var.sqrt() + eps as f64);
    for v in values.iter_mut() {
        *v = ((*v as f64 - mean) * scale) as f32;
    }
}

/// Fraction of groups whose rewards are all equal (no signal for GRPO).
pub fn flat_group_fraction(rewards: &[f32], group_size: usize) -> f64 {
    let groups = rewards.chunks(group_size);
    let n = groups.len().max(1) as f64;
    rewards
        .chunks(group_size)
        .filter(|g| g.iter().all(|&r| r == g[0]))
        .count() as f64
        / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitening_gives_mean_zero_unit_std() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        whiten(&mut v, 0.0);
        // mean 2.5, population std sqrt(1.25)
        let s = 1.25f32.sqrt();
        let expected = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }

    #[test]
    fn flat_groups_are_counted() {
        assert_eq!(flat_group_fraction(&[1.0, 1.0, 0.0, 1.0], 2), 0.5);
    }
}
