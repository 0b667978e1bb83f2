//! llmlab plugin `quant`: weight quantization schemes on candle's GGML block types, as
//! [`Quantizer`](llmlab_plugin_api::Quantizer) components a model calls when it rebuilds itself
//! with quantized linear layers (`quantize(model, "q4_0")` in scripts).
//!
//! Components: `q8_0`, `q4_0`, `q4_1` (blocks of 32, in [`legacy`]) and `q4k`, `q6k`
//! (super-blocks of 256, in [`kquants`]); what they share (padding, fake quantization for QAT)
//! is in [`scheme`]. This crate owns the numbers of a scheme; how a model uses quantized
//! weights (`QMatMul`, GGUF files) belongs to the model plugin.

pub mod kquants;
pub mod legacy;
pub mod scheme;

llmlab_plugin_api::submit_component!(legacy::Q8_0);
llmlab_plugin_api::submit_component!(legacy::Q4_0);
llmlab_plugin_api::submit_component!(legacy::Q4_1);
llmlab_plugin_api::submit_component!(kquants::Q4K);
llmlab_plugin_api::submit_component!(kquants::Q6K);

llmlab_plugin_api::declare_plugin!("quant");
