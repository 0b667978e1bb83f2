//! The `t5` config: sizes of the two stacks, the relative-position buckets, the feed-forward
//! kind (T5's ReLU or v1.1's gated GELU), tied or untied output embeddings, and the special ids
//! the text-to-text packing relies on (`model.rs`).

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};

/// The feed-forward sublayer of every block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub enum FeedForwardKind {
    /// `wo(relu(wi x))`: the original T5.
    #[serde(rename = "relu")]
    Relu,
    /// `wo(gelu(wi_0 x) * wi_1 x)`: T5 v1.1 (tanh-approximated GELU, HF's `gelu_new`).
    #[serde(rename = "gated-gelu")]
    GatedGelu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub n_head: usize,
    pub n_layer: usize,
    pub n_decoder_layer: Option<usize>,
    pub ctx: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub feed_forward: FeedForwardKind,
    pub tie_embeddings: bool,
    pub scale_decoder_outputs: Option<bool>,
    pub norm_eps: f64,
    pub dropout: f64,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    pub seed: Option<u64>,
}

impl Default for T5Config {
    fn default() -> Self {
        T5Config {
            vocab_size: 512,
            d_model: 64,
            d_kv: 16,
            d_ff: 128,
            n_head: 4,
            n_layer: 2,
            n_decoder_layer: None,
            ctx: 128,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            feed_forward: FeedForwardKind::Relu,
            tie_embeddings: true,
            scale_decoder_outputs: None,
            norm_eps: 1e-6,
            dropout: 0.0,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
            seed: None,
        }
    }
}

impl T5Config {
    pub fn decoder_layers(&self) -> usize {
        self.n_decoder_layer.unwrap_or(self.n_layer)
    }

    /// Width of the attention heads together (`n_head * d_kv`, not necessarily `d_model`).
    pub fn inner_dim(&self) -> usize {
        self.n_head * self.d_kv
    }

    /// Whether the decoder output is scaled by `d_model^-0.5` before the head: T5 does it with
    /// its tied head; v1.1 (untied) does not.
    pub fn scales_decoder_output(&self) -> bool {
        self.scale_decoder_outputs.unwrap_or(self.tie_embeddings)
    }
}

impl TypedConfig for T5Config {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("vocab_size", "token ids the model reads and predicts"),
        ("d_model", "width of the residual stream"),
        ("d_kv", "width of one attention head"),
        ("d_ff", "hidden width of the feed-forward sublayer"),
        ("n_head", "attention heads per layer"),
        ("n_layer", "encoder blocks"),
        ("n_decoder_layer", "decoder blocks (default: n_layer)"),
        (
            "ctx",
            "longest encoder input (the prompt with its </s>) and longest decoder output, in tokens",
        ),
        (
            "relative_attention_num_buckets",
            "relative-position buckets (half per direction in the bidirectional encoder)",
        ),
        (
            "relative_attention_max_distance",
            "distance from which all positions share the last bucket",
        ),
        (
            "feed_forward",
            "\"relu\" (T5) or \"gated-gelu\" (T5 v1.1)",
        ),
        (
            "tie_embeddings",
            "the output head is the input embedding (`shared`); false: its own `lm_head`",
        ),
        (
            "scale_decoder_outputs",
            "scale decoder output by d_model^-0.5 before the head (default: tie_embeddings)",
        ),
        ("norm_eps", "RMSNorm epsilon"),
        ("dropout", "dropout on embeddings and sublayer outputs in training"),
        ("pad_token_id", "padding id (masked in the encoder)"),
        (
            "eos_token_id",
            "</s>: ends the encoder input; in a packed row [input </s> target] it splits encoder from decoder",
        ),
        ("decoder_start_token_id", "first decoder input token (T5: the pad id)"),
        ("seed", "init seed (default: the session's)"),
    ];

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("n_head", self.n_head),
            ("n_layer", self.n_layer),
            ("decoder layers", self.decoder_layers()),
            ("ctx", self.ctx),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be at least 1"));
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "relative_attention_num_buckets must be at least 4 (half per direction, half of that exact), got {}",
                self.relative_attention_num_buckets
            ));
        }
        if self.relative_attention_max_distance < self.relative_attention_num_buckets / 2 {
            return Err(format!(
                "relative_attention_max_distance ({}) must be at least relative_attention_num_buckets / 2 ({})",
                self.relative_attention_max_distance,
                self.relative_attention_num_buckets / 2
            ));
        }
        for (key, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(format!(
                    "{key} ({id}) must be below vocab_size ({})",
                    self.vocab_size
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }
}
