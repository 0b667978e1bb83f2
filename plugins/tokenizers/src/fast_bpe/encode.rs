//! [`FastEncoder`]: text → ids for byte-level BPE tokenizers, equal to `tokenizers`'
//! `encode_fast(text, false)`: added tokens are split out first (leftmost-longest, tokens with
//! `normalized: false` before those with `normalized: true`, as `AddedVocabulary` does), each
//! remaining piece is pre-tokenized by a hand-written splitter, and each pre-token is merged by
//! rank. Merged pre-tokens are cached per thread, so frequent words cost one hash lookup.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use llmlab_plugin_api::rayon::prelude::*;
use llmlab_plugin_api::serde_json::{self, Value};

use super::hash::{map_with_capacity, pair_key, FxMap};
use super::merge::{merge, Merges};
use super::{byte_chars, token_bytes};
use crate::pretokenize::Splitter;

/// Pre-tokens longer than this (bytes) are not cached.
const CACHE_MAX_PIECE: usize = 64;
/// Entries per thread before the cache is emptied.
const CACHE_MAX_ENTRIES: usize = 1 << 18;

/// A set of added tokens matched leftmost-longest.
#[derive(Debug, Clone)]
struct AddedSet {
    /// (content, id), longest first, so the first match at a position is the longest.
    tokens: Vec<(Vec<u8>, u32)>,
    /// Whether some token starts with this byte.
    first: [bool; 256],
}

impl AddedSet {
    fn new(mut tokens: Vec<(Vec<u8>, u32)>) -> AddedSet {
        tokens.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        let mut first = [false; 256];
        for (t, _) in &tokens {
            first[t[0] as usize] = true;
        }
        AddedSet { tokens, first }
    }

    /// The leftmost-longest match in `s`: (start, end, id).
    fn find(&self, s: &[u8]) -> Option<(usize, usize, u32)> {
        if self.tokens.is_empty() {
            return None;
        }
        (0..s.len())
            .filter(|&i| self.first[s[i] as usize])
            .find_map(|i| {
                self.tokens
                    .iter()
                    .find(|(t, _)| s[i..].starts_with(t))
                    .map(|(t, id)| (i, i + t.len(), *id))
            })
    }
}

/// Everything needed to encode like the tokenizer it was built from.
pub struct FastEncoder {
    splitter: Splitter,
    /// Token id of each byte.
    byte_ids: [u32; 256],
    merges: Merges,
    /// `ignore_merges`: a pre-token that is itself in the vocabulary encodes as that token.
    whole: Option<FxMap<Box<[u8]>, u32>>,
    /// Added tokens matched on the raw text, then those matched on the normalized text.
    raw_added: AddedSet,
    normalized_added: AddedSet,
    /// Identifies this encoder's entries in the per-thread caches.
    id: u64,
}

thread_local! {
    /// (encoder id, pre-token bytes → ids).
    static CACHE: RefCell<(u64, PieceCache)> = RefCell::new((0, map_with_capacity(0)));
}

fn post_processor_is_neutral(v: &Value) -> bool {
    // With add_special_tokens = false these only touch offsets, never ids.
    match v.get("type").and_then(Value::as_str) {
        None => v.is_null(),
        Some("ByteLevel") | Some("TemplateProcessing") => true,
        Some("Sequence") => v
            .get("processors")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().all(post_processor_is_neutral)),
        Some(_) => false,
    }
}

impl FastEncoder {
    /// The fast encoder for `tokenizer`, or `None` when its configuration is not one this
    /// reproduces exactly (then `tokenizers`' own path must be used).
    pub fn from_tokenizer(tokenizer: &tokenizers::Tokenizer) -> Option<FastEncoder> {
        if tokenizer.get_added_vocabulary().get_encode_special_tokens() {
            return None;
        }
        let json: Value = serde_json::from_str(&tokenizer.to_string(false).ok()?).ok()?;
        if !json.get("normalizer")?.is_null()
            || !json.get("truncation")?.is_null()
            || !json.get("padding")?.is_null()
            || !post_processor_is_neutral(json.get("post_processor")?)
        {
            return None;
        }
        let splitter = Splitter::detect(json.get("pre_tokenizer")?)?;
        let model = json.get("model")?;
        let empty_or_null = |key: &str| {
            model
                .get(key)
                .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
        };
        if model.get("type")?.as_str()? != "BPE"
            || !model.get("dropout").is_none_or(Value::is_null)
            || !empty_or_null("continuing_subword_prefix")
            || !empty_or_null("end_of_word_suffix")
        {
            return None;
        }
        let ignore_merges = model
            .get("ignore_merges")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let vocab: FxMap<&str, u32> = model
            .get("vocab")?
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.as_str(), u32::try_from(v.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;
        let chars = byte_chars();
        let mut byte_ids = [0u32; 256];
        for (b, c) in chars.iter().enumerate() {
            // A byte outside the vocabulary would need unk / byte-fallback handling.
            byte_ids[b] = *vocab.get(c.to_string().as_str())?;
        }
        let merge_list = model.get("merges")?.as_array()?;
        let mut merges: Merges = map_with_capacity(merge_list.len());
        for (rank, m) in merge_list.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => s.split_once(' ')?,
                Value::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
                _ => return None,
            };
            let new_id = *vocab.get(format!("{a}{b}").as_str())?;
            // A repeated pair keeps its last rank, as `tokenizers`' merge map does.
            merges.insert(
                pair_key(*vocab.get(a)?, *vocab.get(b)?),
                (rank as u32, new_id),
            );
        }
        let whole = ignore_merges.then(|| {
            vocab
                .iter()
                .filter_map(|(t, &id)| Some((token_bytes(t, &chars)?.into_boxed_slice(), id)))
                .collect()
        });
        let mut raw = Vec::new();
        let mut normalized = Vec::new();
        for added in json.get("added_tokens")?.as_array()? {
            let flag = |k: &str| added.get(k).and_then(Value::as_bool);
            if flag("single_word")? || flag("lstrip")? || flag("rstrip")? {
                return None;
            }
            let content = added.get("content")?.as_str()?.as_bytes().to_vec();
            let id = u32::try_from(added.get("id")?.as_u64()?).ok()?;
            if content.is_empty() {
                return None;
            }
            if flag("normalized")? {
                normalized.push((content, id));
            } else {
                raw.push((content, id));
            }
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Some(FastEncoder {
            splitter,
            byte_ids,
            merges,
            whole,
            raw_added: AddedSet::new(raw),
            normalized_added: AddedSet::new(normalized),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The pre-tokenizer in use.
    pub fn splitter(&self) -> Splitter {
        self.splitter
    }

    /// The ids of `text`, as `tokenizers`' `encode_fast(text, false)` gives them.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != self.id {
                *cache = (self.id, map_with_capacity(1 << 12));
            }
            let cache = &mut cache.1;
            self.encode_raw_added(text, cache, &mut out);
        });
        out
    }

    /// Encodes many texts in parallel on the runtime's thread pool.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        texts
            .par_iter()
            .with_min_len(16)
            .map(|t| self.encode(t.as_ref()))
            .collect()
    }

    fn encode_raw_added(&self, text: &str, cache: &mut PieceCache, out: &mut Vec<u32>) {
        let mut rest = text;
        while let Some((start, end, id)) = self.raw_added.find(rest.as_bytes()) {
            self.encode_normalized_added(&rest[..start], cache, out);
            out.push(id);
            rest = &rest[end..];
        }
        self.encode_normalized_added(rest, cache, out);
    }

    fn encode_normalized_added(&self, text: &str, cache: &mut PieceCache, out: &mut Vec<u32>) {
        let mut rest = text;
        while let Some((start, end, id)) = self.normalized_added.find(rest.as_bytes()) {
            self.encode_plain(&rest[..start], cache, out);
            out.push(id);
            rest = &rest[end..];
        }
        self.encode_plain(rest, cache, out);
    }

    /// Text without added tokens: pre-tokenize, then merge each pre-token.
    fn encode_plain(&self, text: &str, cache: &mut PieceCache, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        if self.splitter.add_prefix_space() && !text.starts_with(' ') {
            let spaced = format!(" {text}");
            self.splitter.for_each(&spaced, |piece| {
                self.encode_piece(piece.as_bytes(), cache, out)
            });
        } else {
            self.splitter.for_each(text, |piece| {
                self.encode_piece(piece.as_bytes(), cache, out)
            });
        }
    }

    #[inline]
    fn encode_piece(&self, piece: &[u8], cache: &mut PieceCache, out: &mut Vec<u32>) {
        if piece.len() == 1 {
            out.push(self.byte_ids[piece[0] as usize]);
            return;
        }
        if let Some(whole) = &self.whole {
            if let Some(&id) = whole.get(piece) {
                out.push(id);
                return;
            }
        }
        if piece.len() <= CACHE_MAX_PIECE {
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let mut symbols: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        merge(&self.merges, &mut symbols);
        out.extend_from_slice(&symbols);
        if piece.len() <= CACHE_MAX_PIECE {
            if cache.len() >= CACHE_MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(piece.into(), symbols.into_boxed_slice());
        }
    }
}

type PieceCache = FxMap<Box<[u8]>, Box<[u32]>>;
