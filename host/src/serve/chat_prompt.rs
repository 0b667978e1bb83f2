//! The text a chat request's messages become: the tokenizer's own chat template when it has one
//! (`chat_template` from its tokenizer_config.json, rendered by crate::chat), ChatML otherwise
//! (`<|im_start|>role\ncontent<|im_end|>\n`, then `<|im_start|>assistant\n` for the model to
//! continue), the chat-SFT default. With ChatML the reply ends at `<|im_end|>`: a stop token when
//! the tokenizer has it as one token, a stop string otherwise.

use llmlab_plugin_api::{tracing, SpecialToken, Tokenizer};

use super::errors::ApiError;
use super::openai::ChatMessage;
use crate::chat::{ChatTemplate, Message};

pub const END_OF_TURN: &str = "<|im_end|>";

const ROLES: &[&str] = &["system", "user", "assistant", "developer", "tool"];

pub struct ChatPrompt {
    template: ChatTemplate,
    chatml: bool,
}

impl ChatPrompt {
    /// The tokenizer's template, or ChatML (also when its template does not compile: a warning).
    pub fn for_tokenizer(tok: &dyn Tokenizer) -> ChatPrompt {
        let token = |role| {
            tok.special_token(role)
                .and_then(|id| tok.id_to_token(id))
                .unwrap_or_default()
        };
        let own = tok.chat_template().and_then(|source| {
            ChatTemplate::from_source(&source)
                .map_err(|error| {
                    tracing::warn!(%error, "the tokenizer's chat template does not compile; serving ChatML")
                })
                .ok()
        });
        let chatml = own.is_none();
        let template = own
            .unwrap_or_else(ChatTemplate::chatml)
            .with_special_tokens(String::new(), token(SpecialToken::EndOfText));
        ChatPrompt { template, chatml }
    }

    #[cfg(test)]
    pub fn chatml() -> ChatPrompt {
        ChatPrompt {
            template: ChatTemplate::chatml(),
            chatml: true,
        }
    }

    /// The marker that ends the assistant's turn, when the template is ChatML.
    pub fn end_of_turn(&self) -> Option<&'static str> {
        self.chatml.then_some(END_OF_TURN)
    }

    pub fn origin(&self) -> &str {
        self.template.origin()
    }

    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages must hold at least one message",
            ));
        }
        let mut turns = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{}`; one of {}", m.role, ROLES.join(", ")),
                ));
            }
            // `developer` is OpenAI's newer name for `system`.
            let role = if m.role == "developer" {
                "system"
            } else {
                &m.role
            };
            turns.push(Message::new(role, m.content.clone()));
        }
        self.template.render(&turns, true).map_err(|e| {
            ApiError::invalid("messages", format!("chat template {}: {e}", self.origin()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }

    #[test]
    fn chatml_with_the_generation_prompt() {
        let text = ChatPrompt::chatml()
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn unknown_role_names_the_message() {
        let e = ChatPrompt::chatml()
            .render(&[msg("user", "a"), msg("robot", "b")])
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[1].role"));
        assert!(e.message.contains("robot"), "{}", e.message);
    }
}
