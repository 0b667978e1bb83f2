//! The fast path for byte-level BPE tokenizers: encoding and training with the hand-written
//! pre-tokenizers of [`crate::pretokenize`] instead of `tokenizers`' regex pipeline, producing the
//! same ids and the same `tokenizer.json`.
//!
//! [`encode::FastEncoder::from_tokenizer`] claims a tokenizer only when its whole configuration
//! is one the fast path reproduces exactly (no normalizer, a recognised pre-tokenizer, a plain
//! byte-level BPE model, no truncation or padding, added tokens without strip options);
//! everything else keeps `tokenizers`' own path.

pub mod encode;
pub mod hash;
pub mod merge;
pub mod train;

pub use encode::FastEncoder;

/// GPT-2's byte → char table (`bytes_to_unicode`): printable Latin-1 bytes stand for themselves,
/// the others for U+0100 onward, so every byte is a visible char.
pub fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    table
}

/// The bytes a byte-level token string stands for, or `None` when it holds a char outside the
/// byte alphabet (an added token's text, for instance).
pub fn token_bytes(token: &str, chars: &[char; 256]) -> Option<Vec<u8>> {
    token
        .chars()
        .map(|c| chars.iter().position(|&x| x == c).map(|b| b as u8))
        .collect()
}
