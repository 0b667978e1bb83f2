//! Continuous batching: one thread owns the model and decodes every running sequence together,
//! one token per step, while sequences join and leave between steps.
//!
//! The running sequences' keys and values live in one batch cache kept across steps
//! ([`Model::new_batch_cache`]; row `i` is `running[i]`). Each step first admits waiting
//! sequences up to `max_batch` (their prompts run through the model together, one padded batch
//! split into a fresh KV cache per sequence: [`Model::prefill_sequences`], which also gives each
//! its first token; each cache then joins the batch cache as a new row), then runs one
//! [`Model::decode_batch`] over all running sequences, whose rows may hold any number of
//! tokens. A sequence leaves when it ends (end-of-text or a stop token, `max_tokens`) or when
//! nobody listens any more (the client disconnected, or a stop string ended it on the HTTP side):
//! its row leaves the batch cache (the last row takes its place, in `running` too) and its slot
//! is free for the next waiting sequence at the next step.
//!
//! Waiting sequences sit in a bounded [`Queue`]; a request whose sequences do not all fit is
//! refused whole (429) and nothing of it runs. Closing the queue (shutdown) refuses new work but
//! lets everything queued and running finish; then the thread ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use llmlab_plugin_api::candle::DType;
use llmlab_plugin_api::model::BatchKvCache;
use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::Model;
use tokio::sync::mpsc::UnboundedSender;

use super::errors::ApiError;
use super::metrics;
use super::openai::FinishReason;
use super::sampling::{sample, Sampled, SamplingParams};
use crate::panics::guard;

/// What a sequence's listener hears.
#[derive(Debug)]
pub enum SeqEvent {
    Token(Sampled),
    Finished(FinishReason),
    Failed(String),
}

/// One sequence to generate: a prompt, its decoding parameters, and where its tokens go.
pub struct Sequence {
    /// The choice this sequence is, within its request.
    pub index: usize,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Tokens that end the sequence (end-of-text); not sent.
    pub stop_tokens: Vec<u32>,
    pub events: UnboundedSender<(usize, SeqEvent)>,
    /// Set by the listener when it needs no more tokens (a stop string appeared).
    pub stopped: Arc<AtomicBool>,
}

impl Sequence {
    fn send(&self, event: SeqEvent) -> bool {
        self.events.send((self.index, event)).is_ok()
    }

    /// Whether anyone still wants this sequence's tokens.
    fn wanted(&self) -> bool {
        !self.events.is_closed() && !self.stopped.load(Ordering::SeqCst)
    }
}

struct QueueState {
    waiting: VecDeque<Sequence>,
    closed: bool,
}

/// The bounded queue of sequences waiting for a batch slot.
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues all of `sequences` or none: 429 when they do not fit, 503 after shutdown began.
    pub fn submit(&self, sequences: Vec<Sequence>) -> Result<(), ApiError> {
        let mut state = self.lock();
        if state.closed {
            return Err(ApiError::shutting_down());
        }
        if state.waiting.len() + sequences.len() > self.capacity {
            return Err(ApiError::queue_full(self.capacity));
        }
        state.waiting.extend(sequences);
        metrics::queue_length(state.waiting.len());
        drop(state);
        self.ready.notify_all();
        Ok(())
    }

    /// No new work; what is queued still runs.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `n` waiting sequences; with `wait`, blocks until there is one or the queue is
    /// closed. `None`: closed and empty.
    fn take(&self, n: usize, wait: bool) -> Option<Vec<Sequence>> {
        let mut state = self.lock();
        while wait && state.waiting.is_empty() && !state.closed {
            state = self
                .ready
                .wait_timeout(state, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if state.waiting.is_empty() && state.closed {
            return None;
        }
        let n = n.min(state.waiting.len());
        let taken: Vec<Sequence> = state.waiting.drain(..n).collect();
        metrics::queue_length(state.waiting.len());
        Some(taken)
    }
}

/// A sequence in the batch; its keys and values are its row of the batch cache.
struct Running {
    seq: Sequence,
    rng: SplitMix64,
    /// The token to feed at the next step.
    last: u32,
    generated: usize,
}

impl Running {
    /// Sends `sampled` (or ends the sequence on a stop token); `false` when the sequence is over.
    fn emit(&mut self, sampled: Sampled) -> bool {
        if self.seq.stop_tokens.contains(&sampled.token) {
            self.seq.send(SeqEvent::Finished(FinishReason::Stop));
            return false;
        }
        self.last = sampled.token;
        self.generated += 1;
        metrics::generated_tokens(1);
        if !self.seq.send(SeqEvent::Token(sampled)) {
            metrics::cancelled();
            return false;
        }
        if self.generated >= self.seq.max_tokens {
            self.seq.send(SeqEvent::Finished(FinishReason::Length));
            return false;
        }
        true
    }
}

/// Decoding throughput over about a second, for the tokens/s gauge.
struct Throughput {
    since: Instant,
    tokens: usize,
}

impl Throughput {
    fn add(&mut self, tokens: usize) {
        self.tokens += tokens;
        let elapsed = self.since.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            metrics::tokens_per_second(self.tokens as f64 / elapsed);
            self.since = Instant::now();
            self.tokens = 0;
        }
    }
}

pub struct Scheduler {
    pub model: Arc<dyn Model>,
    pub queue: Arc<Queue>,
    pub max_batch: usize,
    /// [`super::Limits::step_delay`].
    pub step_delay: Duration,
    /// For caches that do not report their size: bytes per cached token from the model's
    /// config ([`kv_bytes_per_token`]).
    pub kv_bytes_per_token: usize,
}

/// Keys and values of one token in every layer, f32, from a GPT-style config (`n_layer`,
/// `d_model`, `n_head`, `n_kv_head`); 0 when the config has no such keys.
pub fn kv_bytes_per_token(config: &llmlab_plugin_api::serde_json::Value) -> usize {
    let get = |k: &str| config.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    let (Some(layers), Some(d_model), Some(heads)) =
        (get("n_layer"), get("d_model"), get("n_head"))
    else {
        return 0;
    };
    let kv_heads = get("n_kv_head").filter(|&h| h > 0).unwrap_or(heads);
    layers * 2 * kv_heads * (d_model / heads.max(1)) * std::mem::size_of::<f32>()
}

impl Scheduler {
    /// The batching loop; returns once the queue is closed and every sequence has finished.
    pub fn run(self) {
        let mut running: Vec<Running> = Vec::new();
        let mut batch = self.model.new_batch_cache();
        let mut throughput = Throughput {
            since: Instant::now(),
            tokens: 0,
        };
        loop {
            let room = self.max_batch.saturating_sub(running.len());
            let admitted = if room > 0 {
                self.queue.take(room, running.is_empty())
            } else {
                Some(Vec::new())
            };
            let admitted = match admitted {
                Some(admitted) => admitted,
                None if running.is_empty() => break,
                None => Vec::new(),
            };
            let admitted: Vec<Sequence> = admitted
                .into_iter()
                .filter(|seq| {
                    let wanted = seq.wanted();
                    if !wanted {
                        metrics::cancelled();
                    }
                    wanted
                })
                .collect();
            if !admitted.is_empty() {
                self.prefill(admitted, &mut running, &mut batch);
            }
            let gone: Vec<usize> = (0..running.len())
                .filter(|&i| {
                    let listening = running[i].seq.wanted();
                    if !listening {
                        metrics::cancelled();
                    }
                    !listening
                })
                .collect();
            self.leave(&gone, &mut running, &mut batch);
            self.report(&running, batch.as_ref());
            if running.is_empty() {
                if self.queue.is_closed() && self.queue.is_empty() {
                    break;
                }
                metrics::tokens_per_second(0.0);
                continue;
            }
            let n = running.len();
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            self.step(&mut running, &mut batch);
            throughput.add(n);
            self.report(&running, batch.as_ref());
        }
        self.report(&running, batch.as_ref());
        metrics::tokens_per_second(0.0);
    }

    fn report(&self, running: &[Running], batch: &dyn BatchKvCache) {
        metrics::running_batch_size(running.len());
        let bytes = match batch.memory_bytes() {
            0 => (0..batch.rows())
                .map(|row| batch.seq_len(row) * self.kv_bytes_per_token)
                .sum(),
            known => known,
        };
        metrics::kv_cache_bytes(bytes);
    }

    /// The sequences at `rows` (ascending) leave `running` and the batch cache, which stay
    /// aligned: both move their last row into the hole, so removing from the highest index
    /// down never moves a row still to remove. A batch cache that fails to let a row go is
    /// rebuilt without it, each remaining sequence failing with the reason.
    fn leave(&self, rows: &[usize], running: &mut Vec<Running>, batch: &mut Box<dyn BatchKvCache>) {
        for &row in rows.iter().rev() {
            running.swap_remove(row);
            let error = match guard(self.model.name(), || batch.swap_remove(row)) {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => format!("{}: batch cache: {error}", self.model.name()),
                Err(panic) => panic,
            };
            fail_all(running, error);
            *batch = self.model.new_batch_cache();
            return;
        }
    }

    /// The prompts admitted in one step, each into a fresh cache of its own, in ONE batched
    /// model call ([`Model::prefill_sequences`]), and each one's first token; the sequences that
    /// go on join `running`. When the batch fails, each prompt is retried alone, so a prompt
    /// the model refuses fails only its own sequence (its listener is told).
    fn prefill(
        &self,
        admitted: Vec<Sequence>,
        running: &mut Vec<Running>,
        batch: &mut Box<dyn BatchKvCache>,
    ) {
        let model = self.model.as_ref();
        let prompts: Vec<Vec<u32>> = admitted.iter().map(|seq| seq.prompt.clone()).collect();
        let result = guard(model.name(), || {
            let (caches, logits) = model.prefill_sequences(&prompts)?;
            if caches.len() != prompts.len() {
                return Err(llmlab_plugin_api::Error::msg(format!(
                    "prefill_sequences returned {} caches for {} prompts",
                    caches.len(),
                    prompts.len()
                )));
            }
            let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            Ok::<_, llmlab_plugin_api::Error>((caches, rows))
        });
        let outcome = match result {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(error)) => Err(format!("{}: {error}", model.name())),
            Err(panic) => Err(panic),
        };
        let (caches, rows) = match outcome {
            Ok(done) => {
                metrics::prefill_batch(admitted.len());
                done
            }
            Err(_) if admitted.len() > 1 => {
                for seq in admitted {
                    self.prefill(vec![seq], running, batch);
                }
                return;
            }
            Err(message) => {
                for seq in admitted {
                    seq.send(SeqEvent::Failed(message.clone()));
                }
                return;
            }
        };
        for ((seq, cache), logits) in admitted.into_iter().zip(caches).zip(rows) {
            metrics::prompt_tokens(seq.prompt.len());
            let mut joining = Running {
                rng: SplitMix64::new(seq.seed),
                seq,
                last: 0,
                generated: 0,
            };
            let sampled = sample(&logits, &joining.seq.sampling, &mut joining.rng);
            if !joining.emit(sampled) {
                continue;
            }
            let message = match guard(model.name(), || batch.push(cache)) {
                Ok(Ok(())) => {
                    running.push(joining);
                    continue;
                }
                Ok(Err(error)) => format!("{}: batch cache: {error}", model.name()),
                Err(panic) => panic,
            };
            joining.seq.send(SeqEvent::Failed(message));
        }
    }

    /// One token for every running sequence, in one batched model call. When the call fails,
    /// every running sequence fails with the reason and the batch cache starts over empty.
    fn step(&self, running: &mut Vec<Running>, batch: &mut Box<dyn BatchKvCache>) {
        let model = self.model.as_ref();
        let tokens: Vec<u32> = running.iter().map(|r| r.last).collect();
        let result = guard(model.name(), || {
            let logits = model.decode_batch(&tokens, batch.as_mut())?;
            Ok::<_, llmlab_plugin_api::Error>(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
        });
        let failure = match result {
            Ok(Ok(rows)) if rows.len() == running.len() => {
                let mut done = Vec::new();
                for (i, (r, row)) in running.iter_mut().zip(rows).enumerate() {
                    let sampled = sample(&row, &r.seq.sampling, &mut r.rng);
                    if !r.emit(sampled) {
                        done.push(i);
                    }
                }
                return self.leave(&done, running, batch);
            }
            Ok(Ok(rows)) => format!(
                "{}: decode_batch returned {} rows of logits for {} sequences",
                model.name(),
                rows.len(),
                running.len()
            ),
            Ok(Err(error)) => format!("{}: {error}", model.name()),
            Err(panic) => panic,
        };
        fail_all(running, failure);
        *batch = model.new_batch_cache();
    }
}

fn fail_all(running: &mut Vec<Running>, message: String) {
    for r in running.drain(..) {
        r.seq.send(SeqEvent::Failed(message.clone()));
    }
}
