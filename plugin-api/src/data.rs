//! The data a component reads, as traits the host's built-ins implement: raw text for tokenizer
//! training ([`TextSource`]), token streams for language-model training ([`TokenData`]), and
//! prompt/answer examples for SFT and alignment ([`ExampleSource`]), and labelled texts for
//! classification and regression ([`LabelledSource`], GLUE-style tasks).

use crate::Result;

/// Documents of text: a built-in corpus or a user's file.
pub trait TextSource: Send + Sync {
    /// What to call it in messages: `"stories(seed=7)"`, a file path.
    fn name(&self) -> String;
    /// The documents in order. Errors (bad UTF-8, I/O) name the file and offset.
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_>;
    /// Size in bytes when known cheaply; decides whether training shows a progress bar.
    fn approx_bytes(&self) -> Option<u64>;
    /// `-ln p(document)` in nats for corpora whose distribution is known (built-in generators):
    /// token datasets made from them report the entropy floor in nats per token.
    fn document_nats(&self, index: usize) -> Option<f64> {
        let _ = index;
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
}

/// A tokenized corpus split into train and validation streams (memory-mapped by the host).
pub trait TokenData: Send + Sync {
    /// Number of tokens in `split`.
    fn len(&self, split: Split) -> usize;
    fn is_empty(&self, split: Split) -> bool {
        self.len(split) == 0
    }
    /// Copies tokens `start .. start + out.len()` of `split` into `out`.
    fn read(&self, split: Split, start: usize, out: &mut [u32]) -> Result<()>;
    fn vocab_size(&self) -> usize;
    /// For corpora with a known distribution: the best achievable loss in nats per token.
    fn entropy_floor_nats_per_token(&self) -> Option<f64> {
        None
    }
}

/// A prompt with its answer, and for preference data a rejected answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub answer: String,
    pub rejected: Option<String>,
}

/// The text of a prompt followed by its answer, as documents of prompt/answer data read: no
/// space after a prompt ending in a bare `=` (`12+345=357`), one space otherwise
/// (`sort 3 1 2 = 1 2 3`).
pub fn join(prompt: &str, answer: &str) -> String {
    if prompt.ends_with('=') && !prompt.ends_with(" =") {
        format!("{prompt}{answer}")
    } else {
        format!("{prompt} {answer}")
    }
}

/// A piece of an example's text in training order: `trainable` pieces are what the model learns
/// to say (a chat's assistant turns), the others only condition it (system and user turns,
/// template markup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSegment {
    pub text: String,
    pub trainable: bool,
}

/// Prompt/answer examples, optionally with a checker for verifiable tasks.
pub trait ExampleSource: Send + Sync {
    fn name(&self) -> String;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, index: usize) -> Example;
    /// For multi-turn (chat) data: example `index` as rendered segments, trained on where
    /// `trainable` (SFT masks the rest). `None` (the default): train on `prompt` → `answer`.
    fn segments(&self, index: usize) -> Option<Vec<TextSegment>> {
        let _ = index;
        None
    }
    /// `Some(correct)` when the task can check answers (arithmetic, sorting).
    fn check(&self, prompt: &str, answer: &str) -> Option<bool> {
        let _ = (prompt, answer);
        None
    }
}

/// The label of a [`LabelledText`]: a class index (into [`LabelledSource::label_names`]) or a
/// real-valued score (regression, e.g. similarity on 0–5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Class(usize),
    Score(f64),
}

/// One labelled example: a sentence, or a sentence pair, with its label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledText {
    pub text: String,
    pub text_pair: Option<String>,
    pub label: Label,
}

/// One example of a token-classification task: a sentence's words and one tag per word
/// (indices into [`LabelledSource::label_names`]), as `tokens`/`labels` columns hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedWords {
    pub words: Vec<String>,
    pub tags: Vec<usize>,
}

/// A labelled data set with train and validation splits (GLUE-style tasks, a user's
/// JSONL/CSV files with `text`, `text_pair`, `label`). A token-classification task
/// (`is_tagging`) tags every word instead: `tagged` gives the words and their tags, and `get`
/// the sentence as text (its `label` is not meaningful).
pub trait LabelledSource: Send + Sync {
    /// What to call it in messages: `"glue:sentiment(n=2000, seed=0)"`, a file path.
    fn name(&self) -> String;
    fn len(&self, split: Split) -> usize;
    fn get(&self, split: Split, index: usize) -> LabelledText;
    /// The class names in index order; empty for a regression task.
    fn label_names(&self) -> Vec<String>;
    /// Whether every example is a sentence pair (`text_pair` given).
    fn is_pair(&self) -> bool;
    /// The metric the task is judged by: `"accuracy"`, `"f1"`, `"mcc"`, `"pearson"`,
    /// `"spearman"`.
    fn metric(&self) -> String {
        if self.label_names().is_empty() {
            "pearson".into()
        } else {
            "accuracy".into()
        }
    }
    /// Whether the task tags each word (token classification) rather than labelling the text.
    fn is_tagging(&self) -> bool {
        false
    }
    /// The words and tags of a token-classification example; `None` for sentence tasks.
    fn tagged(&self, split: Split, index: usize) -> Option<TaggedWords> {
        let _ = (split, index);
        None
    }
}
