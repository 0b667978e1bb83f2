//! `trainer("span")` resumes bit-exactly: N steps straight equal k steps, a checkpoint, and a
//! fresh trainer and model resumed to N — the same losses, evaluations and final weights (the
//! windows and the noise spans come from the loop's checkpointed generator).

mod common;

use std::sync::Arc;

use common::{context, Bigram, Pattern, Recorder};
use llmlab_lm_trainer::span::new_span_trainer;
use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TextSource;

/// Ids 0..=9 are [`Pattern`]'s tokens, 10 is the sentinel `<extra_id_0>`, 11 is `</s>`.
#[derive(Clone)]
struct Sentinels;

impl Tokenizer for Sentinels {
    fn name(&self) -> &str {
        "sentinels"
    }
    fn config(&self) -> Value {
        Value::Null
    }
    fn train(&mut self, _: &dyn TextSource, _: &Context) -> Result<()> {
        Ok(())
    }
    fn encode(&self, _: &str) -> Result<Vec<u32>> {
        Err(Error::unsupported("sentinels", "encoding text"))
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(format!("{ids:?}"))
    }
    fn vocab_size(&self) -> usize {
        12
    }
    fn token_to_id(&self, token: &str) -> Option<u32> {
        (token == "<extra_id_0>").then_some(10)
    }
    fn id_to_token(&self, id: u32) -> Option<String> {
        Some(id.to_string())
    }
    fn special_token(&self, role: SpecialToken) -> Option<u32> {
        (role == SpecialToken::EndOfText).then_some(11)
    }
    fn to_json(&self) -> Result<String> {
        Err(Error::unsupported("sentinels", "saving"))
    }
    fn clone_box(&self) -> Box<dyn Tokenizer> {
        Box::new(self.clone())
    }
}

/// ctx 8: windows of 7 tokens with one noise span, so one sentinel suffices.
fn config() -> Value {
    json!({ "steps": 12, "batch_size": 3, "ctx": 8, "lr": 0.03, "min_lr": 0.001, "warmup": 3,
            "grad_accum": 2, "grad_clip": 0.5, "eval_every": 3, "eval_batches": 2,
            "checkpoint_every": 6, "log_every": 1, "seed": 5 })
}

fn val_losses(r: &Recorder, after: u64) -> Vec<(u64, f64)> {
    r.lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| *s > after)
        .filter_map(|(s, m)| Some((*s, *m.get("val_loss")?)))
        .collect()
}

#[test]
fn span_resume_is_bit_exact() {
    let data = Pattern::new(3000, 200);
    let tok = Sentinels;
    let job = || TrainJob::tokens(&data).with_tokenizer(&tok);

    let straight_model = Bigram::new(12, 32, 0);
    let straight = Arc::new(Recorder::default());
    new_span_trainer(&config())
        .unwrap()
        .fit(&straight_model, &job(), &context(straight.clone(), None))
        .unwrap();

    // 6 steps one at a time, checkpointed by checkpoint_every = 6.
    let dir = tempfile::tempdir().unwrap();
    let first_model = Bigram::new(12, 32, 0);
    let ctx = context(Arc::new(Recorder::default()), Some(dir.path()));
    let mut first = new_span_trainer(&config()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..6 {
        losses.push(first.step(&first_model, &job(), &ctx).unwrap()["loss"]);
    }
    assert!(dir.path().join("checkpoint/trainer.json").is_file());

    // Other weights and a fresh trainer: everything must come from the checkpoint.
    let resumed_model = Bigram::new(12, 32, 4);
    let resumed = Arc::new(Recorder::default());
    let mut c = config();
    c["resume"] = json!(dir.path().to_str().unwrap());
    let mut second = new_span_trainer(&c).unwrap();
    second
        .fit(
            &resumed_model,
            &job(),
            &context(resumed.clone(), Some(dir.path())),
        )
        .unwrap();
    assert_eq!(second.steps_done(), 12);
    assert_eq!(resumed.losses()[0].0, 7, "the resumed run starts at step 7");
    losses.extend(resumed.losses().iter().map(|(_, l)| *l));

    let expected: Vec<f64> = straight.losses().iter().map(|(_, l)| *l).collect();
    assert_eq!(expected.len(), 12);
    assert_eq!(losses, expected, "loss sequences differ");
    assert_eq!(
        resumed_model.snapshot(),
        straight_model.snapshot(),
        "final weights differ"
    );
    let after = val_losses(&resumed, 6);
    assert!(!after.is_empty(), "evaluations after the resume");
    assert_eq!(after, val_losses(&straight, 6));
    // The corruption draws from the generator: another seed gives other losses.
    let mut other = config();
    other["seed"] = json!(6);
    let other_run = Arc::new(Recorder::default());
    new_span_trainer(&other)
        .unwrap()
        .fit(
            &Bigram::new(12, 32, 0),
            &job(),
            &context(other_run.clone(), None),
        )
        .unwrap();
    assert_ne!(
        other_run
            .losses()
            .iter()
            .map(|(_, l)| *l)
            .collect::<Vec<_>>(),
        expected
    );
}
