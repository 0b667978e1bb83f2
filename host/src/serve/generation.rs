//! One generation request from the HTTP side: its prompts become sequences in the scheduler's
//! queue (one per prompt and choice, `n`), and the tokens coming back become per-choice text
//! updates — detokenized, cut at stop strings, with log probabilities — that the routes send as
//! one JSON response or as server-sent events. Dropping a [`Generation`] (client gone) drops the
//! receiver, which is how the scheduler learns to free the batch slots.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use llmlab_plugin_api::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::errors::ApiError;
use super::limits::Decoding;
use super::metrics;
use super::openai::{FinishReason, TokenLogprob, Usage};
use super::scheduler::{Queue, SeqEvent, Sequence};
use super::text::TextStream;

/// Which API a request came in on (the response shapes differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

struct Choice {
    text: TextStream,
    /// Tokens generated (counted in usage, also those cut off by a stop string).
    tokens: usize,
    finish: Option<FinishReason>,
    /// Set when a stop string ended the choice: the scheduler drops the sequence.
    stopped: Arc<AtomicBool>,
}

/// New text of one choice; `finish` on its last update.
#[derive(Debug)]
pub struct Update {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

pub struct Generation {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub prompt_tokens: usize,
    pub want_logprobs: bool,
    choices: Vec<Choice>,
    events: UnboundedReceiver<(usize, SeqEvent)>,
    tokenizer: Arc<dyn Tokenizer>,
    started: Instant,
    first_token: bool,
}

pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request id unique in this process (`cmpl-…`, `chatcmpl-…`).
fn request_id(endpoint: Endpoint) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = match endpoint {
        Endpoint::Completions => "cmpl",
        Endpoint::Chat => "chatcmpl",
    };
    format!("{prefix}-{:x}{n:06x}", unix_seconds())
}

/// A seed for a request that gave none: distinct per request.
fn fresh_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

impl Generation {
    /// Queues every prompt × `n` choice (all or none: 429 when the queue has no room).
    pub fn start(
        endpoint: Endpoint,
        prompts: Vec<Vec<u32>>,
        decoding: &Decoding,
        stop_tokens: Vec<u32>,
        queue: &Queue,
        tokenizer: Arc<dyn Tokenizer>,
    ) -> Result<Generation, ApiError> {
        let (sender, events) = unbounded_channel();
        let base_seed = decoding.seed.unwrap_or_else(fresh_seed);
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        let mut sequences = Vec::new();
        let mut choices = Vec::new();
        for prompt in &prompts {
            for _ in 0..decoding.n {
                let index = choices.len();
                let stopped = Arc::new(AtomicBool::new(false));
                sequences.push(Sequence {
                    index,
                    prompt: prompt.clone(),
                    max_tokens: decoding.max_tokens,
                    sampling: decoding.sampling.clone(),
                    seed: base_seed.wrapping_add(index as u64),
                    stop_tokens: stop_tokens.clone(),
                    events: sender.clone(),
                    stopped: stopped.clone(),
                });
                choices.push(Choice {
                    text: TextStream::new(decoding.stop.clone()),
                    tokens: 0,
                    finish: None,
                    stopped,
                });
            }
        }
        queue.submit(sequences)?;
        Ok(Generation {
            endpoint,
            id: request_id(endpoint),
            created: unix_seconds(),
            prompt_tokens,
            want_logprobs: decoding.sampling.logprobs.is_some(),
            choices,
            events,
            tokenizer,
            started: Instant::now(),
            first_token: false,
        })
    }

    pub fn choice_count(&self) -> usize {
        self.choices.len()
    }

    pub fn usage(&self) -> Usage {
        let completion: usize = self.choices.iter().map(|c| c.tokens).sum();
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: completion,
            total_tokens: self.prompt_tokens + completion,
        }
    }

    /// The whole text of choice `index` so far.
    pub fn text(&self, index: usize) -> &str {
        self.choices[index].text.finished()
    }

    fn token_text(&self, token: u32) -> String {
        self.tokenizer.decode(&[token]).unwrap_or_default()
    }

    /// The next update of some choice; `None` once every choice has finished.
    pub async fn next(&mut self) -> Option<Result<Update, ApiError>> {
        if self.choices.iter().all(|c| c.finish.is_some()) {
            metrics::request_seconds(self.endpoint.route(), self.started.elapsed().as_secs_f64());
            return None;
        }
        let Some((index, event)) = self.events.recv().await else {
            return Some(Err(ApiError::model_failed(
                "the scheduler stopped before this request finished",
            )));
        };
        let update = match event {
            SeqEvent::Token(sampled) => {
                if !self.first_token {
                    self.first_token = true;
                    metrics::time_to_first_token(
                        self.endpoint.route(),
                        self.started.elapsed().as_secs_f64(),
                    );
                }
                let logprobs = if self.want_logprobs {
                    vec![TokenLogprob {
                        text: self.token_text(sampled.token),
                        logprob: sampled.logprob,
                        top: sampled
                            .top
                            .iter()
                            .map(|&(t, l)| (self.token_text(t), l))
                            .collect(),
                    }]
                } else {
                    Vec::new()
                };
                let tokenizer = self.tokenizer.clone();
                let choice = &mut self.choices[index];
                if choice.finish.is_some() {
                    // A token decoded before the scheduler saw the stop string: not sent.
                    return Some(Ok(Update {
                        index,
                        text: String::new(),
                        logprobs: Vec::new(),
                        finish: None,
                    }));
                }
                choice.tokens += 1;
                let go_on = choice.text.push(tokenizer.as_ref(), sampled.token);
                if !go_on {
                    choice.finish = Some(FinishReason::Stop);
                    choice.stopped.store(true, Ordering::SeqCst);
                }
                Update {
                    index,
                    text: choice.text.take_ready(!go_on),
                    logprobs,
                    finish: choice.finish,
                }
            }
            SeqEvent::Finished(reason) => {
                let choice = &mut self.choices[index];
                if choice.finish.is_some() {
                    return Some(Ok(Update {
                        index,
                        text: String::new(),
                        logprobs: Vec::new(),
                        finish: None,
                    }));
                }
                choice.finish = Some(reason);
                Update {
                    index,
                    text: choice.text.take_ready(true),
                    logprobs: Vec::new(),
                    finish: Some(reason),
                }
            }
            SeqEvent::Failed(message) => return Some(Err(ApiError::model_failed(message))),
        };
        Some(Ok(update))
    }
}
