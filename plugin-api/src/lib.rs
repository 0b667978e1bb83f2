//! `llmlab-plugin-api`: the contract between the llmlab host and its plugins.
//!
//! This crate owns the plugin declaration and its fingerprint ([`declaration`]), the component
//! traits every plugin implements ([`Tokenizer`], [`Model`], [`Trainer`], [`Aligner`],
//! [`Quantizer`], [`Corpus`]), typed configuration from JSON ([`config`]), and the [`Context`]
//! the host passes to every call, and the collective world data-parallel training runs in
//! ([`collective`]). It is the contract alone: the building blocks models and
//! trainers share live in `llmlab-nn` (kernels, layers, generation) and `llmlab-train` (AdamW,
//! losses, the step loop), rlibs outside this runtime and outside its fingerprint
//! (docs/architecture.md). It knows nothing of the host: no Rhai, no REPL, no loader.
//!
//! It is built as a Rust `dylib` that the host and all plugins link, so there is exactly one copy
//! of candle, serde_json, tracing and inventory in a process (DESIGN.md §8). Plugins use those
//! crates through the re-exports below, never directly, so their versions cannot drift.
//!
//! A plugin is a list of components and one macro call:
//!
//! ```ignore
//! use llmlab_plugin_api::prelude::*;
//! struct Hello;
//! impl Factory for Hello { /* name, kind, config_keys, create */ }
//! llmlab_plugin_api::submit_component!(Hello);
//! llmlab_plugin_api::declare_plugin!("hello");
//! ```

pub mod aligner;
pub mod collective;
pub mod component;
pub mod config;
pub mod context;
pub mod corpus;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
pub mod data;
pub mod declaration;
pub mod error;
pub mod files;
pub mod generation;
pub mod memory;
pub mod model;
pub mod quantizer;
pub mod rng;
pub mod tokenizer;
pub mod trainer;

pub use candle_core as candle;
pub use candle_nn;
/// The gemm candle links, for kernels that call it directly (`llmlab-nn`'s fused attention).
pub use gemm;
pub use inventory;
pub use rayon;
pub use safetensors;
pub use serde;
pub use serde_json;
pub use tracing;

pub use aligner::{AlignJob, Aligner, RewardFn};
pub use collective::{world, Collective, ReduceOp};
pub use component::{Factory, Instance, Kind, Registrar, Registration};
pub use config::{ConfigKey, TypedConfig};
pub use context::{CancelFlag, Context, MetricsSink, ProgressSink, ProgressUpdate};
pub use corpus::Corpus;
pub use data::{
    Example, ExampleSource, Label, LabelledSource, LabelledText, Split, TaggedWords, TextSegment,
    TextSource, TokenData,
};
pub use declaration::{Fingerprint, FINGERPRINT};
pub use error::{Error, Result};
pub use generation::GenerateOptions;
pub use model::{ForwardInputs, ForwardOptions, ForwardOutput, KvCache, Model};
pub use quantizer::Quantizer;
pub use tokenizer::{SpecialToken, Tokenizer};
pub use trainer::{StepMetrics, TrainJob, Trainer};

/// Everything a plugin's `lib.rs` usually needs.
pub mod prelude {
    pub use crate::candle::{DType, Device, Module, Tensor, Var, D};
    pub use crate::candle_nn::{VarBuilder, VarMap};
    pub use crate::serde::{Deserialize, Serialize};
    pub use crate::serde_json::{json, Value};
    pub use crate::*;
}
