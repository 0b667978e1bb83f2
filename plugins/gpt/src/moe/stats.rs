//! What a router did in one pass, and the sums over the training passes between two reads of
//! `Model::take_train_metrics` (a trainer step with gradient accumulation makes several).
//!
//! Metric names, per MoE block `i`: `moe.h{i}.load.{e}` (fraction of the router's choices that
//! went to expert `e`; 1/experts is fair), `moe.h{i}.max_load` (the largest load over the fair
//! share), `moe.h{i}.dropped` (fraction of tokens no expert processed), `moe.h{i}.entropy` (mean
//! router entropy in nats), `moe.h{i}.aux_loss` and `moe.h{i}.z_loss` (the terms as added to the
//! loss), and over all MoE blocks `moe.max_load` and `moe.dropped`.

use std::sync::{Arc, Mutex};

use llmlab_plugin_api::serde_json::{json, Value};

/// One MoE block's routing in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerStats {
    /// Fraction of the router's choices per expert.
    pub load: Vec<f64>,
    pub dropped: f64,
    pub entropy: f64,
    pub aux_loss: f64,
    pub z_loss: f64,
}

impl LayerStats {
    /// The largest expert load over the fair share `1 / experts`.
    pub fn max_load(&self) -> f64 {
        let fair = 1.0 / self.load.len().max(1) as f64;
        self.load.iter().copied().fold(0.0, f64::max) / fair
    }

    pub fn to_json(&self, layer: usize) -> Value {
        json!({
            "layer": layer,
            "load": self.load,
            "max_load": self.max_load(),
            "dropped": self.dropped,
            "entropy": self.entropy,
            "aux_loss": self.aux_loss,
            "z_loss": self.z_loss,
        })
    }

    /// This block's metrics (`moe.h{layer}.*`).
    pub fn metrics(&self, layer: usize, out: &mut Vec<(String, f64)>) {
        let key = |name: &str| format!("moe.h{layer}.{name}");
        for (e, load) in self.load.iter().enumerate() {
            out.push((key(&format!("load.{e}")), *load));
        }
        out.push((key("max_load"), self.max_load()));
        out.push((key("dropped"), self.dropped));
        out.push((key("entropy"), self.entropy));
        out.push((key("aux_loss"), self.aux_loss));
        out.push((key("z_loss"), self.z_loss));
    }
}

/// Sums of [`LayerStats`] over training passes; clones share the sums.
#[derive(Debug, Clone, Default)]
pub struct StatsAccumulator(Arc<Mutex<(LayerStats, usize)>>);

impl StatsAccumulator {
    pub fn add(&self, stats: &LayerStats) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, passes) = &mut *guard;
        if sum.load.len() != stats.load.len() {
            sum.load = vec![0.0; stats.load.len()];
        }
        for (s, l) in sum.load.iter_mut().zip(&stats.load) {
            *s += l;
        }
        sum.dropped += stats.dropped;
        sum.entropy += stats.entropy;
        sum.aux_loss += stats.aux_loss;
        sum.z_loss += stats.z_loss;
        *passes += 1;
    }

    /// The mean over the passes since the last call, and a reset; `None` after no pass.
    pub fn take_mean(&self) -> Option<LayerStats> {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, passes) = std::mem::take(&mut *guard);
        if passes == 0 {
            return None;
        }
        let n = passes as f64;
        Some(LayerStats {
            load: sum.load.iter().map(|l| l / n).collect(),
            dropped: sum.dropped / n,
            entropy: sum.entropy / n,
            aux_loss: sum.aux_loss / n,
            z_loss: sum.z_loss / n,
        })
    }

    /// Draws into `other`'s sums from now on (a model rebuilt for one pass, `autocast.rs`).
    pub fn share(&mut self, other: &StatsAccumulator) {
        self.0 = other.0.clone();
    }
}

/// The cross-block summary metrics: the worst `max_load` and the mean `dropped`.
pub fn summary(layers: &[(usize, LayerStats)], out: &mut Vec<(String, f64)>) {
    if layers.is_empty() {
        return;
    }
    let worst = layers.iter().map(|(_, s)| s.max_load()).fold(0.0, f64::max);
    let dropped = layers.iter().map(|(_, s)| s.dropped).sum::<f64>() / layers.len() as f64;
    out.push(("moe.max_load".into(), worst));
    out.push(("moe.dropped".into(), dropped));
}
