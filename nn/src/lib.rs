//! `llmlab-nn`: the building blocks of llmlab models, so a new model plugin (a decoder, an MoE,
//! an encoder–decoder, a third party's) is its architecture and nothing else:
//!
//! * [`ops`]: fused, differentiable CPU kernels (attention, norms, RoPE, GELU, SwiGLU, softmax,
//!   cross-entropy) with composed reference paths, chosen by [`Kernels`];
//! * layers: [`linear`] (dense, quantized, fake-quantized for QAT), [`norm`] (LayerNorm,
//!   RMSNorm), [`rope`], [`attention`] (grouped-query pieces), [`dropout`] (seeded);
//! * [`cache`]: a decoder's KV cache with left padding, positions and the padding mask;
//! * [`params`]: parameters by name behind candle's `VarBuilder`, seeded init or checkpoint
//!   tensors; [`weights`]: checksummed safetensors files; [`rng`]: the seeded generator;
//! * [`saved_model`]: the directory `model_load` reads (config with the loader's marker,
//!   checksummed weights); [`decoder_model_methods!`]: the `Model` methods a model generating
//!   through the engine writes alike;
//! * [`generate`]: **one generation engine** (greedy, temperature, top-k, top-p, repetition
//!   penalty, stop tokens, per-row seeds, left-padded batches, [`beam`] search, streaming)
//!   driven by the [`Decoder`] trait, with [`sampling`] for one row of logits.
//!
//! It is an rlib linked statically into each plugin that uses it, over the one runtime dylib
//! (`llmlab-plugin-api`), and holds no process-global state: each plugin's copy is
//! self-contained, and none of it is in the plugin fingerprint, so changing a kernel rebuilds
//! the models built on it and leaves every other built plugin loadable (docs/architecture.md).

pub mod attention;
pub mod beam;
pub mod cache;
pub mod decoder_model;
pub mod dropout;
pub mod generate;
pub mod linear;
pub mod norm;
pub mod ops;
pub mod params;
pub mod pruning;
pub mod rng;
pub mod rope;
pub mod sampling;
pub mod saved_model;
pub mod weights;

// The kernels were written inside the runtime crate and name its re-exports from the crate root.
use llmlab_plugin_api::{candle, rayon};

pub use cache::DecoderCache;
pub use generate::{generate, Decoder};
pub use ops::Kernels;
