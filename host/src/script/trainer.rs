//! The trainer's script surface: `trainer("lm", #{..}).fit(model, ds)` and `tr.step(model, ds)`,
//! `trainer("sft", #{..}).fit(model, tasks, tok)`, `trainer("span", #{..}).fit(model, ds, tok)`. Each run writes into the session's run
//! directory: resolved configs, `metrics.jsonl`, `loss.png` / `lr.png`, checkpoints.

use std::sync::Arc;

use llmlab_plugin_api::{Context, ExampleSource, StepMetrics, TrainJob};
use rhai::{Engine, Map};

use super::data::{CorpusHandle, DatasetHandle};
use super::model::ModelHandle;
use super::run_dir::{in_run_dir, metrics_map};
use super::tokenizer::TokenizerHandle;
use super::{lock, script_error, Host, ScriptResult, TrainerHandle};

/// Runs `call` on the trainer inside the session's run directory.
fn in_run<T>(
    host: &Host,
    trainer: &TrainerHandle,
    model: &ModelHandle,
    floor: Option<f64>,
    call: impl FnOnce(&mut dyn llmlab_plugin_api::Trainer, &Context) -> llmlab_plugin_api::Result<T>,
) -> ScriptResult<T> {
    let mut tr = lock(&trainer.0);
    let name = tr.name().to_string();
    let qat = trainer.1.as_deref();
    let config = super::qat::with_qat(tr.config(), qat);
    let run = || {
        in_run_dir(
            host,
            &name,
            &format!("trainer-{name}"),
            &config,
            model,
            floor,
            // A sweep trial's trainer reports to it and stops when it is pruned.
            |ctx| super::sweep::with_trial(trainer.2.as_ref(), ctx, |ctx| call(&mut **tr, ctx)),
        )
    };
    match qat {
        Some(qat) => qat.around(model.0.as_ref(), run),
        None => run(),
    }
}

fn summary(metrics: &StepMetrics, floor: Option<f64>, run: &std::path::Path) -> String {
    let mut parts = Vec::new();
    let fmt = |k: &str| metrics.get(k).map(|v| format!("{k} {v:.4}"));
    for key in ["step", "loss", "val_loss", "val_ppl", "tokens_per_s"] {
        if let Some(p) = fmt(key) {
            parts.push(p);
        }
    }
    if let Some(f) = floor {
        parts.push(format!("entropy floor {f:.4}"));
    }
    format!("{} → {}", parts.join(", "), run.display())
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let h = host.clone();
    engine.register_fn(
        "fit",
        move |tr: &mut TrainerHandle, model: ModelHandle, ds: DatasetHandle| -> ScriptResult<Map> {
            let floor = ds.data().entropy_floor_nats_per_token();
            let metrics = in_run(&h, tr, &model, floor, |t, ctx| {
                t.fit(model.0.as_ref(), &TrainJob::tokens(ds.data()), ctx)
            })?;
            let run = h.run_dir().map_err(script_error)?;
            println!("{}", summary(&metrics, floor, &run.path));
            Ok(metrics_map(&metrics))
        },
    );
    let h = host.clone();
    engine.register_fn(
        "step",
        move |tr: &mut TrainerHandle, model: ModelHandle, ds: DatasetHandle| -> ScriptResult<Map> {
            let metrics = in_run(&h, tr, &model, None, |t, ctx| {
                t.step(model.0.as_ref(), &TrainJob::tokens(ds.data()), ctx)
            })?;
            Ok(metrics_map(&metrics))
        },
    );
    let h = host.clone();
    engine.register_fn(
        "fit",
        move |tr: &mut TrainerHandle,
              model: ModelHandle,
              tasks: CorpusHandle,
              tok: TokenizerHandle|
              -> ScriptResult<Map> {
            let examples: Arc<dyn ExampleSource> = tasks.examples.clone().ok_or_else(|| {
                script_error(format!(
                    "{} has no prompt/answer examples (use a task corpus)",
                    tasks.source.name()
                ))
            })?;
            let tokenizer = tok.read();
            let job = TrainJob::examples(examples.as_ref(), tokenizer.as_ref());
            let metrics = in_run(&h, tr, &model, None, |t, ctx| {
                t.fit(model.0.as_ref(), &job, ctx)
            })?;
            let run = h.run_dir().map_err(script_error)?;
            println!("{}", summary(&metrics, None, &run.path));
            Ok(metrics_map(&metrics))
        },
    );
    // A token dataset with its tokenizer: trainers that need token ids by name (`span`'s
    // sentinels `<extra_id_N>`).
    let h = host.clone();
    engine.register_fn(
        "fit",
        move |tr: &mut TrainerHandle,
              model: ModelHandle,
              ds: DatasetHandle,
              tok: TokenizerHandle|
              -> ScriptResult<Map> {
            let floor = ds.data().entropy_floor_nats_per_token();
            let tokenizer = tok.read();
            // TrainJob is #[non_exhaustive]: built with its constructor.
            let job = TrainJob::tokens(ds.data()).with_tokenizer(tokenizer.as_ref());
            let metrics = in_run(&h, tr, &model, floor, |t, ctx| {
                t.fit(model.0.as_ref(), &job, ctx)
            })?;
            let run = h.run_dir().map_err(script_error)?;
            println!("{}", summary(&metrics, floor, &run.path));
            Ok(metrics_map(&metrics))
        },
    );
    engine.register_fn("steps_done", |tr: &mut TrainerHandle| {
        lock(&tr.0).steps_done() as rhai::INT
    });
    let h = host.clone();
    engine.register_fn("run_dir", move || -> ScriptResult<String> {
        Ok(h.run_dir()
            .map_err(script_error)?
            .path
            .display()
            .to_string())
    });
}
