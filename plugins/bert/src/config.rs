//! The `bert` config: every key with its default and one-line doc (`help("bert")`), the checks
//! between keys, and the task head a model carries. Saved as `config.json` beside the weights.

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{de, Deserialize, Deserializer, Serialize};

/// Where each layer's LayerNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum NormPosition {
    /// After each residual sum, as in BERT (`LayerNorm(x + sublayer(x))`).
    Post,
    /// Before each sublayer (`x + sublayer(LayerNorm(x))`) with a final LayerNorm: steadier
    /// training of deep stacks (Xiong et al. 2020).
    Pre,
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU with erf (BERT's and Hugging Face's `"gelu"`).
    Gelu,
    /// The tanh approximation (`"gelu_new"`), the fused kernel.
    GeluNew,
}

/// What a task head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum HeadKind {
    /// One of `num_labels` classes per sequence, from the pooled [CLS] state.
    Sequence,
    /// One real score per sequence, from the pooled [CLS] state.
    Regression,
    /// One of `num_labels` classes per token, from each token's final state.
    Token,
}

/// Which final states a sequence or regression head summarises before the pooler
/// (`dense` + tanh) and the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Pooling {
    /// The [CLS] position (BERT's and Hugging Face's).
    #[default]
    Cls,
    /// The mean over the real positions (attention mask 1; [CLS] and [SEP] included).
    Mean,
    /// The elementwise maximum over the real positions.
    Max,
}

impl Pooling {
    pub fn name(&self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
        }
    }

    pub fn is_cls(&self) -> bool {
        *self == Pooling::Cls
    }

    pub fn parse(name: &str) -> std::result::Result<Pooling, String> {
        match name {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            "max" => Ok(Pooling::Max),
            other => Err(format!(
                "`pooling` must be \"cls\", \"mean\" or \"max\", got \"{other}\""
            )),
        }
    }
}

// By hand, so an unknown value names the key and the allowed values (serde's own message
// names neither the key nor, through `set_head`, where it came from).
impl<'de> Deserialize<'de> for Pooling {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Pooling, D::Error> {
        let name = String::deserialize(d)
            .map_err(|e| de::Error::custom(format!("`pooling` must be a string: {e}")))?;
        Pooling::parse(&name).map_err(de::Error::custom)
    }
}

/// A task head: its kind and width (Hugging Face's `classifier`), and what the task it was
/// trained for looks like: the class names (Hugging Face's `id2label`) and whether its inputs
/// are sentence pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct HeadConfig {
    pub kind: HeadKind,
    #[serde(default = "one")]
    pub num_labels: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default)]
    pub pair: bool,
    /// Sequence and regression heads: what the pooler reads. Left out of the JSON when `cls`,
    /// so heads saved before this key existed, and Hugging Face's, read the same.
    #[serde(default, skip_serializing_if = "Pooling::is_cls")]
    pub pooling: Pooling,
}

fn one() -> usize {
    1
}

impl HeadConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_labels == 0 {
            return Err("head: num_labels must be at least 1".into());
        }
        if self.kind == HeadKind::Regression && self.num_labels != 1 {
            return Err(format!(
                "head: a regression head has one output, not num_labels = {}",
                self.num_labels
            ));
        }
        if !self.labels.is_empty() && self.labels.len() != self.num_labels {
            return Err(format!(
                "head: {} label names for num_labels = {}",
                self.labels.len(),
                self.num_labels
            ));
        }
        if self.kind == HeadKind::Token && !self.pooling.is_cls() {
            return Err(format!(
                "head: `pooling` \"{}\" does not apply to a token head (it classifies every \
                 position); pooling is for sequence and regression heads",
                self.pooling.name()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    /// Feed-forward width; `None` = 4 × `d_model`.
    pub d_ff: Option<usize>,
    pub ctx: usize,
    pub type_vocab_size: usize,
    pub dropout: f64,
    pub norm_eps: f64,
    pub norm_position: NormPosition,
    pub activation: Activation,
    pub head: Option<HeadConfig>,
    /// Init seed; `None` = the session seed.
    pub seed: Option<u64>,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            vocab_size: 1024,
            n_layer: 4,
            n_head: 4,
            d_model: 256,
            d_ff: None,
            ctx: 128,
            type_vocab_size: 2,
            dropout: 0.1,
            norm_eps: 1e-12,
            norm_position: NormPosition::Post,
            activation: Activation::Gelu,
            head: None,
            seed: None,
        }
    }
}

impl BertConfig {
    pub fn d_ff(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }
}

impl TypedConfig for BertConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "vocab_size",
            "number of token ids (the tokenizer's vocab_size)",
        ),
        ("n_layer", "encoder layers"),
        ("n_head", "attention heads per layer"),
        ("d_model", "hidden width; must be divisible by n_head"),
        (
            "d_ff",
            "feed-forward (intermediate) width; unset = 4 x d_model",
        ),
        (
            "ctx",
            "longest sequence (learned position embeddings, HF max_position_embeddings)",
        ),
        (
            "type_vocab_size",
            "token type (segment) ids: 2 for sentence pairs",
        ),
        (
            "dropout",
            "dropout on embeddings, attention weights, residual branches and the task head in training",
        ),
        ("norm_eps", "LayerNorm epsilon (BERT: 1e-12)"),
        (
            "norm_position",
            "\"post\": LayerNorm after each residual sum (BERT); \"pre\": before each sublayer, with a final LayerNorm",
        ),
        (
            "activation",
            "feed-forward activation: \"gelu\" (exact, erf; BERT) or \"gelu_new\" (tanh approximation)",
        ),
        (
            "head",
            "task head: #{ kind: \"sequence\" | \"regression\" | \"token\", num_labels: n, labels: [names], pair: bool, pooling: \"cls\" | \"mean\" | \"max\" }, or unset (MLM only); trainer(\"classify\") sets one. pooling (sequence/regression): which final states the pooler (dense + tanh) reads: [CLS] (default, BERT/HF), or the mean or max over the real (unpadded) positions",
        ),
        ("seed", "init seed; unset = the session seed"),
    ];

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("d_model", self.d_model),
            ("ctx", self.ctx),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be at least 1"));
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(format!(
                "d_model = {} must be divisible by n_head = {}",
                self.d_model, self.n_head
            ));
        }
        if self.d_ff == Some(0) {
            return Err("d_ff must be at least 1 (or unset for 4 x d_model)".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(format!("norm_eps = {} must be positive", self.norm_eps));
        }
        if let Some(head) = &self.head {
            head.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    #[test]
    fn every_field_is_documented() {
        let json = BertConfig::default().to_json();
        let fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        for field in fields {
            assert!(
                BertConfig::DOCS.iter().any(|(k, _)| k == field),
                "`{field}` has no doc"
            );
        }
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let err = BertConfig::from_json("bert", &json!({ "d_model": 30, "n_head": 4 }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("divisible by n_head"), "{err}");
        let err = BertConfig::from_json(
            "bert",
            &json!({ "head": { "kind": "regression", "num_labels": 3 } }),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("regression head has one output"), "{err}");
        let err = BertConfig::from_json("bert", &json!({ "norm_position": "middle" }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("norm_position"), "{err}");
    }
}
