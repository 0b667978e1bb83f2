//! llmlab plugin `gpt` (being written).

llmlab_plugin_api::declare_plugin!("gpt");
