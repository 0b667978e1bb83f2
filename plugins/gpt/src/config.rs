//! The `gpt` config: every key with its default and one-line doc (`help("gpt")`), and the
//! checks between keys. Saved as `config.json` beside the weights.

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};

/// Which normalisation the blocks use (`llmlab_nn`'s, shared with other models).
pub use llmlab_nn::norm::NormKind;

/// How token positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum PosKind {
    /// A learned position embedding added to the token embedding (GPT-2).
    Learned,
    /// Rotary embeddings applied to queries and keys (RoFormer, Llama).
    Rope,
}

/// The feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum MlpKind {
    /// Linear → GELU (tanh approximation, GPT-2's `gelu_new`) → linear.
    Gelu,
    /// SiLU-gated linear unit (Shazeer 2020, Llama).
    Swiglu,
}

/// Which implementation of norms, attention, activations and rope the model runs.
pub use llmlab_nn::Kernels;

/// How RoPE frequencies are stretched for contexts beyond pretraining (HF `rope_scaling`).
pub use llmlab_nn::rope::RopeScaling;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads; `None` = `n_head` (plain multi-head attention).
    pub n_kv_head: Option<usize>,
    pub d_model: usize,
    pub ctx: usize,
    pub dropout: f64,
    pub bias: bool,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub pos: PosKind,
    pub rope_theta: f64,
    /// RoPE frequency scaling; `None` = plain RoPE.
    pub rope_scaling: Option<RopeScaling>,
    /// Width of one attention head; `None` = `d_model / n_head` (Qwen3 sets it independently).
    pub head_dim: Option<usize>,
    /// Biases on the query/key/value projection; `None` = `bias` (Qwen2: true with bias false).
    pub qkv_bias: Option<bool>,
    /// RMSNorm over each query and key head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub mlp: MlpKind,
    pub ffn_mult: f64,
    /// MLP hidden width; `None` = from `ffn_mult` (HF `intermediate_size`).
    pub ffn_hidden: Option<usize>,
    pub tie_embeddings: bool,
    /// Init seed; `None` = the session seed.
    pub seed: Option<u64>,
    /// Fused training kernels or the composed reference path (`llmlab_nn::ops`).
    pub kernels: Kernels,
    /// Keep only block inputs in training and recompute each block in backward (`training_pass.rs`).
    pub checkpoint_activations: bool,
    /// Mixture-of-experts feed-forward (`moe/`); `None` = dense.
    pub moe: Option<crate::moe::MoeConfig>,
    /// The training and inference pass: hand-written over preallocated buffers (`owned_pass/`)
    /// or candle's graph and autograd.
    pub pass: crate::owned_pass::PassKind,
}

impl Default for GptConfig {
    fn default() -> Self {
        GptConfig {
            vocab_size: 1024,
            n_layer: 4,
            n_head: 4,
            n_kv_head: None,
            d_model: 256,
            ctx: 256,
            dropout: 0.0,
            bias: true,
            norm: NormKind::Layer,
            norm_eps: 1e-5,
            pos: PosKind::Learned,
            rope_theta: 10_000.0,
            rope_scaling: None,
            head_dim: None,
            qkv_bias: None,
            qk_norm: false,
            mlp: MlpKind::Gelu,
            ffn_mult: 4.0,
            ffn_hidden: None,
            tie_embeddings: true,
            seed: None,
            kernels: Kernels::Fused,
            checkpoint_activations: false,
            moe: None,
            pass: Default::default(),
        }
    }
}

impl TypedConfig for GptConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "vocab_size",
            "number of token ids (the tokenizer's vocab_size)",
        ),
        ("n_layer", "transformer blocks"),
        ("n_head", "attention (query) heads per block"),
        (
            "n_kv_head",
            "key/value heads for grouped-query attention; must divide n_head; unset = n_head",
        ),
        (
            "d_model",
            "residual stream width; must be divisible by n_head",
        ),
        ("ctx", "longest sequence in tokens (context length)"),
        (
            "dropout",
            "dropout on embeddings, attention weights and residual branches (training only)",
        ),
        (
            "bias",
            "biases in linear layers and LayerNorm (GPT-2: true)",
        ),
        ("norm", "\"layer\" (LayerNorm, GPT-2) or \"rms\" (RMSNorm)"),
        ("norm_eps", "epsilon inside the norms"),
        (
            "pos",
            "\"learned\" position embeddings (GPT-2) or \"rope\" (rotary)",
        ),
        ("rope_theta", "RoPE base frequency (pos: \"rope\")"),
        (
            "rope_scaling",
            "RoPE frequency scaling: unset, #{type: \"linear\", factor} or #{type: \"llama3\", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}",
        ),
        (
            "head_dim",
            "width of one attention head; unset = d_model / n_head",
        ),
        (
            "qkv_bias",
            "biases on the query/key/value projection; unset = bias (Qwen2: true with bias false)",
        ),
        (
            "qk_norm",
            "RMSNorm over each query and key head before RoPE (Qwen3)",
        ),
        (
            "mlp",
            "\"gelu\" (GPT-2) or \"swiglu\" (gated SiLU, hidden width 2/3 of gelu's)",
        ),
        (
            "ffn_mult",
            "MLP hidden width = ffn_mult * d_model (swiglu: 2/3 of it, rounded up to 8)",
        ),
        (
            "ffn_hidden",
            "MLP hidden width, overriding ffn_mult (HF intermediate_size); unset = from ffn_mult",
        ),
        (
            "tie_embeddings",
            "the output head reuses the token embedding (GPT-2: true)",
        ),
        ("seed", "weight init seed; unset = the session seed"),
        (
            "kernels",
            "\"fused\" (hand-written CPU kernels with their own backward, default) or \"reference\" (composed stock ops, for debugging)",
        ),
        (
            "checkpoint_activations",
            "training keeps only each block's input and recomputes the block in backward: less memory, ~1/3 more compute (needs dropout 0)",
        ),
        ("moe", crate::moe::config::MOE_DOC),
        (
            "pass",
            "training pass (and no-gradient inference passes): \"auto\" (the hand-written owned pass where it covers the config, else candle; default), \"owned\" (refuse training configs it does not cover, naming why; inference falls back to candle) or \"autograd\" (candle's graph and autograd, the reference)",
        ),
    ];

    fn validate(&self) -> Result<(), String> {
        let counts = [
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("d_model", self.d_model),
            ("ctx", self.ctx),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be at least 1"));
        }
        if self.head_dim == Some(0) || self.ffn_hidden == Some(0) {
            return Err("head_dim and ffn_hidden must be at least 1 when set".into());
        }
        if self.head_dim.is_none() && !self.d_model.is_multiple_of(self.n_head) {
            return Err(format!(
                "d_model ({}) must be divisible by n_head ({})",
                self.d_model, self.n_head
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_head.is_multiple_of(kv) {
            return Err(format!(
                "n_head ({}) must be divisible by n_kv_head ({kv})",
                self.n_head
            ));
        }
        if self.pos == PosKind::Rope && !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "pos \"rope\" needs an even head size, but the head size is {} (head_dim, or d_model {} / n_head {})",
                self.head_dim(),
                self.d_model,
                self.n_head
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.checkpoint_activations && self.dropout > 0.0 {
            return Err(format!(
                "checkpoint_activations needs dropout 0 (got {}): recomputing a block would draw new dropout masks",
                self.dropout
            ));
        }
        if let Some(moe) = &self.moe {
            moe.validate(self.checkpoint_activations)?;
        }
        if !positive(self.norm_eps) {
            return Err(format!("norm_eps must be > 0, got {}", self.norm_eps));
        }
        if !positive(self.rope_theta) {
            return Err(format!("rope_theta must be > 0, got {}", self.rope_theta));
        }
        match self.rope_scaling {
            Some(RopeScaling::Linear { factor }) if factor.is_nan() || factor < 1.0 => {
                return Err(format!("rope_scaling: factor must be >= 1, got {factor}"));
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) if factor.is_nan()
                || factor < 1.0
                || low_freq_factor.is_nan()
                || low_freq_factor <= 0.0
                || high_freq_factor.is_nan()
                || high_freq_factor <= low_freq_factor
                || original_max_position_embeddings == 0 =>
            {
                return Err(format!(
                    "rope_scaling llama3: needs factor >= 1, 0 < low_freq_factor < high_freq_factor \
                     and original_max_position_embeddings > 0, got {factor}, {low_freq_factor}, \
                     {high_freq_factor}, {original_max_position_embeddings}"
                ));
            }
            _ => {}
        }
        if !positive(self.ffn_mult) || self.ffn_hidden() == 0 {
            return Err(format!(
                "ffn_mult ({}) * d_model ({}) must give a hidden width of at least 1",
                self.ffn_mult, self.d_model
            ));
        }
        Ok(())
    }
}

/// `x > 0` and not NaN.
fn positive(x: f64) -> bool {
    x > 0.0
}

impl GptConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.n_head)
    }

    /// Width of all query heads together (`d_model` unless `head_dim` is set).
    pub fn attn_dim(&self) -> usize {
        self.n_head * self.head_dim()
    }

    /// Whether the query/key/value projection has biases.
    pub fn qkv_bias(&self) -> bool {
        self.qkv_bias.unwrap_or(self.bias)
    }

    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// The MLP's hidden width.
    pub fn ffn_hidden(&self) -> usize {
        if let Some(width) = self.ffn_hidden {
            return width;
        }
        let gelu = (self.ffn_mult * self.d_model as f64).round() as usize;
        match self.mlp {
            MlpKind::Gelu => gelu,
            // Three matrices instead of two: 2/3 of the width keeps the parameter count.
            MlpKind::Swiglu => (2 * gelu).div_ceil(3).div_ceil(8) * 8,
        }
    }

    /// Std of the residual output projections (GPT-2: 0.02 / sqrt(2 · n_layer)).
    pub fn residual_init_std(&self) -> f64 {
        0.02 / (2.0 * self.n_layer as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    fn parse(v: llmlab_plugin_api::serde_json::Value) -> Result<GptConfig, String> {
        GptConfig::from_json("gpt", &v).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let keys = GptConfig::keys();
        assert_eq!(keys.len(), GptConfig::DOCS.len());
        let serialized = GptConfig::default().to_json();
        let object = serialized.as_object().unwrap();
        assert_eq!(object.len(), keys.len(), "every field has a doc line");
        for key in &keys {
            assert!(
                object.contains_key(&key.name),
                "{} documented but no field",
                key.name
            );
        }
        GptConfig::default().validate().unwrap();
    }

    #[test]
    fn inconsistent_keys_name_themselves() {
        let err = parse(json!({ "d_model": 100, "n_head": 3 })).unwrap_err();
        assert!(
            err.contains("d_model (100)") && err.contains("n_head (3)"),
            "{err}"
        );
        let err = parse(json!({ "n_head": 4, "n_kv_head": 3 })).unwrap_err();
        assert!(err.contains("n_kv_head (3)"), "{err}");
        let err = parse(json!({ "d_model": 12, "n_head": 4, "pos": "rope" })).unwrap_err();
        assert!(err.contains("even head size"), "{err}");
        let err = parse(json!({ "norm": "batch" })).unwrap_err();
        assert!(err.contains("norm") && err.contains("rms"), "{err}");
        let err = parse(json!({ "layers": 2 })).unwrap_err();
        assert!(err.contains("`layers`") && err.contains("n_layer"), "{err}");
    }

    #[test]
    fn swiglu_keeps_the_parameter_budget() {
        let c = parse(json!({ "mlp": "swiglu", "d_model": 96 })).unwrap();
        assert_eq!(c.ffn_hidden(), 256);
        assert_eq!(c.ffn_hidden() % 8, 0);
        let g = parse(json!({ "d_model": 96 })).unwrap();
        assert_eq!(g.ffn_hidden(), 384);
    }
}
