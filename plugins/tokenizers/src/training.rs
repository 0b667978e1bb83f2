//! Training a Hugging Face pipeline from an llmlab [`TextSource`]: the documents stream through
//! `tokenizers`' own (parallel) word counting, with progress reported to the host, Ctrl-C
//! honoured between documents, and the source's errors (bad UTF-8, I/O) surfaced as they are
//! instead of as a truncated corpus.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use llmlab_plugin_api::{Context, Error, Result, TextSource};
use tokenizers::models::ModelWrapper;
use tokenizers::models::TrainerWrapper;
use tokenizers::{AddedToken, Trainer};

/// Below this many bytes training is quick and shows no progress bar.
pub const PROGRESS_MIN_BYTES: u64 = 4 << 20;
/// How often (in bytes read) progress is reported.
const PROGRESS_STEP_BYTES: u64 = 1 << 20;

/// Bytes `tokenizers`' trainers reserve per vocabulary entry before reading anything (the
/// token-to-id map, the id-to-token list and the merges, all sized to `vocab_size` up front).
const BYTES_PER_VOCAB_ENTRY: f64 = 64.0;

/// Refuses a `vocab_size` that token ids (u32) cannot number or whose tables, reserved up front
/// by the trainer, cannot fit in memory: `vocab_size: 1e12` aborted the process.
pub fn check_vocab_size(vocab_size: usize) -> std::result::Result<(), String> {
    if vocab_size > u32::MAX as usize {
        return Err(format!(
            "vocab_size {vocab_size} is more than token ids (u32) can number"
        ));
    }
    llmlab_plugin_api::memory::check_fits(
        &format!("`vocab_size` = {vocab_size}"),
        vocab_size as f64 * BYTES_PER_VOCAB_ENTRY,
        "lower `vocab_size`",
    )
}

/// Why feeding stopped early, recorded by the document iterator for after `tokenizers` returns.
#[derive(Default)]
struct Feed {
    bytes: AtomicU64,
    documents: AtomicU64,
    cancelled: AtomicBool,
    failure: Mutex<Option<Error>>,
}

impl Feed {
    fn stopped(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
            || self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }
}

/// A trainer that refuses to compute a vocabulary from a corpus that was cut short.
struct Guarded<'a> {
    inner: &'a mut TrainerWrapper,
    feed: &'a Feed,
}

impl Trainer for Guarded<'_> {
    type Model = ModelWrapper;

    fn should_show_progress(&self) -> bool {
        false
    }

    fn train(&self, model: &mut ModelWrapper) -> tokenizers::Result<Vec<AddedToken>> {
        if self.feed.stopped() {
            return Err("feeding stopped early".into());
        }
        if self.feed.bytes.load(Ordering::SeqCst) == 0 {
            return Err("empty corpus".into());
        }
        self.inner.train(model)
    }

    fn feed<I, S, F>(&mut self, iterator: I, process: F) -> tokenizers::Result<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> tokenizers::Result<Vec<String>> + Sync,
    {
        self.inner.feed(iterator, process)
    }
}

/// Trains `tokenizer`'s model on `data` with `trainer`. On error or cancellation `tokenizer` may
/// hold a half-trained model: callers train a copy and keep it only on success.
pub fn train(
    tokenizer: &mut tokenizers::Tokenizer,
    trainer: &mut TrainerWrapper,
    data: &dyn TextSource,
    ctx: &Context,
    component: &str,
) -> Result<()> {
    let label = format!("train {component}");
    let total_bytes = data.approx_bytes();
    let show_progress = total_bytes.is_none_or(|b| b >= PROGRESS_MIN_BYTES);
    let feed = Feed::default();
    let documents = data.documents().map_while(|document| {
        if ctx.cancel.is_cancelled() {
            feed.cancelled.store(true, Ordering::SeqCst);
            return None;
        }
        match document {
            Ok(text) => {
                let len = text.len() as u64;
                let before = feed.bytes.fetch_add(len, Ordering::Relaxed);
                feed.documents.fetch_add(1, Ordering::Relaxed);
                let after = before + len;
                if show_progress && before / PROGRESS_STEP_BYTES != after / PROGRESS_STEP_BYTES {
                    ctx.progress(
                        &label,
                        after,
                        total_bytes,
                        format!("counting words in {}", data.name()),
                    );
                }
                Some(text)
            }
            Err(error) => {
                *feed.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                None
            }
        }
    });
    let mut guarded = Guarded {
        inner: trainer,
        feed: &feed,
    };
    let result = tokenizer.train(&mut guarded, documents).map(|_| ());
    if show_progress {
        ctx.progress.finish(&label);
    }
    if let Some(error) = feed
        .failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(error);
    }
    if feed.cancelled.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    if feed.bytes.load(Ordering::SeqCst) == 0 {
        return Err(Error::Data(format!(
            "cannot train {component}: corpus {} is empty ({} documents, 0 bytes of text)",
            data.name(),
            feed.documents.load(Ordering::SeqCst)
        )));
    }
    result.map_err(|e| Error::msg(format!("training {component} on {}: {e}", data.name())))
}
