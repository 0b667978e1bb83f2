//! The sweep's script surface:
//!
//! ```rhai
//! let space = #{ lr: log_uniform(1e-4, 1e-2), warmup: int_uniform(0, 100),
//!                width: choice([64, 128, 256]) };
//! let best = sweep(space, |trial| {
//!     let p = trial.params;
//!     let gpt = model("gpt", #{ d_model: p.width, ... });
//!     trainer("lm", #{ lr: p.lr, warmup: p.warmup, trial: trial }).fit(gpt, ds)   // reports val_loss
//! }, #{ method: "tpe", trials: 30, metric: "val_loss", pruner: "asha", name: "lr-search" });
//! print(best.best_params);
//! let again = sweep_load("lr-search");
//! ```
//!
//! `trial.report(step, value)` records an intermediate value by hand and throws when the
//! pruner stops the trial; a trainer given `trial` in its options does the same from its own
//! metrics (the host takes the key out of the config, like `qat`), and a pruned trainer stops at
//! its next step with its checkpoint written. Trials run in this process one after another, each
//! in its own run directory `runs/<sweep>/trials/<NNNN>`, or with `parallel: N` in worker
//! processes (`sweep/workers.rs`). In a worker, this file also runs the worker's side: the
//! session's run directory is the trial's, and the sweep call runs the one trial and exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llmlab_plugin_api::serde_json::{Map as JsonMap, Value};
use llmlab_plugin_api::{CancelFlag, Context, Error, MetricsSink};
use rhai::{Array, Dynamic, Engine, FnPtr, Map, NativeCallContext, FLOAT, INT};

use super::rhai_json::{dynamic_to_json, json_to_dynamic};
use super::{script_error, Host, ScriptResult};
use crate::runs::RunDir;
use crate::sweep::pruners::{Curve, Pruner, StateCurve};
use crate::sweep::records::{self, Direction, TrialRecord, TrialState};
use crate::sweep::sampler::Method;
use crate::sweep::space::{Dimension, Space};
use crate::sweep::study::{now_s, Outcome, Study, SweepConfig};
use crate::sweep::workers::{Decision, WorkerLink, WorkerSpec};

/// The trainer option that hands a trainer the objective's trial.
pub const TRIAL_KEY: &str = "trial";

/// A dimension as a script value (`log_uniform(1e-4, 1e-2)`).
#[derive(Clone)]
pub struct DimensionHandle(pub Dimension);

/// Who decides whether a trial goes on after a report.
enum Judge {
    /// In this process: the pruner against the trials finished before this one.
    Local {
        pruner: Pruner,
        direction: Direction,
        finished: Vec<StateCurve>,
    },
    /// In a worker: the parent process.
    Remote(WorkerLink),
}

struct TrialInner {
    number: usize,
    params: JsonMap<String, Value>,
    metric: String,
    run_dir: String,
    judge: Judge,
    curve: Mutex<Vec<(u64, f64)>>,
    pruned: AtomicBool,
    /// Set when pruned: a trainer running for this trial stops at its next step.
    cancel: CancelFlag,
    /// The session's Ctrl-C flag (a worker's parent says "stop" through it).
    session_cancel: CancelFlag,
}

/// The objective's argument: the trial's parameters and the way to report progress.
#[derive(Clone)]
pub struct TrialHandle(Arc<TrialInner>);

impl TrialHandle {
    pub fn number(&self) -> usize {
        self.0.number
    }

    /// The metric a trainer reports for this trial.
    pub fn metric(&self) -> &str {
        &self.0.metric
    }

    pub fn is_pruned(&self) -> bool {
        self.0.pruned.load(Ordering::SeqCst)
    }

    /// The flag a trainer working for this trial polls.
    pub fn cancel_flag(&self) -> CancelFlag {
        self.0.cancel.clone()
    }

    pub fn curve(&self) -> Vec<(u64, f64)> {
        self.0
            .curve
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records an intermediate value and asks the pruner; a pruned trial stays pruned.
    pub fn report(&self, step: u64, value: f64) -> Decision {
        if self.is_pruned() {
            return Decision::Prune;
        }
        let curve = {
            let mut curve = self.0.curve.lock().unwrap_or_else(|p| p.into_inner());
            curve.push((step, value));
            curve.clone()
        };
        let decision = match &self.0.judge {
            Judge::Local {
                pruner,
                direction,
                finished,
            } => {
                let others: Vec<Curve> = finished
                    .iter()
                    .map(|(state, points)| Curve {
                        state: *state,
                        points,
                    })
                    .collect();
                if pruner.should_prune(&curve, &others, *direction) {
                    Decision::Prune
                } else {
                    Decision::Continue
                }
            }
            Judge::Remote(link) => link.report(step, value),
        };
        match decision {
            Decision::Prune => {
                self.0.pruned.store(true, Ordering::SeqCst);
                self.0.cancel.cancel();
            }
            Decision::Stop => self.0.session_cancel.cancel(),
            Decision::Continue => {}
        }
        decision
    }

    fn pruned_message(&self) -> String {
        let step = self.curve().last().map_or(0, |p| p.0);
        format!("trial {} pruned at step {step}", self.0.number)
    }
}

/// Takes the host's `trial` key out of a trainer's options (before they become JSON).
pub fn take_trial(config: &mut Dynamic) -> ScriptResult<Option<TrialHandle>> {
    let Some(mut map) = config.write_lock::<Map>() else {
        return Ok(None);
    };
    match map.remove(TRIAL_KEY) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => {
            let type_name = v.type_name().to_string();
            v.try_cast::<TrialHandle>().map(Some).ok_or_else(|| {
                script_error(format!(
                    "trainer option `trial` must be the sweep objective's trial, got {type_name}"
                ))
            })
        }
    }
}

/// Forwards the trainer's metrics to the run's sink and the sweep metric to the trial.
struct TrialSink {
    inner: Arc<dyn MetricsSink>,
    trial: TrialHandle,
}

impl MetricsSink for TrialSink {
    fn record(&self, step: u64, values: &BTreeMap<String, f64>) {
        self.inner.record(step, values);
        if let Some(v) = values.get(self.trial.metric()) {
            self.trial.report(step, *v);
        }
    }

    fn rewind(&self, step: u64) {
        self.inner.rewind(step);
    }
}

/// Runs a trainer call for `trial` (when given): its metrics reach the trial, and the trial's
/// cancel flag (set when pruned, and on Ctrl-C) is the one the trainer polls, so a pruned
/// trainer stops at its next step and writes its checkpoint as on Ctrl-C.
pub fn with_trial<T>(
    trial: Option<&TrialHandle>,
    ctx: &Context,
    call: impl FnOnce(&Context) -> llmlab_plugin_api::Result<T>,
) -> llmlab_plugin_api::Result<T> {
    let Some(trial) = trial else {
        return call(ctx);
    };
    let trial_ctx = Context {
        cancel: trial.cancel_flag(),
        metrics: Arc::new(TrialSink {
            inner: ctx.metrics.clone(),
            trial: trial.clone(),
        }),
        ..ctx.clone()
    };
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        // Ctrl-C sets the session's flag; the trainer polls the trial's.
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if ctx.cancel.is_cancelled() {
                    trial_ctx.cancel.cancel();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let result = call(&trial_ctx);
        done.store(true, Ordering::SeqCst);
        result
    });
    result.map_err(|error| {
        if trial.is_pruned() && !ctx.cancel.is_cancelled() {
            let dir = ctx
                .run_dir
                .as_ref()
                .map_or_else(String::new, |d| format!("; checkpoint in {}", d.display()));
            Error::msg(format!("{}{dir}", trial.pruned_message()))
        } else {
            error
        }
    })
}

/// Per-session sweep state.
#[derive(Default)]
struct SweepState {
    /// `sweep(...)` calls so far in this session.
    calls: usize,
    /// Set in a worker process: the trial to run.
    worker: Option<WorkerSpec>,
}

fn number(value: &Dynamic, what: &str) -> ScriptResult<f64> {
    value
        .as_float()
        .or_else(|_| value.as_int().map(|i| i as FLOAT))
        .map_err(|t| script_error(format!("{what}: expected a number, got {t}")))
}

fn dimension(dim: Dimension) -> ScriptResult<DimensionHandle> {
    dim.validate().map_err(script_error)?;
    Ok(DimensionHandle(dim))
}

fn values(array: Array, what: &str) -> ScriptResult<Vec<Value>> {
    array
        .into_iter()
        .map(|v| dynamic_to_json(v).map_err(|e| script_error(format!("{what}: {e}"))))
        .collect()
}

fn parse_space(space: Map) -> ScriptResult<Space> {
    let mut dims = BTreeMap::new();
    for (name, value) in space {
        let type_name = value.type_name().to_string();
        let dim = value.try_cast::<DimensionHandle>().ok_or_else(|| {
            script_error(format!(
                "sweep space `{name}`: expected choice([...]), uniform(a, b), log_uniform(a, b), \
                 int_uniform(a, b) or grid([...]), got {type_name}"
            ))
        })?;
        dims.insert(name.to_string(), dim.0);
    }
    if dims.is_empty() {
        return Err(script_error("sweep: the space has no dimensions"));
    }
    Ok(Space { dims })
}

const OPTION_KEYS: [&str; 8] = [
    "method",
    "trials",
    "metric",
    "direction",
    "seed",
    "parallel",
    "pruner",
    "name",
];

fn parse_options(host: &Host, space: Space, opts: Map, call: usize) -> ScriptResult<SweepConfig> {
    let opts = match dynamic_to_json(opts.into())? {
        Value::Object(m) => m,
        _ => JsonMap::new(),
    };
    if let Some(key) = opts.keys().find(|k| !OPTION_KEYS.contains(&k.as_str())) {
        return Err(script_error(format!(
            "sweep: unknown option `{key}` (accepted: {})",
            OPTION_KEYS.join(", ")
        )));
    }
    let text = |key: &str, default: &str| -> ScriptResult<String> {
        match opts.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(script_error(format!(
                "sweep: {key} must be a string, got {other}"
            ))),
        }
    };
    let count = |key: &str| -> ScriptResult<Option<u64>> {
        match opts.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                script_error(format!(
                    "sweep: {key} must be a non-negative integer, got {v}"
                ))
            }),
        }
    };
    let method = Method::from_json(opts.get("method").unwrap_or(&Value::String("tpe".into())))
        .map_err(|e| script_error(format!("sweep: {e}")))?;
    let trials = match (count("trials")?, &method) {
        (Some(n), _) => n as usize,
        (None, Method::Grid) => space
            .grid_size()
            .map_err(|e| script_error(format!("sweep: {e}")))?,
        (None, _) => 20,
    };
    if let Method::Grid = method {
        let size = space
            .grid_size()
            .map_err(|e| script_error(format!("sweep: {e}")))?;
        if trials > size {
            return Err(script_error(format!(
                "sweep: trials {trials} is more than the grid's {size} points"
            )));
        }
    }
    let default_name = {
        let script = host
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stem = script
            .as_deref()
            .and_then(Path::file_stem)
            .and_then(|s| s.to_str())
            .unwrap_or("repl")
            .to_string();
        if call == 0 {
            format!("{stem}-sweep")
        } else {
            format!("{stem}-sweep{}", call + 1)
        }
    };
    Ok(SweepConfig {
        name: text("name", &default_name)?,
        space,
        method,
        metric: text("metric", "val_loss")?,
        direction: Direction::parse(&text("direction", "minimize")?)
            .map_err(|e| script_error(format!("sweep: {e}")))?,
        seed: count("seed")?.unwrap_or(host.context.seed),
        trials,
        parallel: count("parallel")?.unwrap_or(1).max(1) as usize,
        pruner: Pruner::from_json(opts.get("pruner").unwrap_or(&Value::Null))
            .map_err(|e| script_error(format!("sweep: {e}")))?,
    })
}

fn runs_root(host: &Host) -> PathBuf {
    host.overrides
        .setting("runs_dir")
        .map_or_else(|| PathBuf::from("runs"), |d| PathBuf::from(d.to_string()))
}

fn plugin_fingerprints(host: &Host) -> Vec<(String, String)> {
    host.registry()
        .plugins
        .iter()
        .map(|p| (p.name().to_string(), format!("{:?}", p.fingerprint)))
        .collect()
}

/// The objective's result as the sweep's value: a number, or `metric` of a returned map (what
/// `fit` returns).
fn objective_value(result: Dynamic, metric: &str) -> Result<f64, String> {
    let value = if let Some(map) = result.read_lock::<Map>() {
        let v = map.get(metric).cloned().ok_or_else(|| {
            let keys: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
            format!(
                "objective returned a map without `{metric}` (keys: {})",
                keys.join(", ")
            )
        })?;
        number(&v, metric).map_err(|e| e.to_string())?
    } else {
        number(&result, "objective result").map_err(|_| {
            format!(
                "objective returned {}, not a number or a map with `{metric}`",
                result.type_name()
            )
        })?
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("objective returned {value}"))
    }
}

/// How the objective's call ended; `None`: interrupted by Ctrl-C (not recorded).
fn classify(
    result: ScriptResult<Dynamic>,
    trial: &TrialHandle,
    metric: &str,
    cancel: &CancelFlag,
) -> Option<Outcome> {
    if cancel.is_cancelled() {
        return None;
    }
    if trial.is_pruned() {
        return Some(Outcome {
            state: TrialState::Pruned,
            value: trial.curve().last().map(|p| p.1),
            error: None,
        });
    }
    Some(
        match result
            .map_err(|e| e.to_string())
            .and_then(|v| objective_value(v, metric))
        {
            Ok(value) => Outcome {
                state: TrialState::Complete,
                value: Some(value),
                error: None,
            },
            Err(error) => Outcome {
                state: TrialState::Failed,
                value: None,
                error: Some(error),
            },
        },
    )
}

fn new_trial(
    host: &Host,
    number: usize,
    params: JsonMap<String, Value>,
    metric: &str,
    run_dir: &Path,
    judge: Judge,
) -> TrialHandle {
    TrialHandle(Arc::new(TrialInner {
        number,
        params,
        metric: metric.to_string(),
        run_dir: run_dir.display().to_string(),
        judge,
        curve: Mutex::new(Vec::new()),
        pruned: AtomicBool::new(false),
        cancel: CancelFlag::default(),
        session_cancel: host.context.cancel.clone(),
    }))
}

/// Runs trial `number` in this process, in its own run directory; `None` when interrupted.
fn run_in_process(
    context: &NativeCallContext,
    host: &Host,
    study: &Study,
    number: usize,
    objective: &FnPtr,
) -> ScriptResult<Option<TrialRecord>> {
    let params = study.propose(number).map_err(script_error)?;
    let dir = study.trial_dir(number);
    let started = now_s();
    let clock = Instant::now();
    let record = |outcome: Outcome, curve: Vec<(u64, f64)>| TrialRecord {
        number,
        params: params.clone(),
        state: outcome.state,
        value: outcome.value,
        intermediate: curve,
        run_dir: dir.display().to_string(),
        started,
        duration_s: clock.elapsed().as_secs_f64(),
        error: outcome.error,
    };
    let script = host
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let opened = RunDir::open(
        dir.parent().unwrap_or(&study.dir),
        &format!("{number:04}"),
        script.as_deref(),
        &plugin_fingerprints(host),
    );
    let run = match opened {
        Ok(run) => Arc::new(run),
        Err(error) => {
            let failed = Outcome {
                state: TrialState::Failed,
                value: None,
                error: Some(error.to_string()),
            };
            return Ok(Some(record(failed, Vec::new())));
        }
    };
    let trial = new_trial(
        host,
        number,
        params.clone(),
        &study.config.metric,
        &dir,
        Judge::Local {
            pruner: study.config.pruner.clone(),
            direction: study.config.direction,
            finished: study.finished_curves(),
        },
    );
    // The trial's run directory is the session's for the length of the objective.
    let previous = host
        .run
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(run);
    let result = objective.call_within_context::<Dynamic>(context, (Dynamic::from(trial.clone()),));
    *host.run.lock().unwrap_or_else(|p| p.into_inner()) = previous;
    Ok(
        classify(result, &trial, &study.config.metric, &host.context.cancel)
            .map(|outcome| record(outcome, trial.curve())),
    )
}

/// A worker's trial: runs the objective once, sends the outcome to the parent, and ends the
/// process (the rest of the script is the parent's).
fn run_as_worker(
    context: &NativeCallContext,
    host: &Host,
    spec: &WorkerSpec,
    config: &SweepConfig,
    objective: &FnPtr,
) -> ! {
    let trial = new_trial(
        host,
        spec.number,
        spec.params.clone(),
        &config.metric,
        &spec.run_dir,
        Judge::Remote(WorkerLink::default()),
    );
    let result = objective.call_within_context::<Dynamic>(context, (Dynamic::from(trial.clone()),));
    let message = match classify(result, &trial, &config.metric, &host.context.cancel) {
        Some(outcome) => outcome.to_json(),
        None => llmlab_plugin_api::serde_json::json!({ "state": "interrupted" }),
    };
    if let Judge::Remote(link) = &trial.0.judge {
        link.finish(&message);
    }
    // Release the trial's run directory and flush before leaving without unwinding.
    host.run.lock().unwrap_or_else(|p| p.into_inner()).take();
    std::process::exit(0)
}

/// `#{ name, dir, best_params, best_value, best_trial, trials, total_steps }`.
fn summary(name: &str, dir: &Path, trials: &[TrialRecord], direction: Direction) -> Map {
    let mut map = Map::new();
    let best = records::best(trials, direction);
    map.insert("name".into(), name.into());
    map.insert("dir".into(), dir.display().to_string().into());
    map.insert(
        "best_params".into(),
        best.map_or(Dynamic::UNIT, |b| {
            json_to_dynamic(&Value::Object(b.params.clone()))
        }),
    );
    map.insert(
        "best_value".into(),
        best.and_then(|b| b.value)
            .map_or(Dynamic::UNIT, Dynamic::from),
    );
    map.insert(
        "best_trial".into(),
        best.map_or(Dynamic::UNIT, |b| Dynamic::from(b.number as INT)),
    );
    let mut sorted: Vec<&TrialRecord> = trials.iter().collect();
    sorted.sort_by_key(|t| t.number);
    let total_steps: u64 = sorted.iter().map(|t| t.steps()).sum();
    map.insert("total_steps".into(), Dynamic::from(total_steps as INT));
    let list: Array = sorted
        .iter()
        .map(|t| json_to_dynamic(&t.to_json()))
        .collect();
    map.insert("trials".into(), list.into());
    map
}

fn run_sweep(
    context: &NativeCallContext,
    host: &Host,
    state: &Mutex<SweepState>,
    space: Map,
    objective: FnPtr,
    opts: Map,
) -> ScriptResult<Map> {
    let (call, worker) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.calls += 1;
        (state.calls - 1, state.worker.clone())
    };
    let config = parse_options(host, parse_space(space)?, opts, call)?;
    let root = runs_root(host);
    if let Some(spec) = worker {
        if spec.call == call {
            run_as_worker(context, host, &spec, &config, &objective);
        }
        // An earlier sweep of the script: the parent finished it; its records stand in.
        let dir = records::sweep_dir(&root, &config.name).map_err(script_error)?;
        let trials = records::load_trials(&dir).map_err(script_error)?;
        return Ok(summary(&config.name, &dir, &trials, config.direction));
    }
    let direction = config.direction;
    let parallel = config.parallel;
    let mut study = Study::open(&root, config).map_err(script_error)?;
    let already = study.trials.len();
    if already > 0 {
        println!(
            "sweep {}: resuming with {already} finished trials in {}",
            study.config.name,
            study.dir.display()
        );
    }
    let interrupted = if parallel > 1 {
        if host
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(script_error(
                "sweep: parallel workers re-run the script, so they need `llmlab run FILE` \
                 (use parallel: 1 at the REPL)",
            ));
        }
        study
            .run_workers(call, &host.context.cancel)
            .map_err(script_error)?
    } else {
        let mut interrupted = false;
        for number in study.pending() {
            if host.context.cancel.is_cancelled() {
                interrupted = true;
                break;
            }
            match run_in_process(context, host, &study, number, &objective)? {
                Some(record) => study.finish(record).map_err(script_error)?,
                None => {
                    interrupted = true;
                    break;
                }
            }
        }
        interrupted
    };
    if interrupted {
        return Err(script_error(format!(
            "sweep {} interrupted: {} finished trials kept in {}; run it again to resume",
            study.config.name,
            study.trials.len(),
            study.dir.display()
        )));
    }
    Ok(summary(
        &study.config.name,
        &study.dir,
        &study.trials,
        direction,
    ))
}

/// In a worker process, the session's run directory is the trial's from the start.
fn start_worker(host: &Host, state: &Mutex<SweepState>) {
    let spec = match crate::sweep::workers::WorkerSpec::from_env() {
        None => return,
        Some(Ok(spec)) => spec,
        Some(Err(error)) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let name = spec
        .run_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let root = spec
        .run_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match RunDir::open(&root, &name, None, &plugin_fingerprints(host)) {
        Ok(run) => {
            *host.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(run));
        }
        Err(error) => {
            eprintln!("error: sweep worker: {error}");
            std::process::exit(2);
        }
    }
    state.lock().unwrap_or_else(|p| p.into_inner()).worker = Some(spec);
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let state = Arc::new(Mutex::new(SweepState::default()));
    start_worker(host, &state);
    engine.register_type_with_name::<DimensionHandle>("Dimension");
    engine.register_fn("to_string", |d: &mut DimensionHandle| d.0.describe());
    engine.register_fn(
        "choice",
        |values_: Array| -> ScriptResult<DimensionHandle> {
            dimension(Dimension::Choice(values(values_, "choice")?))
        },
    );
    engine.register_fn("grid", |values_: Array| -> ScriptResult<DimensionHandle> {
        dimension(Dimension::Grid(values(values_, "grid")?))
    });
    engine.register_fn(
        "uniform",
        |a: Dynamic, b: Dynamic| -> ScriptResult<DimensionHandle> {
            dimension(Dimension::Uniform {
                low: number(&a, "uniform low")?,
                high: number(&b, "uniform high")?,
            })
        },
    );
    engine.register_fn(
        "log_uniform",
        |a: Dynamic, b: Dynamic| -> ScriptResult<DimensionHandle> {
            dimension(Dimension::LogUniform {
                low: number(&a, "log_uniform low")?,
                high: number(&b, "log_uniform high")?,
            })
        },
    );
    engine.register_fn(
        "int_uniform",
        |a: INT, b: INT| -> ScriptResult<DimensionHandle> {
            dimension(Dimension::IntUniform { low: a, high: b })
        },
    );

    engine.register_type_with_name::<TrialHandle>("Trial");
    engine.register_get("params", |t: &mut TrialHandle| {
        json_to_dynamic(&Value::Object(t.0.params.clone()))
    });
    engine.register_get("number", |t: &mut TrialHandle| t.0.number as INT);
    engine.register_get("run_dir", |t: &mut TrialHandle| t.0.run_dir.clone());
    engine.register_fn("to_string", |t: &mut TrialHandle| {
        format!("trial {} {}", t.0.number, Value::Object(t.0.params.clone()))
    });
    engine.register_fn("should_prune", |t: &mut TrialHandle| t.is_pruned());
    engine.register_fn(
        "report",
        |t: &mut TrialHandle, step: INT, value: Dynamic| -> ScriptResult<()> {
            let value = number(&value, "trial.report value")?;
            match t.report(step.max(0) as u64, value) {
                Decision::Continue => Ok(()),
                Decision::Prune => Err(script_error(t.pruned_message())),
                Decision::Stop => Err(script_error("cancelled: the sweep is stopping")),
            }
        },
    );

    let (h, s) = (host.clone(), state.clone());
    engine.register_fn(
        "sweep",
        move |context: NativeCallContext, space: Map, objective: FnPtr, opts: Map| {
            run_sweep(&context, &h, &s, space, objective, opts)
        },
    );
    let (h, s) = (host.clone(), state.clone());
    engine.register_fn(
        "sweep",
        move |context: NativeCallContext, space: Map, objective: FnPtr| {
            run_sweep(&context, &h, &s, space, objective, Map::new())
        },
    );
    let h = host.clone();
    engine.register_fn("sweep_load", move |name: &str| -> ScriptResult<Map> {
        let root = runs_root(&h);
        let dir = records::sweep_dir(&root, name).map_err(script_error)?;
        let meta = records::read_meta(&dir)
            .map_err(script_error)?
            .ok_or_else(|| {
                script_error(format!(
                    "sweep_load: no sweep {name} in {} (no {})",
                    root.display(),
                    dir.join(records::META_FILE).display()
                ))
            })?;
        let direction = meta
            .get("direction")
            .and_then(Value::as_str)
            .and_then(|d| Direction::parse(d).ok())
            .unwrap_or_default();
        let trials = records::load_trials(&dir).map_err(script_error)?;
        let mut map = summary(name, &dir, &trials, direction);
        map.insert("config".into(), json_to_dynamic(&meta));
        Ok(map)
    });
}
