//! The aligners' script surface (`rl(name, #{..})`, plugin `rl`):
//!
//! ```rhai
//! let prefs = corpus("arithmetic", #{ n: 2000 }).preferences(#{ seed: 1 });
//! let rm = rl("reward", #{ steps: 200 });
//! rm.fit(gpt, prefs, tok);                 // trains a copy of gpt's body + a scalar head
//! print(rm.score("12+30=", "42"));
//! rm.save("runs/rm"); rm.load("runs/rm", tok);
//! let dpo = rl("dpo", #{ beta: 0.1 });
//! print(dpo.evaluate(gpt, prefs, tok));   // held-out preference metrics, no training
//! dpo.fit(gpt, prefs, tok);                // aligns gpt in place against a frozen copy
//! ```
//!
//! `fit` and `step` run inside the session's run directory (configs, `metrics.jsonl`, plots,
//! and what the aligner saves there), as trainers do.

use std::path::Path;
use std::sync::Arc;

use llmlab_plugin_api::{AlignJob, Aligner, Context, ExampleSource, Instance, Kind, StepMetrics};
use rhai::{Engine, Map, FLOAT};

use super::data::CorpusHandle;
use super::model::ModelHandle;
use super::run_dir::{in_run_dir, metrics_map};
use super::tokenizer::TokenizerHandle;
use super::{lock, plugin_call, script_error, AlignerHandle, Host, ScriptResult};

fn pairs_of(prefs: &CorpusHandle) -> ScriptResult<Arc<dyn ExampleSource>> {
    prefs.examples.clone().ok_or_else(|| {
        script_error(format!(
            "{} has no preference pairs (use corpus(..).preferences(#{{..}}) or preferences(\"file.jsonl\"))",
            prefs.source.name()
        ))
    })
}

/// Runs `call` on the aligner with `job`; with `in_run`, inside the session's run directory.
fn with_job(
    host: &Host,
    aligner: &AlignerHandle,
    model: &ModelHandle,
    prefs: &CorpusHandle,
    tok: &TokenizerHandle,
    in_run: bool,
    call: impl FnOnce(
        &mut dyn Aligner,
        &AlignJob<'_>,
        &Context,
    ) -> llmlab_plugin_api::Result<StepMetrics>,
) -> ScriptResult<Map> {
    let examples = pairs_of(prefs)?;
    let tokenizer = tok.read();
    let job = AlignJob {
        policy: model.0.as_ref(),
        tokenizer: tokenizer.as_ref(),
        examples: examples.as_ref(),
        reward: None,
        reward_model: None,
    };
    let mut a = lock(&aligner.0);
    let name = a.name().to_string();
    if !in_run {
        let metrics = plugin_call(&name, || call(&mut **a, &job, &host.context))?;
        return Ok(metrics_map(&metrics));
    }
    let config = a.config();
    let metrics = in_run_dir(
        host,
        &name,
        &format!("rl-{name}"),
        &config,
        model,
        None,
        |ctx| call(&mut **a, &job, ctx),
    )?;
    Ok(metrics_map(&metrics))
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let h = host.clone();
    engine.register_fn(
        "fit",
        move |a: &mut AlignerHandle,
              model: ModelHandle,
              prefs: CorpusHandle,
              tok: TokenizerHandle| {
            with_job(&h, a, &model, &prefs, &tok, true, |a, job, ctx| {
                a.fit(job, ctx)
            })
        },
    );
    let h = host.clone();
    engine.register_fn(
        "step",
        move |a: &mut AlignerHandle,
              model: ModelHandle,
              prefs: CorpusHandle,
              tok: TokenizerHandle| {
            with_job(&h, a, &model, &prefs, &tok, true, |a, job, ctx| {
                a.step(job, ctx)
            })
        },
    );
    let h = host.clone();
    engine.register_fn(
        "evaluate",
        move |a: &mut AlignerHandle,
              model: ModelHandle,
              prefs: CorpusHandle,
              tok: TokenizerHandle| {
            with_job(&h, a, &model, &prefs, &tok, false, |a, job, ctx| {
                a.evaluate(job, ctx)
            })
        },
    );
    engine.register_fn(
        "score",
        |a: &mut AlignerHandle, prompt: &str, answer: &str| -> ScriptResult<FLOAT> {
            let a = lock(&a.0);
            plugin_call(a.name(), || a.score(prompt, answer))
        },
    );
    engine.register_fn(
        "save",
        |a: &mut AlignerHandle, dir: &str| -> ScriptResult<()> {
            let a = lock(&a.0);
            plugin_call(a.name(), || a.save(Path::new(dir)))
        },
    );
    let h = host.clone();
    engine.register_fn(
        "load",
        move |a: &mut AlignerHandle, dir: &str, tok: TokenizerHandle| -> ScriptResult<()> {
            let body_dir = Path::new(dir).join("body");
            let body = match h.load(Kind::Model, &body_dir.display().to_string())? {
                Instance::Model(m) => m,
                _ => return Err(script_error(format!("{}: not a model", body_dir.display()))),
            };
            let tokenizer = tok.read();
            let mut a = lock(&a.0);
            let name = a.name().to_string();
            plugin_call(&name, || a.load(Path::new(dir), body, tokenizer.as_ref()))
        },
    );
}
