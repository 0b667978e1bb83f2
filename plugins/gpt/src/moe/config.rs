//! The `moe` key of the `gpt` config: which blocks route their feed-forward through experts,
//! how tokens are routed, and how the load is balanced. Checked against the rest of the config by
//! [`MoeConfig::validate`].

use llmlab_plugin_api::serde::{Deserialize, Serialize};

/// How tokens and experts are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "snake_case")]
pub enum RouterKind {
    /// Softmax over experts, each token to its `top_k` best (Shazeer 2017, Mixtral); dropless.
    Topk,
    /// Top-1 with a per-expert capacity; tokens over it skip the layer through the residual
    /// (Fedus et al. 2021). The capacity bounds training only; evaluation and generation are
    /// dropless, so decoding token by token routes exactly as a full forward pass does.
    Switch,
    /// Each expert takes its top-c tokens of the batch (Zhou et al. 2022): balanced by
    /// construction, but not causal, so such a model cannot generate.
    ExpertChoice,
}

/// How the load is kept balanced across experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "snake_case")]
pub enum Balance {
    /// Switch's auxiliary loss `aux_loss_coef · N · Σ f_i · P_i`, added to the model's aux loss.
    AuxLoss,
    /// DeepSeek-V3's auxiliary-loss-free balancing: a per-expert bias added to the scores for
    /// selection only, nudged by `bias_update_rate` against each expert's load; no gradient.
    AuxFree,
    /// No balancing (shows the collapse).
    #[serde(rename = "none")]
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct MoeConfig {
    /// Routed experts per MoE block.
    pub experts: usize,
    /// Experts per token (`topk`); the average per token at `capacity_factor` 1 (`expert_choice`).
    pub top_k: usize,
    /// Block `i` is an MoE block when `i + 1` is a multiple of `every` (2: every second block).
    pub every: usize,
    /// Experts every token passes through, beside the routed ones (DeepSeekMoE).
    pub shared_experts: usize,
    /// Each expert's hidden width = `expert_ffn_mult · d_model`; unset = the config's `ffn_mult`.
    pub expert_ffn_mult: Option<f64>,
    pub router: RouterKind,
    /// `topk`: divide the chosen experts' weights by their sum.
    pub normalize_top_k: bool,
    /// Slots per expert = `capacity_factor · tokens · top_k / experts` (`switch`, `expert_choice`).
    pub capacity_factor: f64,
    pub aux_loss_coef: f64,
    /// Router z-loss (ST-MoE): `z_loss_coef · mean(logsumexp(logits)²)`; 0 = off.
    pub z_loss_coef: f64,
    pub balance: Balance,
    /// `aux_free`: the bias step per training pass.
    pub bias_update_rate: f64,
    /// Training only: the router's input times uniform noise in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl Default for MoeConfig {
    fn default() -> Self {
        MoeConfig {
            experts: 8,
            top_k: 2,
            every: 1,
            shared_experts: 0,
            expert_ffn_mult: None,
            router: RouterKind::Topk,
            normalize_top_k: true,
            capacity_factor: 1.25,
            aux_loss_coef: 0.01,
            z_loss_coef: 0.0,
            balance: Balance::AuxLoss,
            bias_update_rate: 0.001,
            jitter: 0.0,
        }
    }
}

/// The `help("gpt")` line of the `moe` key.
pub const MOE_DOC: &str = "mixture-of-experts feed-forward (unset = dense): #{ experts: 8, top_k: 2, every: 1 \
(MoE in blocks i with (i+1) % every == 0), shared_experts: 0, expert_ffn_mult (unset = ffn_mult), \
router: \"topk\" | \"switch\" (top_k 1, capacity) | \"expert_choice\" (not causal: cannot generate), \
normalize_top_k: true, capacity_factor: 1.25, aux_loss_coef: 0.01, z_loss_coef: 0, \
balance: \"aux_loss\" | \"aux_free\" (DeepSeek-V3 bias) | \"none\", bias_update_rate: 0.001, jitter: 0 } (docs/moe.md)";

impl MoeConfig {
    /// Whether block `index` (from 0) has experts.
    pub fn is_moe_block(&self, index: usize) -> bool {
        (index + 1).is_multiple_of(self.every)
    }

    /// Checks the keys against each other; messages name the key as `moe.<key>`.
    pub fn validate(&self, checkpoint_activations: bool) -> Result<(), String> {
        if self.experts == 0 {
            return Err("moe.experts must be at least 1".into());
        }
        if self.every == 0 {
            return Err("moe.every must be at least 1 (1: every block, 2: every second)".into());
        }
        if self.top_k == 0 || self.top_k > self.experts {
            return Err(format!(
                "moe.top_k ({}) must be between 1 and moe.experts ({})",
                self.top_k, self.experts
            ));
        }
        if self.router == RouterKind::Switch && self.top_k != 1 {
            return Err(format!(
                "moe.router \"switch\" sends each token to one expert: set moe.top_k to 1 (got {}), \
                 or use router \"topk\" for top-{} routing",
                self.top_k, self.top_k
            ));
        }
        if let Some(mult) = self.expert_ffn_mult {
            if mult.is_nan() || mult <= 0.0 {
                return Err(format!("moe.expert_ffn_mult must be > 0, got {mult}"));
            }
        }
        let non_negative = [
            ("aux_loss_coef", self.aux_loss_coef),
            ("z_loss_coef", self.z_loss_coef),
            ("bias_update_rate", self.bias_update_rate),
        ];
        for (key, value) in non_negative {
            if value.is_nan() || value < 0.0 {
                return Err(format!("moe.{key} must be >= 0, got {value}"));
            }
        }
        if self.capacity_factor.is_nan() || self.capacity_factor <= 0.0 {
            return Err(format!(
                "moe.capacity_factor must be > 0, got {}",
                self.capacity_factor
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!("moe.jitter must be in [0, 1), got {}", self.jitter));
        }
        if checkpoint_activations && self.jitter > 0.0 {
            return Err(format!(
                "checkpoint_activations needs moe.jitter 0 (got {}): recomputing a block would draw new router noise",
                self.jitter
            ));
        }
        Ok(())
    }

    /// Slots per expert for `tokens` tokens (`switch`, `expert_choice`).
    pub fn capacity(&self, tokens: usize) -> usize {
        let slots = self.capacity_factor * (tokens * self.top_k) as f64 / self.experts as f64;
        (slots.ceil() as usize).clamp(1, tokens)
    }
}
