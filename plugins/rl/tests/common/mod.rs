//! Test fixtures: the prefix-mean policy and the character tokenizer (from
//! `llmlab-test-support`), preference pairs, reward functions and alignment jobs.

#![allow(dead_code, unused_imports)]

use llmlab_plugin_api::prelude::*;

pub use llmlab_test_support::{Chars, PrefixMean, EOT, VOCAB};

pub struct Pairs(pub Vec<Example>);

impl Pairs {
    /// "a+b" → chosen: two digits from 0-4, rejected: two digits from 5-9 (trivially separable).
    pub fn separable(n: usize) -> Pairs {
        Pairs(
            (0..n)
                .map(|i| Example {
                    prompt: format!("{}+{}", i % 10, (i * 7 + 3) % 10),
                    answer: format!("{}{}", i % 5, (i * 3) % 5),
                    rejected: Some(format!("{}{}", 5 + i % 5, 5 + (i * 3 + 1) % 5)),
                })
                .collect(),
        )
    }
}

impl ExampleSource for Pairs {
    fn name(&self) -> String {
        "pairs".into()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Example {
        self.0[index].clone()
    }
}

pub fn job<'a>(
    model: &'a dyn Model,
    tok: &'a dyn Tokenizer,
    data: &'a dyn ExampleSource,
) -> AlignJob<'a> {
    AlignJob {
        policy: model,
        tokenizer: tok,
        examples: data,
        reward: None,
    }
}

/// Rewards a completion whose first character is a digit 0-4 with 1, anything else with 0: a
/// preference the prefix-mean model can learn from its own samples.
pub struct LowFirstDigit;

impl RewardFn for LowFirstDigit {
    fn score(&self, _: &str, completion: &str) -> Result<f64> {
        Ok(match completion.chars().next() {
            Some('0'..='4') => 1.0,
            _ => 0.0,
        })
    }
}

pub fn job_with_reward<'a>(
    model: &'a dyn Model,
    tok: &'a dyn Tokenizer,
    data: &'a dyn ExampleSource,
    reward: &'a dyn RewardFn,
) -> AlignJob<'a> {
    AlignJob {
        reward: Some(reward),
        ..job(model, tok, data)
    }
}

/// `base` with the keys of `extra` set over it: a test's config on top of its file's defaults.
pub fn merged(base: Value, extra: Value) -> Value {
    let mut config = base;
    if let (Some(fields), Some(more)) = (config.as_object_mut(), extra.as_object()) {
        fields.extend(more.clone());
    }
    config
}
