//! Checkpoints: resume is bit-exact, and a damaged checkpoint is refused with the file's name
//! while an interrupted write leaves the previous one usable.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{context, Bigram, Pattern, Recorder};
use llmlab_lm_trainer::new_lm_trainer;
use llmlab_plugin_api::prelude::*;

fn config() -> Value {
    json!({ "steps": 20, "batch_size": 3, "ctx": 8, "lr": 0.03, "min_lr": 0.001, "warmup": 4,
            "grad_accum": 2, "grad_clip": 0.5, "eval_every": 5, "eval_batches": 2,
            "checkpoint_every": 10, "log_every": 1, "seed": 11 })
}

fn resume_config(from: &Path) -> Value {
    let mut c = config();
    c["resume"] = json!(from.to_str().unwrap());
    c
}

#[test]
fn resume_is_bit_exact() {
    let data = Pattern::new(3000, 200);
    // 20 steps straight.
    let straight_model = Bigram::new(12, 16, 0);
    let straight = Arc::new(Recorder::default());
    new_lm_trainer(&config())
        .unwrap()
        .fit(
            &straight_model,
            &TrainJob::tokens(&data),
            &context(straight.clone(), None),
        )
        .unwrap();

    // 10 steps (step by step, as a script would), checkpointed by checkpoint_every = 10.
    let dir = tempfile::tempdir().unwrap();
    let first_model = Bigram::new(12, 16, 0);
    let ctx = context(Arc::new(Recorder::default()), Some(dir.path()));
    let mut first = new_lm_trainer(&config()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..10 {
        losses.push(
            first
                .step(&first_model, &TrainJob::tokens(&data), &ctx)
                .unwrap()["loss"],
        );
    }
    assert!(dir.path().join("checkpoint/trainer.json").is_file());

    // A fresh model (other weights) and a fresh trainer resume from the run directory.
    let resumed_model = Bigram::new(12, 16, 5);
    let resumed = Arc::new(Recorder::default());
    let mut second = new_lm_trainer(&resume_config(dir.path())).unwrap();
    second
        .fit(
            &resumed_model,
            &TrainJob::tokens(&data),
            &context(resumed.clone(), Some(dir.path())),
        )
        .unwrap();
    assert_eq!(second.steps_done(), 20);
    losses.extend(resumed.losses().iter().map(|(_, l)| *l));

    let expected: Vec<f64> = straight.losses().iter().map(|(_, l)| *l).collect();
    assert_eq!(expected.len(), 20);
    assert_eq!(losses, expected, "loss sequences differ");
    assert_eq!(resumed.losses()[0].0, 11);
    assert_eq!(
        resumed_model.snapshot(),
        straight_model.snapshot(),
        "final weights differ"
    );
    // Evaluations after the resume match too.
    let val = |r: &Recorder| -> Vec<(u64, f64)> {
        r.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(s, m)| m.get("val_loss").map(|v| (*s, *v)))
            .collect()
    };
    let straight_val: Vec<(u64, f64)> = val(&straight)
        .into_iter()
        .filter(|(s, _)| *s > 10)
        .collect();
    assert_eq!(val(&resumed), straight_val);
}

fn trained_checkpoint(dir: &Path) {
    let model = Bigram::new(12, 16, 0);
    let data = Pattern::new(3000, 200);
    let mut c = config();
    c["steps"] = json!(4);
    new_lm_trainer(&c)
        .unwrap()
        .fit(
            &model,
            &TrainJob::tokens(&data),
            &context(Arc::new(Recorder::default()), Some(dir)),
        )
        .unwrap();
}

fn resume_error(dir: &Path) -> String {
    let model = Bigram::new(12, 16, 1);
    let data = Pattern::new(3000, 200);
    new_lm_trainer(&resume_config(dir))
        .unwrap()
        .step(&model, &TrainJob::tokens(&data), &Context::cpu())
        .unwrap_err()
        .to_string()
}

fn resumes(dir: &Path) -> u64 {
    let model = Bigram::new(12, 16, 1);
    let data = Pattern::new(3000, 200);
    let mut trainer = new_lm_trainer(&resume_config(dir)).unwrap();
    trainer
        .step(&model, &TrainJob::tokens(&data), &Context::cpu())
        .unwrap();
    trainer.steps_done()
}

#[test]
fn truncated_or_corrupt_checkpoint_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    trained_checkpoint(dir.path());
    let ckpt = dir.path().join("checkpoint");
    assert_eq!(resumes(dir.path()), 5);

    let weights = ckpt.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    let err = resume_error(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&weights, &good).unwrap();

    let moments = ckpt.join("optimizer.safetensors");
    let mut bytes = std::fs::read(&moments).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&moments, &bytes).unwrap();
    let err = resume_error(dir.path());
    assert!(
        err.contains("optimizer.safetensors") && err.contains("checksum"),
        "{err}"
    );
    bytes[last] ^= 0x40;
    std::fs::write(&moments, &bytes).unwrap();

    let manifest = ckpt.join("trainer.json");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 3]).unwrap();
    let err = resume_error(dir.path());
    assert!(err.contains("trainer.json"), "{err}");
    std::fs::write(&manifest, &text).unwrap();

    // Repaired: the checkpoint is good again, nothing was deleted on refusal.
    assert_eq!(resumes(dir.path()), 5);
    let err = resume_error(&dir.path().join("nowhere"));
    assert!(
        err.contains("nowhere") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn an_interrupted_write_leaves_the_previous_checkpoint_usable() {
    let dir = tempfile::tempdir().unwrap();
    trained_checkpoint(dir.path());
    // A crash while writing the next one leaves a half-written temp directory behind...
    let tmp = dir.path().join(".checkpoint.tmp-999999");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("model.safetensors"), b"half").unwrap();
    assert_eq!(resumes(dir.path()), 5);
    // ...or, between the two renames, only the moved-aside previous checkpoint.
    std::fs::rename(
        dir.path().join("checkpoint"),
        dir.path().join(".checkpoint.old"),
    )
    .unwrap();
    assert_eq!(resumes(dir.path()), 5);
    // Resuming straight from a checkpoint directory works as well.
    assert_eq!(resumes(&dir.path().join(".checkpoint.old")), 5);
}

#[test]
fn a_new_checkpoint_replaces_the_old_one_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    trained_checkpoint(dir.path());
    trained_checkpoint(dir.path());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["checkpoint".to_string()]);
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["model.safetensors", "optimizer.safetensors", "trainer.json"]
    );
}
