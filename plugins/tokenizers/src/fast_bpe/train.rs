//! Byte-level BPE training without `tokenizers`' regex pipeline: pre-tokens are counted in
//! parallel with the hand-written splitters (borrowed slices, one allocation per distinct
//! pre-token), then merges are learned with `tokenizers`' own algorithm: a max-heap of pairs by
//! (count, then smallest pair), lazily re-checked counts, and incremental pair-count updates in
//! only the words a merge touches. The vocabulary, merges and `tokenizer.json` equal those of
//! `tokenizers`' `BpeTrainer` with the same settings (`tests/fast_train.rs`).
//!
//! One deliberate difference: pair counts are 64-bit here, 32-bit (`i32`) in `tokenizers`, so
//! the two can only differ on a corpus where a single pair occurs more than 2^31 times.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use llmlab_plugin_api::rayon::prelude::*;
use llmlab_plugin_api::{Context, Error, Result, TextSource};
use tokenizers::models::bpe::{Vocab, BPE};

use super::byte_chars;
use super::hash::{map_with_capacity, pair_key, FxMap};
use crate::pretokenize::Splitter;
use crate::special;

/// Documents are counted in groups of about this many bytes (the unit of parallel work).
const GROUP_BYTES: usize = 4 << 20;
/// Progress is reported every this many bytes read.
const PROGRESS_STEP_BYTES: u64 = 1 << 20;

/// What `BpeTrainer` is told in `bpe::trainer`, for the fast path.
#[derive(Debug, Clone)]
pub struct Settings {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
    /// `tokenizers`' `max_token_length` (a merged token's length must stay strictly below it).
    pub max_token_length: Option<usize>,
}

/// Counts of distinct pre-tokens (raw bytes) over all documents of `data`.
pub fn count_pieces(
    data: &dyn TextSource,
    splitter: Splitter,
    ctx: &Context,
    component: &str,
) -> Result<FxMap<Box<[u8]>, u64>> {
    let label = format!("train {component}");
    let total_bytes = data.approx_bytes();
    let show_progress = total_bytes.is_none_or(|b| b >= crate::training::PROGRESS_MIN_BYTES);
    let mut counts: FxMap<Box<[u8]>, u64> = map_with_capacity(1 << 16);
    let mut group: Vec<String> = Vec::new();
    let mut group_bytes = 0usize;
    let mut bytes = 0u64;
    let mut documents = 0u64;
    let flush = |group: &mut Vec<String>, counts: &mut FxMap<Box<[u8]>, u64>| {
        let local = group
            .par_iter()
            .with_min_len(64)
            .fold(
                || map_with_capacity::<&[u8], u64>(1 << 12),
                |mut map, doc| {
                    splitter.for_each(doc, |piece| *map.entry(piece.as_bytes()).or_default() += 1);
                    map
                },
            )
            .reduce(
                || map_with_capacity(0),
                |mut a, mut b| {
                    if a.len() < b.len() {
                        std::mem::swap(&mut a, &mut b);
                    }
                    for (k, v) in b {
                        *a.entry(k).or_default() += v;
                    }
                    a
                },
            );
        for (piece, n) in local {
            match counts.get_mut(piece) {
                Some(c) => *c += n,
                None => {
                    counts.insert(piece.into(), n);
                }
            }
        }
        group.clear();
    };
    let result = (|| -> Result<()> {
        for document in data.documents() {
            if ctx.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut text = document?;
            let len = text.len() as u64;
            if show_progress && bytes / PROGRESS_STEP_BYTES != (bytes + len) / PROGRESS_STEP_BYTES {
                ctx.progress(
                    &label,
                    bytes + len,
                    total_bytes,
                    format!("counting words in {}", data.name()),
                );
            }
            bytes += len;
            documents += 1;
            if splitter.add_prefix_space() && !text.is_empty() && !text.starts_with(' ') {
                text.insert(0, ' ');
            }
            group_bytes += text.len();
            group.push(text);
            if group_bytes >= GROUP_BYTES {
                flush(&mut group, &mut counts);
                group_bytes = 0;
            }
        }
        flush(&mut group, &mut counts);
        Ok(())
    })();
    if show_progress {
        ctx.progress.finish(&label);
    }
    result?;
    if bytes == 0 {
        return Err(Error::Data(format!(
            "cannot train {component}: corpus {} is empty ({documents} documents, 0 bytes of text)",
            data.name()
        )));
    }
    Ok(counts)
}

/// A queued pair: its count when queued and the words where it was seen.
struct Entry {
    count: u64,
    pair: u64,
    pos: Vec<u32>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.pair == other.pair
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Highest count first; on a tie the smallest (left id, right id), as `tokenizers` orders.
    fn cmp(&self, other: &Self) -> Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| other.pair.cmp(&self.pair))
    }
}

/// One distinct pre-token as (token id, length in bytes) symbols.
type Word = Vec<(u32, u32)>;

/// Merges every (a, b) in `word` into `new_id`, left to right, recording the pair-count changes
/// exactly as `tokenizers`' `Word::merge` does (including its `max_length` rule).
fn merge_word(
    word: &mut Word,
    a: u32,
    b: u32,
    new_id: u32,
    max_length: usize,
    changes: &mut Vec<(u64, i64)>,
) {
    let mut i = 0;
    while i < word.len() {
        if word[i].0 == a && i + 1 < word.len() && word[i + 1].0 == b {
            let len = word[i].1 + word[i + 1].1;
            if i > 0 {
                changes.push((pair_key(word[i - 1].0, a), -1));
                if ((word[i - 1].1 + len) as usize) < max_length {
                    changes.push((pair_key(word[i - 1].0, new_id), 1));
                }
            }
            let second = word[i + 1].0;
            word[i] = (new_id, len);
            word.remove(i + 1);
            if i + 1 < word.len() {
                changes.push((pair_key(second, word[i + 1].0), -1));
                if ((word[i + 1].1 + len) as usize) < max_length {
                    changes.push((pair_key(new_id, word[i + 1].0), 1));
                }
            }
        }
        i += 1;
    }
}

/// The learned vocabulary (token strings by id, byte-level chars) and merges (by rank).
pub struct Learned {
    pub tokens: Vec<String>,
    pub merges: Vec<(u32, u32)>,
}

/// Learns merges from pre-token counts, as `BpeTrainer::do_train` with the full byte alphabet.
pub fn learn(counts: &FxMap<Box<[u8]>, u64>, settings: &Settings) -> Learned {
    let mut tokens: Vec<String> = Vec::with_capacity(settings.vocab_size);
    let mut ids: FxMap<String, u32> = map_with_capacity(settings.vocab_size);
    let mut add = |tokens: &mut Vec<String>, t: String| -> u32 {
        *ids.entry(t.clone()).or_insert_with(|| {
            tokens.push(t);
            tokens.len() as u32 - 1
        })
    };
    for t in &settings.special_tokens {
        add(&mut tokens, t.clone());
    }
    // The alphabet: all 256 byte chars, sorted by code point.
    let chars = byte_chars();
    let mut alphabet: Vec<(char, u8)> = chars
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    alphabet.sort_unstable();
    let mut byte_id = [0u32; 256];
    for (c, b) in alphabet {
        byte_id[b as usize] = add(&mut tokens, c.to_string());
    }

    let (mut words, word_counts): (Vec<Word>, Vec<u64>) = counts
        .iter()
        .map(|(piece, &n)| (piece.iter().map(|&b| (byte_id[b as usize], 1)).collect(), n))
        .unzip();
    let max_length = settings.max_token_length.unwrap_or(usize::MAX);

    // Pair counts and where each pair occurs, counted in parallel over words.
    type Counts = (FxMap<u64, i64>, FxMap<u64, Vec<u32>>);
    let (mut pair_counts, mut where_to_update): Counts = words
        .par_iter()
        .enumerate()
        .with_min_len(1024)
        .fold(
            || (map_with_capacity(1 << 12), map_with_capacity(1 << 12)),
            |(mut pc, mut wtu): Counts, (i, word)| {
                for w in word.windows(2) {
                    let key = pair_key(w[0].0, w[1].0);
                    *pc.entry(key).or_default() += word_counts[i] as i64;
                    wtu.entry(key).or_default().push(i as u32);
                }
                (pc, wtu)
            },
        )
        .reduce(
            || (map_with_capacity(0), map_with_capacity(0)),
            |(mut pc, mut wtu), (pc2, wtu2)| {
                for (k, v) in pc2 {
                    *pc.entry(k).or_default() += v;
                }
                for (k, mut v) in wtu2 {
                    wtu.entry(k).or_default().append(&mut v);
                }
                (pc, wtu)
            },
        );

    let mut queue: BinaryHeap<Entry> = BinaryHeap::with_capacity(pair_counts.len());
    let push_all = |queue: &mut BinaryHeap<Entry>,
                    where_to_update: &mut FxMap<u64, Vec<u32>>,
                    pair_counts: &FxMap<u64, i64>| {
        for (pair, mut pos) in where_to_update.drain() {
            let count = pair_counts[&pair];
            if count > 0 {
                pos.sort_unstable();
                pos.dedup();
                queue.push(Entry {
                    count: count as u64,
                    pair,
                    pos,
                });
            }
        }
    };
    push_all(&mut queue, &mut where_to_update, &pair_counts);

    let mut merges: Vec<(u32, u32)> = Vec::new();
    let mut changes: Vec<(u64, i64)> = Vec::new();
    loop {
        if tokens.len() >= settings.vocab_size {
            break;
        }
        let Some(mut top) = queue.pop() else {
            break;
        };
        let current = pair_counts[&top.pair] as u64;
        if top.count != current {
            top.count = current;
            queue.push(top);
            continue;
        }
        if top.count < 1 || settings.min_frequency > top.count {
            break;
        }
        let (a, b) = ((top.pair >> 32) as u32, top.pair as u32);
        let new_token = format!("{}{}", tokens[a as usize], tokens[b as usize]);
        let new_id = add(&mut tokens, new_token);
        merges.push((a, b));
        for &w in &top.pos {
            changes.clear();
            merge_word(
                &mut words[w as usize],
                a,
                b,
                new_id,
                max_length,
                &mut changes,
            );
            let n = word_counts[w as usize] as i64;
            for &(pair, change) in &changes {
                *pair_counts.entry(pair).or_default() += change * n;
                if change > 0 {
                    where_to_update.entry(pair).or_default().push(w);
                }
            }
        }
        push_all(&mut queue, &mut where_to_update, &pair_counts);
    }
    Learned { tokens, merges }
}

/// Trains `tokenizer`'s BPE model on `data` (its pre-tokenizer must be `splitter`'s) and adds the
/// special tokens, as `tokenizers::Tokenizer::train` with a `BpeTrainer` would.
pub fn train(
    tokenizer: &mut tokenizers::Tokenizer,
    splitter: Splitter,
    settings: &Settings,
    data: &dyn TextSource,
    ctx: &Context,
    component: &str,
) -> Result<()> {
    let counts = count_pieces(data, splitter, ctx, component)?;
    let learned = learn(&counts, settings);
    let vocab: Vocab = learned
        .tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let merges = learned
        .merges
        .iter()
        .map(|&(a, b)| {
            (
                learned.tokens[a as usize].clone(),
                learned.tokens[b as usize].clone(),
            )
        })
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::msg(format!("training {component} on {}: {e}", data.name())))?;
    tokenizer.with_model(tokenizers::models::ModelWrapper::BPE(model));
    tokenizer
        .add_special_tokens(special::added_tokens(&settings.special_tokens))
        .map_err(|e| Error::msg(format!("{component}: adding special tokens: {e}")))?;
    Ok(())
}

/// The splitter that trains exactly like `tokenizer`'s pipeline (no normalizer, a recognised
/// pre-tokenizer), or `None` when only `tokenizers`' own trainer reproduces it.
pub fn splitter_for(tokenizer: &tokenizers::Tokenizer) -> Option<Splitter> {
    if tokenizer.get_normalizer().is_some() {
        return None;
    }
    let pre = llmlab_plugin_api::serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
    Splitter::detect(&pre)
}
