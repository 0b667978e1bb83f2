//! Options for text generation, shared by every model so scripts use one set of keys.

use serde::{Deserialize, Serialize};

use crate::config::TypedConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
    pub stop_tokens: Vec<u32>,
    pub stop: Vec<String>,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub seed: u64,
    /// Per-row seeds of a batch (row `i` draws from `row_seeds[i]`); rows beyond it use `seed`.
    /// Independent samples of several prompts in one batch (RL rollouts) need distinct seeds.
    pub row_seeds: Vec<u64>,
    pub truncate_prompt: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 64,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            stop_tokens: Vec::new(),
            stop: Vec::new(),
            num_beams: 1,
            length_penalty: 1.0,
            seed: 0,
            row_seeds: Vec::new(),
            truncate_prompt: false,
        }
    }
}

impl TypedConfig for GenerateOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("max_tokens", "new tokens to generate at most"),
        ("temperature", "softmax temperature; 0 = greedy"),
        ("top_k", "sample among the k most likely tokens; 0 = off"),
        (
            "top_p",
            "nucleus sampling: smallest set with this much probability; 1 = off",
        ),
        (
            "repetition_penalty",
            "divide logits of tokens already present by this; 1 = off",
        ),
        (
            "stop_tokens",
            "token ids that end a sequence (end-of-text is always one)",
        ),
        (
            "stop",
            "strings that end a sequence; the text is cut before them",
        ),
        (
            "num_beams",
            "beam search with this many beams; 1 = sampling/greedy",
        ),
        (
            "length_penalty",
            "beam score = logprob / length^length_penalty",
        ),
        ("seed", "sampling seed; same seed, same text"),
        (
            "row_seeds",
            "per-row seeds of a batch of prompts; rows beyond the list use seed",
        ),
        (
            "truncate_prompt",
            "keep the last ctx - max_tokens prompt tokens instead of erroring",
        ),
    ];

    fn validate(&self) -> Result<(), String> {
        if self.temperature < 0.0 {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.num_beams == 0 {
            return Err("num_beams must be at least 1".into());
        }
        if self.repetition_penalty <= 0.0 {
            return Err("repetition_penalty must be > 0".into());
        }
        Ok(())
    }
}
