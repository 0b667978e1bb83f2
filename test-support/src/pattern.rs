//! [`Pattern`]: an in-memory token stream with a learnable pattern.

use llmlab_plugin_api::prelude::*;

use crate::VOCAB;

/// A token stream following `0 1 2 .. 7` with a `9` after every `3` on even cycles: mostly
/// deterministic bigrams, so loss falls well below ln(VOCAB).
pub struct Pattern {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Pattern {
    pub fn new(train_len: usize, val_len: usize) -> Pattern {
        let make = |len: usize| {
            let mut out = Vec::with_capacity(len);
            let mut cycle = 0;
            while out.len() < len {
                for t in 0..8u32 {
                    out.push(t);
                    if t == 3 && cycle % 2 == 0 {
                        out.push(9);
                    }
                }
                cycle += 1;
            }
            out.truncate(len);
            out
        };
        Pattern {
            train: make(train_len),
            val: make(val_len),
        }
    }
}

impl TokenData for Pattern {
    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train.len(),
            Split::Val => self.val.len(),
        }
    }
    fn read(&self, split: Split, start: usize, out: &mut [u32]) -> Result<()> {
        let src = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        };
        let end = start + out.len();
        if end > src.len() {
            return Err(Error::Data(format!(
                "read {start}..{end} past {}",
                src.len()
            )));
        }
        out.copy_from_slice(&src[start..end]);
        Ok(())
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
}
