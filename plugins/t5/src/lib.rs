//! llmlab plugin `t5`: the T5 encoder–decoder (text-to-text) on `llmlab-nn`'s blocks. What is
//! t5's own, one file per concept: `config`, `relative_position` (the position buckets and
//! their learned bias), `attention` (self and cross, unscaled), `feed_forward` (ReLU or gated
//! GELU), `stack` (encoder and decoder blocks), `cache` (self- and cross-attention caches),
//! `packing` (how `input </s> target` rows cross the one-sequence `Model` contract), `model`,
//! `decoder` (the generation engine's view: encoder once, decoder per token), `save_load` and
//! `hf` (Hugging Face `T5ForConditionalGeneration` import). docs/t5.md has the decisions.

pub mod attention;
pub mod cache;
pub mod config;
pub mod decoder;
pub mod feed_forward;
pub mod hf;
pub mod model;
pub mod packing;
pub mod relative_position;
pub mod save_load;
pub mod stack;

use std::path::Path;

use llmlab_nn::params;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

pub use config::T5Config;
pub use model::T5;

struct T5Factory;

/// A new `t5` from a script config; `seed` defaults to the session's.
pub fn new_t5(config: &Value, ctx: &Context) -> Result<T5> {
    let mut config = T5Config::from_json("t5", config)?;
    let seed = *config.seed.get_or_insert(ctx.seed);
    T5::new(
        config,
        params::Source::Init { seed },
        &ctx.device,
        ctx.dtype,
        ctx.cancel.clone(),
    )
}

impl Factory for T5Factory {
    fn name(&self) -> &'static str {
        "t5"
    }
    fn kind(&self) -> Kind {
        Kind::Model
    }
    fn about(&self) -> &'static str {
        "T5 encoder-decoder (relative position buckets, RMSNorm, relu or gated-gelu), text-to-text generation"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        T5Config::keys()
    }
    fn create(&self, config: &Value, ctx: &Context) -> Result<Instance> {
        Ok(Instance::Model(Box::new(new_t5(config, ctx)?)))
    }
    /// A directory saved by `save`, or a Hugging Face T5 one.
    fn load(&self, path: &Path, ctx: &Context) -> Result<Instance> {
        Ok(Instance::Model(Box::new(save_load::load(path, ctx)?)))
    }
}

llmlab_plugin_api::submit_component!(T5Factory);
llmlab_plugin_api::declare_plugin!("t5");
