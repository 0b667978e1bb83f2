//! What a task asks of the model (`output_type`, as lm-evaluation-harness names them) and what
//! comes back for one document: the per-document outcome every metric is computed from.

use llmlab_plugin_api::serde::{Deserialize, Serialize};

/// The four request types of lm-evaluation-harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "snake_case")]
pub enum OutputType {
    /// `log p(target | prompt)` and whether greedy decoding would produce the target.
    Loglikelihood,
    /// `log p(document)` over the whole text, in windows of the model's context.
    LoglikelihoodRolling,
    /// `log p(choice | prompt)` for each choice; the answer is the most likely one.
    MultipleChoice,
    /// Sampled or greedy text up to a stop sequence, then filtered and checked.
    GenerateUntil,
}

impl OutputType {
    pub fn name(self) -> &'static str {
        match self {
            OutputType::Loglikelihood => "loglikelihood",
            OutputType::LoglikelihoodRolling => "loglikelihood_rolling",
            OutputType::MultipleChoice => "multiple_choice",
            OutputType::GenerateUntil => "generate_until",
        }
    }
}

/// One generated sample and its verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(crate = "llmlab_plugin_api::serde")]
pub struct Sample {
    /// The raw generated text (cut before the first stop sequence).
    pub text: String,
    /// After the task's per-sample filters.
    pub filtered: String,
    pub correct: bool,
    /// Why an executed sample failed (`operation limit`, `wrong answer on f(3)`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What one document produced.
#[derive(Debug, Clone, Serialize)]
#[serde(
    crate = "llmlab_plugin_api::serde",
    tag = "type",
    rename_all = "snake_case"
)]
pub enum Outcome {
    Loglikelihood {
        /// Natural-log likelihood of the target tokens.
        ll: f64,
        is_greedy: bool,
        tokens: usize,
    },
    MultipleChoice {
        lls: Vec<f64>,
        /// Bytes of each choice's text (acc_norm divides by them).
        choice_bytes: Vec<usize>,
        gold: usize,
    },
    Rolling {
        ll: f64,
        tokens: usize,
        bytes: usize,
        words: usize,
        /// `−ln p(document)` under the corpus's own distribution, when it is known.
        floor_nats: Option<f64>,
    },
    Generated {
        samples: Vec<Sample>,
        /// The answer after the aggregate filter (majority vote), or the first sample's.
        answer: String,
        target: String,
        /// Whether `answer` is right (the task's checker, or exact match with `target`).
        correct: bool,
    },
}

impl Outcome {
    /// Index of the most likely choice, raw or per byte (acc_norm).
    pub fn predicted_choice(&self, per_byte: bool) -> Option<usize> {
        let Outcome::MultipleChoice {
            lls, choice_bytes, ..
        } = self
        else {
            return None;
        };
        let score = |i: usize| {
            if per_byte {
                lls[i] / choice_bytes[i].max(1) as f64
            } else {
                lls[i]
            }
        };
        (0..lls.len()).max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
    }
}
