//! Test fixtures, from `llmlab-test-support`: the bigram model, the patterned token stream, the
//! character tokenizer with digit-sum examples, and the metrics recorder.

#![allow(unused_imports)]

pub use llmlab_test_support::{context, Bigram, Chars, Pattern, Recorder, Sums, EOT, VOCAB};
