//! `llmlab-test-support`: the test doubles several plugins' tests use, kept once instead of
//! copied into each `tests/common`: the digits-and-plus [`Chars`] tokenizer, the [`Bigram`] and
//! [`PrefixMean`] models (small enough that a test trains them in milliseconds), a patterned
//! token stream ([`Pattern`]), digit-sum examples ([`Sums`]), and a [`Recorder`] of metrics
//! that can cancel a run. What only one plugin's tests use stays in that plugin.

pub mod bigram;
pub mod chars;
pub mod pattern;
pub mod prefix_mean;
pub mod recorder;
pub mod sums;

pub use bigram::Bigram;
pub use chars::{Chars, EOT, VOCAB};
pub use pattern::Pattern;
pub use prefix_mean::PrefixMean;
pub use recorder::{context, Recorder};
pub use sums::Sums;

use std::collections::BTreeMap;

use llmlab_plugin_api::Model;

/// Every parameter of `model` by name, flattened (to compare weights before and after).
pub fn snapshot(model: &dyn Model) -> BTreeMap<String, Vec<f32>> {
    model
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}
