//! The character classes the GPT-2 and Llama-3 split patterns test: `\p{L}`, `\p{N}`, `\s`, and
//! the case-insensitive letters of the contractions. They are read once from `regex-syntax`, the
//! crate whose tables `tokenizers`' own regexes (fancy-regex) compile against, so the hand-written
//! splitters agree with the regex on every code point of that Unicode version, not only on the
//! code points a test happened to try.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// Not a letter, number or white space: the `[^\s\p{L}\p{N}]` class.
pub const OTHER: u8 = 0;
/// `\p{L}`.
pub const LETTER: u8 = 1;
/// `\p{N}`.
pub const NUMBER: u8 = 2;
/// `\s` (Unicode White_Space).
pub const SPACE: u8 = 3;

/// Code points per block of the two-level table.
const BLOCK: usize = 256;
const PLANES_END: usize = 0x110000;

/// Class of every code point: a two-level table (index by `cp / 256`, then the deduplicated
/// 256-entry block), ~100 KB, plus an ASCII array for the common case.
pub struct Classes {
    ascii: [u8; 128],
    index: Vec<u16>,
    blocks: Vec<u8>,
    /// For each contraction letter of `(?i:'s|'t|'re|'ve|'m|'ll|'d)`, every char that matches it
    /// case-insensitively (e.g. `s`, `S` and `ſ` U+017F), as (char, letter) pairs.
    folds: Vec<(char, u8)>,
}

/// The code point ranges of a regex class such as `\p{L}`.
fn ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::parse(pattern).expect("built-in class pattern parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

impl Classes {
    fn build() -> Classes {
        let mut flat = vec![OTHER; PLANES_END];
        for (pattern, class) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (start, end) in ranges(pattern) {
                for cp in start..=end {
                    flat[cp as usize] = class;
                }
            }
        }
        let mut index = Vec::with_capacity(PLANES_END / BLOCK);
        let mut blocks: Vec<u8> = Vec::new();
        let mut seen: std::collections::HashMap<&[u8], u16> = std::collections::HashMap::new();
        for block in flat.chunks(BLOCK) {
            let id = *seen.entry(block).or_insert_with(|| {
                blocks.extend_from_slice(block);
                (blocks.len() / BLOCK - 1) as u16
            });
            index.push(id);
        }
        let mut ascii = [OTHER; 128];
        ascii.copy_from_slice(&flat[..128]);
        let mut folds = Vec::new();
        for letter in *b"strevmld" {
            for (start, end) in ranges(&format!("(?i:{})", letter as char)) {
                for cp in start..=end {
                    folds.push((char::from_u32(cp).expect("class holds chars"), letter));
                }
            }
        }
        Classes {
            ascii,
            index,
            blocks,
            folds,
        }
    }

    /// The table, built on first use (a few milliseconds).
    pub fn get() -> &'static Classes {
        static TABLE: OnceLock<Classes> = OnceLock::new();
        TABLE.get_or_init(Classes::build)
    }

    /// The class of an ASCII byte.
    #[inline(always)]
    pub fn ascii(&self, b: u8) -> u8 {
        self.ascii[b as usize & 127]
    }

    /// The class of any code point.
    #[inline(always)]
    pub fn of(&self, cp: u32) -> u8 {
        if cp < 128 {
            return self.ascii[cp as usize];
        }
        let block = self.index[(cp as usize) / BLOCK] as usize;
        self.blocks[block * BLOCK + (cp as usize) % BLOCK]
    }

    /// Whether `c` matches the ASCII letter `letter` under `(?i)` (Unicode simple case folding).
    #[inline]
    pub fn folds_to(&self, c: char, letter: u8) -> bool {
        if c.is_ascii() {
            return c.to_ascii_lowercase() as u8 == letter;
        }
        self.folds.iter().any(|&(f, l)| f == c && l == letter)
    }
}

/// Decodes the char starting at byte `i` of valid UTF-8 `s`: (code point, length in bytes).
#[inline(always)]
pub fn decode(s: &[u8], i: usize) -> (u32, usize) {
    let b0 = s[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            ((b0 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F),
            3,
        )
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((s[i + 1] as u32 & 0x3F) << 12)
                | ((s[i + 2] as u32 & 0x3F) << 6)
                | (s[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_known_chars() {
        let t = Classes::get();
        assert_eq!(t.of('a' as u32), LETTER);
        assert_eq!(t.of('é' as u32), LETTER);
        assert_eq!(t.of('中' as u32), LETTER);
        assert_eq!(t.of('7' as u32), NUMBER);
        assert_eq!(t.of('½' as u32), NUMBER);
        assert_eq!(t.of('Ⅻ' as u32), NUMBER);
        assert_eq!(t.of(' ' as u32), SPACE);
        assert_eq!(t.of(0x85), SPACE);
        assert_eq!(t.of(0x3000), SPACE);
        assert_eq!(t.of(0x200B), OTHER);
        assert_eq!(t.of('\u{301}' as u32), OTHER);
        assert_eq!(t.of('😀' as u32), OTHER);
        assert!(t.folds_to('ſ', b's'));
        assert!(t.folds_to('S', b's'));
        assert!(!t.folds_to('K', b's'));
    }

    #[test]
    fn decode_matches_std() {
        let s = "a é 中 😀";
        let mut i = 0;
        for c in s.chars() {
            let (cp, n) = decode(s.as_bytes(), i);
            assert_eq!((cp, n), (c as u32, c.len_utf8()));
            i += n;
        }
    }
}
