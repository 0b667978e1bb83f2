//! The run every aligner shares: steps up to `steps`, metrics every `log_every` steps, held-out
//! evaluation every `eval_every` steps and at the end, progress bars, Ctrl-C, and the aligner's
//! own save at the end (also on Ctrl-C, so the run can resume). What a step does is the
//! aligner's ([`SteppedAligner`]).

use llmlab_plugin_api::{AlignJob, Context, Error, Result, StepMetrics};

/// An aligner [`fit`] drives one optimisation step at a time: the preference aligners (`reward`,
/// `dpo` and its offline variants) and the online ones (`grpo`, `ppo`).
pub trait SteppedAligner {
    fn label(&self) -> &'static str;
    fn total_steps(&self) -> u64;
    fn steps_done(&self) -> u64;
    fn log_every(&self) -> u64;
    fn eval_every(&self) -> u64;
    fn one_step(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics>;
    /// Metrics on the held-out pairs, keys prefixed `val_`.
    fn held_out(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics>;
    /// Writes the run's result into the run directory, when there is one.
    fn finish(&mut self, job: &AlignJob<'_>, ctx: &Context) -> Result<()>;
    /// Whether this process records metrics and progress: rank 0 of a data-parallel job (the
    /// others keep the same numbers to themselves), or a process training alone.
    fn writes(&self) -> bool {
        true
    }
    /// The progress bar's message for a step's metrics.
    fn message(&self, m: &StepMetrics) -> String {
        message(m)
    }
}

fn message(m: &StepMetrics) -> String {
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    match m.get("val_accuracy") {
        Some(v) => format!(
            "loss {:.3} | acc {:.2} | val acc {v:.2}",
            get("loss"),
            get("accuracy")
        ),
        None => format!("loss {:.3} | acc {:.2}", get("loss"), get("accuracy")),
    }
}

pub fn fit<A: SteppedAligner>(a: &mut A, job: &AlignJob<'_>, ctx: &Context) -> Result<StepMetrics> {
    let label = a.label();
    let total = a.total_steps();
    let mut last = StepMetrics::new();
    let result = (|| {
        while a.steps_done() < total {
            if ctx.check_cancelled().is_err() {
                a.finish(job, ctx)?;
                return Err(Error::Cancelled);
            }
            let mut metrics = a.one_step(job, ctx)?;
            let step = a.steps_done();
            let eval_due =
                step == total || (a.eval_every() > 0 && step.is_multiple_of(a.eval_every()));
            if eval_due {
                metrics.extend(a.held_out(job, ctx)?);
            }
            if a.writes() {
                if step.is_multiple_of(a.log_every()) || eval_due {
                    ctx.metrics.record(step, &metrics);
                }
                ctx.progress(label, step, Some(total), a.message(&metrics));
            }
            last = metrics;
        }
        if last.is_empty() {
            last = a.held_out(job, ctx)?;
        }
        a.finish(job, ctx)?;
        Ok(last)
    })();
    ctx.progress.finish(label);
    result
}
