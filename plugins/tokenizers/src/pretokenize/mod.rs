//! Hand-written pre-tokenizers: the split patterns of GPT-2 (`ByteLevel` with its regex) and of
//! Llama-3 / Qwen2 (a `Split` regex before a non-splitting `ByteLevel`) as char state machines.
//! They return exactly the pieces the `tokenizers` crate's regexes return (property-tested in
//! `tests/pretokenize.rs`) at a fraction of the cost, for the fast encoder and trainer.
//!
//! [`Splitter::detect`] recognises a pipeline these can stand in for from its serialised form.

pub mod classes;
pub mod gpt2;
pub mod llama3;

use llmlab_plugin_api::serde_json::Value;

use classes::Classes;

/// GPT-2's pattern, as `tokenizers`' `ByteLevel` pre-tokenizer has it.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama-3's pattern (tokenizer.json of Meta-Llama-3 and 3.x).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pattern: Llama-3's with one digit per number piece.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which split pattern, plus `ByteLevel`'s `add_prefix_space`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splitter {
    /// GPT-2's pattern.
    Gpt2 { add_prefix_space: bool },
    /// Llama-3's pattern (`max_digits` 3) or Qwen2's (1).
    Llama3 {
        max_digits: usize,
        add_prefix_space: bool,
    },
}

impl Splitter {
    pub const GPT2: Splitter = Splitter::Gpt2 {
        add_prefix_space: false,
    };
    pub const LLAMA3: Splitter = Splitter::Llama3 {
        max_digits: 3,
        add_prefix_space: false,
    };
    pub const QWEN2: Splitter = Splitter::Llama3 {
        max_digits: 1,
        add_prefix_space: false,
    };

    /// The splitter equivalent to a serialised `pre_tokenizer`, or `None` when there is none.
    /// Recognised: `ByteLevel` with `use_regex` (GPT-2), and `Sequence[Split(Regex(LLAMA3 or
    /// QWEN2), Isolated, invert false), ByteLevel without regex]`.
    pub fn detect(pre_tokenizer: &Value) -> Option<Splitter> {
        let byte_level = |v: &Value, regex: bool| -> Option<bool> {
            (v.get("type")?.as_str()? == "ByteLevel"
                && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) == regex)
                .then(|| v.get("add_prefix_space").and_then(Value::as_bool))
                .flatten()
        };
        if let Some(add_prefix_space) = byte_level(pre_tokenizer, true) {
            return Some(Splitter::Gpt2 { add_prefix_space });
        }
        if pre_tokenizer.get("type")?.as_str()? != "Sequence" {
            return None;
        }
        let steps = pre_tokenizer.get("pretokenizers")?.as_array()?;
        let [split, bl] = steps.as_slice() else {
            return None;
        };
        let add_prefix_space = byte_level(bl, false)?;
        if split.get("type")?.as_str()? != "Split"
            || split.get("behavior")?.as_str()? != "Isolated"
            || split.get("invert")?.as_bool()?
        {
            return None;
        }
        let max_digits = match split.get("pattern")?.get("Regex")?.as_str()? {
            LLAMA3_PATTERN => 3,
            QWEN2_PATTERN => 1,
            _ => return None,
        };
        // The Split runs before ByteLevel prepends its space, so the space is split off
        // separately; only the plain form is claimed.
        (!add_prefix_space).then_some(Splitter::Llama3 {
            max_digits,
            add_prefix_space,
        })
    }

    /// Whether a space is prepended to a text that does not start with one.
    pub fn add_prefix_space(&self) -> bool {
        match *self {
            Splitter::Gpt2 { add_prefix_space }
            | Splitter::Llama3 {
                add_prefix_space, ..
            } => add_prefix_space,
        }
    }

    /// Calls `f` with every piece of `text`, in order (pieces are never empty and cover `text`).
    #[inline]
    pub fn for_each<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        let t = Classes::get();
        let s = text.as_bytes();
        let mut i = 0;
        match *self {
            Splitter::Gpt2 { .. } => {
                while i < s.len() {
                    let end = gpt2::piece_end(t, s, i);
                    f(&text[i..end]);
                    i = end;
                }
            }
            Splitter::Llama3 { max_digits, .. } => {
                while i < s.len() {
                    let end = llama3::piece_end(t, s, i, max_digits);
                    f(&text[i..end]);
                    i = end;
                }
            }
        }
    }

    /// The pieces of `text` as byte ranges (tests compare these with the regex's offsets).
    pub fn offsets(&self, text: &str) -> Vec<(usize, usize)> {
        let base = text.as_ptr() as usize;
        let mut out = Vec::new();
        self.for_each(text, |piece| {
            let start = piece.as_ptr() as usize - base;
            out.push((start, start + piece.len()));
        });
        out
    }
}
