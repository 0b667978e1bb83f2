//! One turn of a conversation, as HF's `messages` lists carry it: `{"role": .., "content": ..}`.

use llmlab_plugin_api::serde::{Deserialize, Serialize};

/// The role whose turns chat SFT trains on and generation produces.
pub const ASSISTANT: &str = "assistant";

/// A turn: `role` is free text (`system`, `user`, `assistant`, `tool`, ...) because templates
/// decide what roles mean; only [`ASSISTANT`] is special here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn is_assistant(&self) -> bool {
        self.role == ASSISTANT
    }
}
