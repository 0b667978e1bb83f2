//! What a checkpoint records about the data it was trained on, so that resuming on other data is
//! refused instead of silently continuing with a cursor and an RNG that mean nothing there.
//!
//! Token data: the train and validation lengths, the vocabulary size, and an FNV-1a checksum of
//! up to three windows of [`WINDOW`] training tokens (start, middle, end): cheap on a
//! memory-mapped dataset of any size, and any re-encoding (other tokenizer, other corpus, other
//! `val_fraction`) changes it. Examples: the source's name, count, and a checksum of the first
//! [`EXAMPLES`] prompt/answer pairs.

use crate::checkpoint::fnv1a64;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::{Error, Result, Split, TrainJob};

/// Tokens per sampled window.
pub const WINDOW: usize = 4096;
/// Examples checksummed.
pub const EXAMPLES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    crate = "llmlab_plugin_api::serde",
    tag = "kind",
    rename_all = "lowercase"
)]
pub enum DataIdentity {
    Tokens {
        train_tokens: u64,
        val_tokens: u64,
        vocab_size: u64,
        sample_fnv1a64: String,
    },
    Examples {
        name: String,
        examples: u64,
        sample_fnv1a64: String,
    },
}

impl DataIdentity {
    /// The identity of what `job` trains on: its token stream, or else its examples.
    pub fn of(job: &TrainJob<'_>) -> Result<DataIdentity> {
        if let Some(labelled) = job.labelled {
            let mut text = String::new();
            for i in 0..labelled.len(Split::Train).min(EXAMPLES) {
                let example = labelled.get(Split::Train, i);
                text.push_str(&example.text);
                text.push('\0');
                text.push_str(example.text_pair.as_deref().unwrap_or(""));
                text.push_str(&format!("\0{:?}\0", example.label));
            }
            return Ok(DataIdentity::Examples {
                name: labelled.name(),
                examples: labelled.len(Split::Train) as u64,
                sample_fnv1a64: format!("{:016x}", fnv1a64(text.as_bytes())),
            });
        }
        match (job.tokens, job.examples) {
            (Some(tokens), _) => {
                let len = tokens.len(Split::Train);
                let window = WINDOW.min(len);
                let mut bytes = Vec::with_capacity(3 * window * 4);
                let mut buffer = vec![0u32; window];
                for start in [0, (len - window) / 2, len - window] {
                    tokens.read(Split::Train, start, &mut buffer)?;
                    bytes.extend(buffer.iter().flat_map(|t| t.to_le_bytes()));
                }
                Ok(DataIdentity::Tokens {
                    train_tokens: len as u64,
                    val_tokens: tokens.len(Split::Val) as u64,
                    vocab_size: tokens.vocab_size() as u64,
                    sample_fnv1a64: format!("{:016x}", fnv1a64(&bytes)),
                })
            }
            (None, Some(examples)) => {
                let mut text = String::new();
                for i in 0..examples.len().min(EXAMPLES) {
                    let example = examples.get(i);
                    text.push_str(&example.prompt);
                    text.push('\0');
                    text.push_str(&example.answer);
                    text.push('\0');
                }
                Ok(DataIdentity::Examples {
                    name: examples.name(),
                    examples: examples.len() as u64,
                    sample_fnv1a64: format!("{:016x}", fnv1a64(text.as_bytes())),
                })
            }
            (None, None) => Err(Error::Data(
                "the training job has no data (neither tokens nor examples)".into(),
            )),
        }
    }

    /// What differs between the checkpoint's data (`self`) and the data now, in words; `None`
    /// when they are the same.
    pub fn difference(&self, now: &DataIdentity) -> Option<String> {
        if self == now {
            return None;
        }
        Some(match (self, now) {
            (
                DataIdentity::Tokens {
                    train_tokens: a,
                    val_tokens: av,
                    vocab_size: ab,
                    ..
                },
                DataIdentity::Tokens {
                    train_tokens: b,
                    val_tokens: bv,
                    vocab_size: bb,
                    ..
                },
            ) => {
                if (a, av, ab) == (b, bv, bb) {
                    format!("{a} training tokens both, but different tokens")
                } else {
                    format!(
                        "{a} train / {av} val tokens, vocab {ab} then; {b} / {bv}, vocab {bb} now"
                    )
                }
            }
            (
                DataIdentity::Examples {
                    name: a,
                    examples: an,
                    ..
                },
                DataIdentity::Examples {
                    name: b,
                    examples: bn,
                    ..
                },
            ) => format!("{an} examples of {a} then; {bn} examples of {b} now"),
            _ => "token data then, examples now (or the reverse)".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::TokenData;

    struct Tokens(Vec<u32>);

    impl TokenData for Tokens {
        fn len(&self, split: Split) -> usize {
            match split {
                Split::Train => self.0.len(),
                Split::Val => 0,
            }
        }
        fn read(&self, _: Split, start: usize, out: &mut [u32]) -> Result<()> {
            out.copy_from_slice(&self.0[start..start + out.len()]);
            Ok(())
        }
        fn vocab_size(&self) -> usize {
            100
        }
    }

    #[test]
    fn same_tokens_same_identity_any_change_differs() {
        let a: Vec<u32> = (0..20_000).map(|i| i % 97).collect();
        let id = |t: &Tokens| DataIdentity::of(&TrainJob::tokens(t)).unwrap();
        let base = id(&Tokens(a.clone()));
        assert_eq!(base.difference(&id(&Tokens(a.clone()))), None);
        let mut changed = a.clone();
        changed[10_000] = 5; // inside the middle window
        let why = base.difference(&id(&Tokens(changed))).unwrap();
        assert!(why.contains("different tokens"), "{why}");
        let why = base.difference(&id(&Tokens(a[..15_000].to_vec()))).unwrap();
        assert!(
            why.contains("20000 train") && why.contains("15000"),
            "{why}"
        );
        // Fewer tokens than a window: the windows overlap, still fine.
        id(&Tokens(vec![1, 2, 3]));
    }
}
