//! llmlab plugin `bert`: a BERT encoder (Devlin et al. 2019) on `llmlab-nn`'s blocks:
//! bidirectional self-attention with a padding mask, learned positions, token type (segment)
//! embeddings, post-LN (BERT) or pre-LN layers, GELU, the masked-LM head tied to the word
//! embeddings, the pooler on [CLS], and task heads (sequence classification, regression, token
//! classification). Saved with Hugging Face names; Hugging Face BERT directories load too.
//! One file per concept: `config`, `embeddings`, `attention`, `layer`, `heads`, `model`,
//! `memory` (what a config costs), `save_load`, `hf` (import).

pub mod attention;
pub mod config;
pub mod embeddings;
pub mod heads;
pub mod hf;
pub mod layer;
pub mod memory;
pub mod model;
pub mod save_load;

use std::path::Path;

use llmlab_nn::params::Source;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

pub use config::BertConfig;
pub use model::Bert;

struct BertFactory;

/// A new `bert` from a JSON config, as `model("bert", #{..})` makes it; `seed` defaults to the
/// session's.
pub fn new_bert(config: &Value, ctx: &Context) -> Result<Bert> {
    let mut config = BertConfig::from_json("bert", config)?;
    let seed = *config.seed.get_or_insert(ctx.seed);
    Bert::new(config, Source::Init { seed }, &ctx.device, ctx.dtype)
}

impl Factory for BertFactory {
    fn name(&self) -> &'static str {
        "bert"
    }
    fn kind(&self) -> Kind {
        Kind::Model
    }
    fn about(&self) -> &'static str {
        "BERT encoder: bidirectional, padding mask, segments, MLM head, pooler, classification/regression/token heads; HF import"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        BertConfig::keys()
    }
    fn create(&self, config: &Value, ctx: &Context) -> Result<Instance> {
        Ok(Instance::Model(Box::new(new_bert(config, ctx)?)))
    }
    /// A directory saved by `save`, or a Hugging Face BERT directory.
    fn load(&self, path: &Path, ctx: &Context) -> Result<Instance> {
        Ok(Instance::Model(Box::new(save_load::load(path, ctx)?)))
    }
}

llmlab_plugin_api::submit_component!(BertFactory);
llmlab_plugin_api::declare_plugin!("bert");
