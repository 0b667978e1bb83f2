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
//!
//! let tasks = corpus("arithmetic", #{ n: 2000 });
//! let grpo = rl("grpo", #{ group_size: 8 });
//! grpo.fit(gpt, tasks, tok, |prompt, completion| if tasks.check(prompt, completion) { 1.0 } else { 0.0 });
//! grpo.fit(gpt, tasks, tok, tasks.reward());  // the task's checker
//! rl("ppo").fit(gpt, tasks, tok, rm);         // a reward model's score
//! print(grpo.evaluate(gpt, held_out, tok, tasks.reward()));   // greedy mean reward
//! ```
//!
//! The online aligners (`grpo`, `ppo`) take a fourth argument, the reward: a Rhai closure
//! `|prompt, completion| -> float` (called through [`ClosureReward`]: a script error or a
//! non-number stops the run with an error naming the sample), a task checker
//! ([`TaskReward`](super::corpus::TaskReward)) or a trained reward model (an aligner with
//! `score`, wrapped here as [`AlignerReward`]). Their prompts are the corpus's examples' prompts.
//!
//! `fit` and `step` run inside the session's run directory (configs, `metrics.jsonl`, plots,
//! and what the aligner saves there), as trainers do.

use std::path::Path;
use std::sync::Arc;

use llmlab_plugin_api::{
    AlignJob, Aligner, Context, ExampleSource, Instance, Kind, RewardFn, StepMetrics,
};
use rhai::{Engine, FnPtr, Map, NativeCallContext, FLOAT};

use super::callback::ClosureReward;
use super::corpus::TaskReward;
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

fn prompts_of(prompts: &CorpusHandle) -> ScriptResult<Arc<dyn ExampleSource>> {
    prompts.examples.clone().ok_or_else(|| {
        script_error(format!(
            "{} has no prompts (use a task corpus such as corpus(\"arithmetic\", #{{..}}))",
            prompts.source.name()
        ))
    })
}

/// A reward model (an aligner that scores, `rl("reward")`) as the reward of another aligner.
pub struct AlignerReward(pub AlignerHandle);

impl RewardFn for AlignerReward {
    fn score(&self, prompt: &str, completion: &str) -> llmlab_plugin_api::Result<f64> {
        let a = lock(&self.0 .0);
        a.score(prompt, completion)
    }
}

/// What an aligner call works on besides the aligner.
struct JobParts<'a> {
    model: &'a ModelHandle,
    examples: Arc<dyn ExampleSource>,
    tok: &'a TokenizerHandle,
    reward: Option<&'a dyn RewardFn>,
}

/// The same call of `fit`, `step` or `evaluate` with each kind of reward.
type Call = fn(&mut dyn Aligner, &AlignJob<'_>, &Context) -> llmlab_plugin_api::Result<StepMetrics>;

/// Runs `call` on the aligner with `job`; with `in_run`, inside the session's run directory.
fn with_job(
    host: &Host,
    aligner: &AlignerHandle,
    model: &ModelHandle,
    prefs: &CorpusHandle,
    tok: &TokenizerHandle,
    in_run: bool,
    call: Call,
) -> ScriptResult<Map> {
    let parts = JobParts {
        model,
        examples: pairs_of(prefs)?,
        tok,
        reward: None,
    };
    run_job(host, aligner, parts, in_run, call)
}

/// An online aligner's job parts (`grpo`, `ppo`): its prompts and reward.
fn online<'a>(
    model: &'a ModelHandle,
    prompts: &CorpusHandle,
    tok: &'a TokenizerHandle,
    reward: &'a dyn RewardFn,
) -> ScriptResult<JobParts<'a>> {
    Ok(JobParts {
        model,
        examples: prompts_of(prompts)?,
        tok,
        reward: Some(reward),
    })
}

fn run_job(
    host: &Host,
    aligner: &AlignerHandle,
    parts: JobParts<'_>,
    in_run: bool,
    call: Call,
) -> ScriptResult<Map> {
    let JobParts {
        model,
        examples,
        tok,
        reward,
    } = parts;
    let tokenizer = tok.read();
    let job = AlignJob {
        policy: model.0.as_ref(),
        tokenizer: tokenizer.as_ref(),
        examples: examples.as_ref(),
        reward,
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

const FIT: Call = |a, job, ctx| a.fit(job, ctx);
const STEP: Call = |a, job, ctx| a.step(job, ctx);
const EVALUATE: Call = |a, job, ctx| a.evaluate(job, ctx);

/// `fit`, `step` and `evaluate` of the online aligners, each with a closure, a task checker or a
/// reward model as the reward.
fn register_online(engine: &mut Engine, host: &Arc<Host>) {
    for (name, in_run, call) in [
        ("fit", true, FIT),
        ("step", true, STEP),
        ("evaluate", false, EVALUATE),
    ] {
        let h = host.clone();
        engine.register_fn(
            name,
            move |context: NativeCallContext,
                  a: &mut AlignerHandle,
                  model: ModelHandle,
                  prompts: CorpusHandle,
                  tok: TokenizerHandle,
                  f: FnPtr| {
                let reward = ClosureReward::new(&context, f);
                let parts = online(&model, &prompts, &tok, &reward)?;
                run_job(&h, a, parts, in_run, call)
            },
        );
        let h = host.clone();
        engine.register_fn(
            name,
            move |a: &mut AlignerHandle,
                  model: ModelHandle,
                  prompts: CorpusHandle,
                  tok: TokenizerHandle,
                  reward: TaskReward| {
                let parts = online(&model, &prompts, &tok, &reward)?;
                run_job(&h, a, parts, in_run, call)
            },
        );
        let h = host.clone();
        engine.register_fn(
            name,
            move |a: &mut AlignerHandle,
                  model: ModelHandle,
                  prompts: CorpusHandle,
                  tok: TokenizerHandle,
                  rm: AlignerHandle| {
                if Arc::ptr_eq(&a.0, &rm.0) {
                    return Err(script_error(format!(
                        "{name}: the reward model is the aligner being trained; pass a trained rl(\"reward\")"
                    )));
                }
                let reward = AlignerReward(rm);
                let parts = online(&model, &prompts, &tok, &reward)?;
                run_job(&h, a, parts, in_run, call)
            },
        );
    }
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    register_online(engine, host);
    let h = host.clone();
    engine.register_fn(
        "fit",
        move |a: &mut AlignerHandle,
              model: ModelHandle,
              prefs: CorpusHandle,
              tok: TokenizerHandle| { with_job(&h, a, &model, &prefs, &tok, true, FIT) },
    );
    let h = host.clone();
    engine.register_fn(
        "step",
        move |a: &mut AlignerHandle,
              model: ModelHandle,
              prefs: CorpusHandle,
              tok: TokenizerHandle| { with_job(&h, a, &model, &prefs, &tok, true, STEP) },
    );
    let h = host.clone();
    engine.register_fn(
        "evaluate",
        move |a: &mut AlignerHandle,
              model: ModelHandle,
              prefs: CorpusHandle,
              tok: TokenizerHandle| {
            with_job(&h, a, &model, &prefs, &tok, false, EVALUATE)
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
