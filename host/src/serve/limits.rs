//! The server's limits (`llmlab serve` flags, `serve()` options) and the checks of a request's
//! decoding parameters against them and against the model: every refusal names the field and
//! the bound, in OpenAI's error JSON (errors.rs).

use super::errors::ApiError;
use super::sampling::SamplingParams;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Sequences decoded together at most (the continuous batch).
    pub max_batch: usize,
    /// Sequences waiting for a batch slot at most; more is 429.
    pub queue_capacity: usize,
    /// Largest `n` (choices per prompt) times prompts in one request.
    pub max_sequences_per_request: usize,
    /// `max_tokens` when the request gives none (OpenAI's completions default is 16).
    pub default_max_tokens: usize,
    /// A pause before every decoding step (none by default): holds a batch long enough to
    /// watch it, so the overload test can fill the queue while a request is surely running.
    pub step_delay: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_batch: 16,
            queue_capacity: 256,
            max_sequences_per_request: 16,
            default_max_tokens: 16,
            step_delay: std::time::Duration::ZERO,
        }
    }
}

/// Alternatives per token OpenAI allows for completions' `logprobs`; chat's `top_logprobs` is
/// held to the same bound.
pub const MAX_LOGPROBS: u64 = 5;

/// A request's decoding parameters, checked.
#[derive(Debug, Clone)]
pub struct Decoding {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `None`: a fresh seed per request.
    pub seed: Option<u64>,
    pub n: usize,
}

/// The raw fields both endpoints share.
pub struct RawDecoding {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
    pub n: Option<u64>,
    pub logprobs: Option<u64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

impl Limits {
    pub fn decoding(&self, raw: RawDecoding, prompts: usize) -> Result<Decoding, ApiError> {
        let temperature = raw.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = raw.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let n = raw.n.unwrap_or(1);
        if n == 0 || (n as usize).saturating_mul(prompts) > self.max_sequences_per_request {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "n × prompts must be between 1 and {} (the server's limit), got {n} × {prompts}",
                    self.max_sequences_per_request
                ),
            ));
        }
        let max_tokens = raw.max_tokens.unwrap_or(self.default_max_tokens as u64);
        if max_tokens == 0 {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        if let Some(l) = raw.logprobs.filter(|&l| l > MAX_LOGPROBS) {
            return Err(ApiError::invalid(
                "logprobs",
                format!("at most {MAX_LOGPROBS} alternatives per token, got {l}"),
            ));
        }
        for (name, value) in [
            ("presence_penalty", raw.presence_penalty),
            ("frequency_penalty", raw.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    name,
                    format!("{name} is not supported by this server (only 0)"),
                ));
            }
        }
        let stop = raw.stop.unwrap_or_default();
        if stop.len() > 4 {
            return Err(ApiError::invalid(
                "stop",
                format!("at most 4 stop strings, got {}", stop.len()),
            ));
        }
        Ok(Decoding {
            max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
            sampling: SamplingParams {
                temperature,
                top_k: raw.top_k.unwrap_or(0) as usize,
                top_p,
                logprobs: raw.logprobs.map(|l| l as usize),
            },
            stop,
            seed: raw.seed,
            n: n as usize,
        })
    }

    /// A prompt of `prompt` tokens plus `max_tokens` new ones must fit the model's context.
    pub fn check_context(
        &self,
        prompt: usize,
        max_tokens: usize,
        ctx: usize,
        prompt_param: &str,
    ) -> Result<(), ApiError> {
        if prompt.saturating_add(max_tokens) > ctx {
            let param = if prompt >= ctx {
                prompt_param
            } else {
                "max_tokens"
            };
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    param,
                    format!(
                        "this model's maximum context length is {ctx} tokens, but the prompt has {prompt} tokens and max_tokens is {max_tokens} ({} in all); shorten the prompt or lower max_tokens",
                        prompt + max_tokens
                    ),
                )
            });
        }
        Ok(())
    }
}
