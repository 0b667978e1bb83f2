//! The Llama-3 / Qwen2 pre-tokenizer without a regex engine. The pattern (a `Split` pre-tokenizer,
//! `Isolated`, before a `ByteLevel` that does not split):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! Qwen2 differs only in `\p{N}` (one digit per piece instead of up to three): `max_digits`.

use super::classes::{decode, Classes, LETTER, NUMBER, OTHER, SPACE};
use super::gpt2::{is_letter, run_end};

/// The contraction after an apostrophe at `i`, matched case-insensitively: its end, if any.
#[inline]
fn contraction(t: &Classes, s: &[u8], i: usize) -> Option<usize> {
    let n = s.len();
    if i + 1 >= n {
        return None;
    }
    let (c1, l1) = decode(s, i + 1);
    let c1 = char::from_u32(c1)?;
    for single in *b"stmd" {
        if t.folds_to(c1, single) {
            return Some(i + 1 + l1);
        }
    }
    let second = if t.folds_to(c1, b'r') || t.folds_to(c1, b'v') {
        b'e'
    } else if t.folds_to(c1, b'l') {
        b'l'
    } else {
        return None;
    };
    let j = i + 1 + l1;
    if j >= n {
        return None;
    }
    let (c2, l2) = decode(s, j);
    let c2 = char::from_u32(c2)?;
    t.folds_to(c2, second).then_some(j + l2)
}

/// Skips `[\r\n]*` from `i`.
#[inline(always)]
fn newlines_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && (s[i] == b'\r' || s[i] == b'\n') {
        i += 1;
    }
    i
}

/// End (byte index) of the piece that starts at byte `i < s.len()` of the valid UTF-8 `s`.
#[inline]
pub fn piece_end(t: &Classes, s: &[u8], i: usize, max_digits: usize) -> usize {
    let n = s.len();
    let b = s[i];
    if b == b'\'' {
        if let Some(end) = contraction(t, s, i) {
            return end;
        }
    }
    let (cp, len) = decode(s, i);
    let class = t.of(cp);
    if is_letter(class) {
        return run_end(t, s, i, LETTER);
    }
    let next_class = if i + len < n {
        let (next, _) = decode(s, i + len);
        Some(t.of(next))
    } else {
        None
    };
    // [^\r\n\p{L}\p{N}]?\p{L}+: one non-letter, non-number char (not CR/LF) before letters.
    if class != NUMBER && b != b'\r' && b != b'\n' && next_class == Some(LETTER) {
        return run_end(t, s, i + len, LETTER);
    }
    if class == NUMBER {
        let mut j = i + len;
        let mut digits = 1;
        while digits < max_digits && j < n {
            let (cp, len) = decode(s, j);
            if t.of(cp) != NUMBER {
                break;
            }
            j += len;
            digits += 1;
        }
        return j;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    if b == b' ' && next_class == Some(OTHER) {
        return newlines_end(s, run_end(t, s, i + 1, OTHER));
    }
    if class == OTHER {
        return newlines_end(s, run_end(t, s, i, OTHER));
    }
    debug_assert_eq!(class, SPACE);
    // The white-space run, its last char's start, and the end of its last CR/LF.
    let mut j = i;
    let mut last = i;
    let mut after_newline = None;
    while j < n {
        let (cp, len) = decode(s, j);
        if t.of(cp) != SPACE {
            break;
        }
        if cp == '\r' as u32 || cp == '\n' as u32 {
            after_newline = Some(j + len);
        }
        last = j;
        j += len;
    }
    // \s*[\r\n]+ ends after the run's last CR/LF; else \s+(?!\S) leaves the last char to the
    // next piece when a non-space follows; a one-char run falls to \s+.
    if let Some(end) = after_newline {
        end
    } else if j == n || last == i {
        j
    } else {
        last
    }
}
