//! llmlab plugin `gpt`: a decoder-only transformer language model in the GPT-2 / nanoGPT
//! mould, with the modern options (RMSNorm, RoPE, SwiGLU, grouped-query attention), KV-cache
//! generation (sampling, beam search, batches), safetensors checkpoints and Hugging Face GPT-2
//! and Llama-family import. It is built from `llmlab-nn`'s blocks (kernels, linear, norm, rope,
//! dropout, parameters, pruning masks, the KV cache, weights files, and the generation engine
//! it drives as a [`llmlab_nn::Decoder`]); what is gpt's own, one file per concept: `config`,
//! `attention`, `mlp`, `moe` (mixture-of-experts feed-forward), `block`, `model`, `decoder`
//! (the engine's view of the model), `save_load`, `hf`, `hf_llama`, `lora` and
//! `frozen_linear` (LoRA/QLoRA adapters), `prune` (magnitude/Wanda pruning), `quantize`
//! (rebuilding with quantized linear weights), `gguf` (quantized or dense models in one GGUF
//! file), `memory` (what a config costs), and `training_pass` (the training pass:
//! activation checkpointing) with `autocast` (bf16/f16 compute over f32 weights).
//!
//! Everything on the training path is built from differentiable candle ops (DESIGN.md §7).

pub mod attention;
pub mod autocast;
pub mod block;
pub mod config;
pub mod decoder;
pub mod frozen_linear;
pub mod gguf;
pub mod gguf_llama;
pub mod hf;
pub mod hf_export;
pub mod hf_llama;
pub mod lora;
pub mod memory;
pub mod mlp;
pub mod model;
pub mod moe;
pub mod owned_pass;
pub mod prune;
pub mod quantize;
pub mod save_load;
pub mod training_pass;

use std::path::Path;

use llmlab_nn::params;
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::prelude::*;

pub use config::GptConfig;
pub use model::Gpt;

struct GptFactory;

impl GptFactory {
    /// A new model from a script config; `seed` defaults to the session's.
    pub fn build(config: &Value, ctx: &Context) -> Result<Gpt> {
        let mut config = GptConfig::from_json("gpt", config)?;
        let seed = *config.seed.get_or_insert(ctx.seed);
        Gpt::new(
            config,
            params::Source::Init { seed },
            &ctx.device,
            ctx.dtype,
            ctx.cancel.clone(),
        )
    }
}

impl Factory for GptFactory {
    fn name(&self) -> &'static str {
        "gpt"
    }
    fn kind(&self) -> Kind {
        Kind::Model
    }
    fn about(&self) -> &'static str {
        "decoder-only transformer LM (GPT-2 style; rms/rope/swiglu/GQA options), KV-cache generation"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        GptConfig::keys()
    }
    fn create(&self, config: &Value, ctx: &Context) -> Result<Instance> {
        Ok(Instance::Model(Box::new(GptFactory::build(config, ctx)?)))
    }
    /// A directory saved by `save`, a Hugging Face GPT-2 or Llama-family one (`hf_llama.rs`), or
    /// a `.gguf` file.
    fn load(&self, path: &Path, ctx: &Context) -> Result<Instance> {
        if gguf::is_gguf_path(path) {
            return Ok(Instance::Model(Box::new(gguf::load(path, ctx)?)));
        }
        if let Some(model) = hf_llama::try_load(path, ctx)? {
            return Ok(Instance::Model(Box::new(model)));
        }
        Ok(Instance::Model(Box::new(save_load::load(path, ctx)?)))
    }
}

/// A `gpt` from a JSON config, as `model("gpt", #{..})` makes it (tests, benchmarks).
pub fn new_gpt(config: &Value, ctx: &Context) -> Result<Gpt> {
    GptFactory::build(config, ctx)
}

llmlab_plugin_api::submit_component!(GptFactory);
llmlab_plugin_api::declare_plugin!("gpt");
