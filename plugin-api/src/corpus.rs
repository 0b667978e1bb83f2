//! The [`Corpus`] component: a named data set a script opens with `corpus("name", #{..})`.
//! Every corpus has documents (tokenizer training, token datasets); a task corpus also has
//! prompt/answer examples with an exact checker (SFT, `accuracy`, RL prompts), knows what a
//! well-formed answer looks like (the partial credit of its reward), and can make preference
//! pairs (each example with a plausible wrong answer). A classification task corpus has
//! labelled texts instead.

use std::sync::Arc;

use crate::{Error, ExampleSource, LabelledSource, Result, TextSource};

pub trait Corpus: Send + Sync {
    /// What to call it in messages: `"stories(bytes=2000000, seed=0)"`.
    fn name(&self) -> String;
    /// The documents, in order.
    fn documents(&self) -> Arc<dyn TextSource>;
    /// Whether the documents are separate texts (a token dataset puts the end-of-text token
    /// after each), or consecutive pieces of one running text.
    fn separate_documents(&self) -> bool {
        true
    }
    /// Prompt/answer examples, for corpora that have them; [`ExampleSource::check`] is the
    /// exact checker.
    fn examples(&self) -> Option<Arc<dyn ExampleSource>> {
        None
    }
    /// Labelled sentences or pairs with exact labels, for corpora that are classification or
    /// regression tasks (the GLUE-style suite).
    fn labelled(&self) -> Option<Arc<dyn LabelledSource>> {
        None
    }
    /// Whether `answer` has the form of an answer to `prompt` (a number for arithmetic) even when
    /// it is wrong: the partial credit of the task's reward. `None`: the corpus cannot tell.
    fn well_formed(&self, prompt: &str, answer: &str) -> Option<bool> {
        let _ = (prompt, answer);
        None
    }
    /// `n` preference pairs from the examples (cycled), each with a plausible wrong answer as
    /// `rejected` drawn with `seed`; `None` = one per example.
    fn preferences(&self, n: Option<usize>, seed: u64) -> Result<Box<dyn Corpus>> {
        let _ = (n, seed);
        Err(Error::Data(format!(
            "{} cannot make preference pairs (only task corpora can; for other data write a \
             JSONL file and use preferences(path))",
            self.name()
        )))
    }
}
