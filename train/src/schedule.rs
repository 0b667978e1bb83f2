//! The learning-rate schedule: linear warmup from 0 to `lr` over `warmup` steps, then cosine
//! decay to `min_lr` at the last step (nanoGPT's `get_lr`).

use std::f64::consts::PI;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The learning rate of step `step` (0-based: the first optimiser step is step 0).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / decay_steps as f64).min(1.0);
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_then_cosine_reaches_min_lr() {
        let s = Schedule {
            lr: 1.0,
            min_lr: 0.1,
            warmup: 10,
            total_steps: 110,
        };
        assert!(close(s.lr_at(0), 0.1));
        assert!(close(s.lr_at(4), 0.5));
        assert!(close(s.lr_at(9), 1.0));
        assert!(close(s.lr_at(10), 1.0));
        // Halfway through the decay: the midpoint of lr and min_lr.
        assert!(close(s.lr_at(60), 0.55));
        assert!(close(s.lr_at(110), 0.1));
        assert!(close(s.lr_at(500), 0.1));
        let mut previous = f64::INFINITY;
        for step in 10..=110 {
            let lr = s.lr_at(step);
            assert!(lr <= previous + 1e-15, "not decreasing at {step}");
            previous = lr;
        }
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = Schedule {
            lr: 2.0,
            min_lr: 0.0,
            warmup: 0,
            total_steps: 4,
        };
        assert!(close(s.lr_at(0), 2.0));
        assert!(close(s.lr_at(2), 1.0));
    }
}
