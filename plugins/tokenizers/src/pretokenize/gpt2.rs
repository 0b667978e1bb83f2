//! GPT-2's pre-tokenizer without a regex engine. The pattern (as `tokenizers`' `ByteLevel` runs it,
//! each match isolated):
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! Every char is a letter, a number, white space or "other", so the alternatives cover the text
//! and [`piece_end`] only has to find where the leftmost-first match starting at `i` ends.

use super::classes::{decode, Classes, LETTER, SPACE};

/// End (byte index) of the piece that starts at byte `i < s.len()` of the valid UTF-8 `s`.
#[inline]
pub fn piece_end(t: &Classes, s: &[u8], i: usize) -> usize {
    let n = s.len();
    let b = s[i];
    // 's|'t|'re|'ve|'m|'ll|'d: case-sensitive, ASCII only.
    if b == b'\'' && i + 1 < n {
        match s[i + 1] {
            b's' | b't' | b'm' | b'd' => return i + 2,
            b'r' | b'v' if i + 2 < n && s[i + 2] == b'e' => return i + 3,
            b'l' if i + 2 < n && s[i + 2] == b'l' => return i + 3,
            _ => {}
        }
    }
    let (cp, len) = decode(s, i);
    let class = t.of(cp);
    // ` ?X+` for X in letters, numbers, other: an optional U+0020 then a run of one class.
    let (run_start, run_class) = if b == b' ' && i + 1 < n {
        let (next, _) = decode(s, i + 1);
        match t.of(next) {
            SPACE => (i, SPACE),
            c => (i + 1, c),
        }
    } else {
        (i, class)
    };
    if run_class != SPACE {
        return run_end(t, s, run_start, run_class);
    }
    // White space: `\s+(?!\S)` takes the run but leaves its last char when a non-space follows
    // (that char then prefixes the next word); a one-char run falls to `\s+`.
    let mut j = i + len;
    let mut last = i;
    while j < n {
        let (cp, len) = decode(s, j);
        if t.of(cp) != SPACE {
            break;
        }
        last = j;
        j += len;
    }
    if j == n || last == i {
        j
    } else {
        last
    }
}

/// End of the run of chars of class `class` starting at `i` (the char at `i` is of that class).
#[inline(always)]
pub(super) fn run_end(t: &Classes, s: &[u8], mut i: usize, class: u8) -> usize {
    let n = s.len();
    while i < n {
        let b = s[i];
        if b < 0x80 {
            if t.ascii(b) != class {
                break;
            }
            i += 1;
        } else {
            let (cp, len) = decode(s, i);
            if t.of(cp) != class {
                break;
            }
            i += len;
        }
    }
    i
}

/// Whether class `c` is a letter (for the Llama-3 splitter, which shares [`run_end`]).
#[inline(always)]
pub(super) fn is_letter(c: u8) -> bool {
    c == LETTER
}
