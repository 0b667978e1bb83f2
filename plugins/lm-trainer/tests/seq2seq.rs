//! The `seq2seq` trainer's batches for a multitask mixture: rows whose prompts and answers
//! differ in length train on exactly the answer and its end-of-text, each row packed
//! `prompt </s> answer` and padded without touching the loss.

mod common;

use common::{Chars, EOT};
use llmlab_lm_trainer::batches::DataCursor;
use llmlab_lm_trainer::rng::SplitMix64;
use llmlab_lm_trainer::seq2seq::TextToText;
use llmlab_lm_trainer::train_loop::{Objective, Setup};
use llmlab_plugin_api::prelude::*;

/// Prompts of 1 to 11 characters with answers of 1 to 8, as tasks with different prefixes
/// give in one batch.
struct Mixed;

const PAIRS: [(&str, &str); 6] = [
    ("7", "12345678"),
    ("12345+67890", "1"),
    ("3+4", "7"),
    ("99999+1", "100000"),
    ("1+1+1+1+1", "5"),
    ("80", "08"),
];

impl ExampleSource for Mixed {
    fn name(&self) -> String {
        "mixed".into()
    }
    fn len(&self) -> usize {
        PAIRS.len()
    }
    fn get(&self, index: usize) -> Example {
        Example {
            prompt: PAIRS[index].0.into(),
            answer: PAIRS[index].1.into(),
            rejected: None,
        }
    }
}

#[test]
fn a_mixed_batch_trains_on_each_answer_and_its_end_of_text_only() {
    let job = TrainJob::examples(&Mixed, &Chars);
    let setup = Setup {
        batch_size: PAIRS.len(),
        ctx: 32,
        seed: 3,
        eval_batches: 0,
        eval: false,
        model_vocab_size: 16,
    };
    let mut objective = TextToText::default();
    objective.prepare(&job, &setup).unwrap();
    let mut cursor = DataCursor::default();
    let batch = objective
        .next_batch(&job, &mut SplitMix64::new(0), &mut cursor, &Device::Cpu)
        .unwrap();
    let inputs: Vec<Vec<u32>> = batch.inputs.to_vec2().unwrap();
    let targets: Vec<Vec<u32>> = batch.targets.to_vec2().unwrap();
    let mask: Vec<Vec<f32>> = batch.mask.as_ref().unwrap().to_vec2().unwrap();
    let mut seen = Vec::new();
    let mut kept = 0;
    for r in 0..inputs.len() {
        // The prompt is the row up to its first end-of-text (what t5 feeds its encoder).
        let eos_at = inputs[r].iter().position(|&t| t == EOT).unwrap();
        let prompt = Chars.decode(&inputs[r][..eos_at]).unwrap();
        let (_, answer) = PAIRS
            .iter()
            .find(|(p, _)| *p == prompt)
            .unwrap_or_else(|| panic!("row {r}: prompt {prompt:?} is no example's"));
        let trained: Vec<usize> = (0..mask[r].len()).filter(|&j| mask[r][j] == 1.0).collect();
        let expected: Vec<usize> = (eos_at..eos_at + answer.len() + 1).collect();
        assert_eq!(
            trained, expected,
            "row {r} ({prompt:?} -> {answer:?}): the loss must start at the prompt's end-of-text and cover the answer and its end-of-text"
        );
        let trained_targets: Vec<u32> = trained.iter().map(|&j| targets[r][j]).collect();
        let mut want = Chars.encode(answer).unwrap();
        want.push(EOT);
        assert_eq!(trained_targets, want, "row {r}: targets");
        // Inputs after the prompt's end-of-text: the answer, then padding.
        let answer_ids = Chars.encode(answer).unwrap();
        assert_eq!(
            &inputs[r][eos_at + 1..eos_at + 1 + answer_ids.len()],
            answer_ids.as_slice(),
            "row {r}: the decoder's inputs"
        );
        kept += trained.len();
        seen.push(prompt);
    }
    assert_eq!(batch.loss_tokens, kept);
    seen.sort();
    let mut all: Vec<String> = PAIRS.iter().map(|(p, _)| p.to_string()).collect();
    all.sort();
    assert_eq!(seen, all, "one epoch's batch holds every example once");
}
