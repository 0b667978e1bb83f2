//! The OpenAI API's request and response JSON for `/v1/completions`, `/v1/chat/completions` and
//! `/v1/models`, in the shape the official `openai` client sends and reads (recorded examples in
//! tests/fixtures/openai/). Requests refuse unknown fields and wrong types; the parameters that
//! vLLM and llama.cpp's server also accept beyond OpenAI's (`top_k`) are accepted here too.

use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::{json, Value};

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct StreamOptions {
    /// A last chunk with `usage` and no choices, before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The decoding parameters both endpoints share.
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct CompletionRequest {
    /// Accepted and ignored: the server has one model.
    #[allow(dead_code)]
    pub model: Option<String>,
    pub prompt: OneOrMany,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<u64>,
    pub n: Option<u64>,
    /// Completions: how many most likely tokens to list per position (0..=5).
    pub logprobs: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub echo: Option<bool>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Accepted and ignored (OpenAI's abuse tracking).
    #[allow(dead_code)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// Accepted and ignored (a participant's name).
    #[allow(dead_code)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct ChatRequest {
    /// Accepted and ignored: the server has one model.
    #[allow(dead_code)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<u64>,
    pub n: Option<u64>,
    /// Chat: whether to return log probabilities ...
    pub logprobs: Option<bool>,
    /// ... and how many alternatives per position (0..=20; here at most 5).
    pub top_logprobs: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Accepted and ignored (OpenAI's abuse tracking).
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-text token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// One generated token's log probability and the most likely alternatives.
#[derive(Debug, Clone, Default)]
pub struct TokenLogprob {
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// Completions' `logprobs` object for the tokens of one chunk or choice; `offset` is the text
/// offset of the first one.
pub fn completion_logprobs(tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offset);
        offset += t.text.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect::<llmlab_plugin_api::serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

/// Chat's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(tokens: &[TokenLogprob]) -> Value {
    let entry = |text: &str, logprob: f32| json!({ "token": text, "logprob": logprob, "bytes": text.as_bytes() });
    json!({
        "content": tokens.iter().map(|t| {
            let mut e = entry(&t.text, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|(s, l)| entry(s, *l)).collect::<Vec<_>>().into();
            e
        }).collect::<Vec<_>>(),
        "refusal": Value::Null,
    })
}

/// `GET /v1/models`.
pub fn models_list(id: &str, created: u64) -> Value {
    json!({
        "object": "list",
        "data": [{ "id": id, "object": "model", "created": created, "owned_by": "llmlab" }],
    })
}
