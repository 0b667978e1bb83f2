//! llmlab plugin `tokenizers` (being written).

llmlab_plugin_api::declare_plugin!("tokenizers");
