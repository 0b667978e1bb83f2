//! [`Sums`]: prompt/answer examples "a+b" → the last digit of a + b.

use llmlab_plugin_api::prelude::*;

/// "a+b" → the last digit of a + b, for single digits a, b.
pub struct Sums(pub Vec<Example>);

impl Sums {
    pub fn new(n: usize) -> Sums {
        Sums(
            (0..n)
                .map(|i| {
                    let (a, b) = (i % 10, (i * 7 + 3) % 10);
                    Example {
                        prompt: format!("{a}+{b}"),
                        answer: format!("{}", (a + b) % 10),
                        rejected: None,
                    }
                })
                .collect(),
        )
    }
}

impl ExampleSource for Sums {
    fn name(&self) -> String {
        "sums".into()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Example {
        self.0[index].clone()
    }
}
