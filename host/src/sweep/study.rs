//! One sweep in progress: its settings, its directory, its finished trials, and the two ways
//! trials run: one after another in this process (the script layer calls
//! [`Study::propose`] / [`Study::finish`] around the objective), or `parallel` at a time in
//! worker processes ([`Study::run_workers`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{json, Map, Value};
use llmlab_plugin_api::{CancelFlag, Error, Result};

use super::plots::sweep_plots;
use super::pruners::{Curve, Pruner, StateCurve};
use super::records::{self, Direction, TrialRecord, TrialState};
use super::sampler::Method;
use super::space::Space;
use super::workers::{log_tail, Decision, Event, Worker, WorkerSpec};

/// A sweep's settings (`sweep(space, objective, #{ ... })`).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepConfig {
    pub name: String,
    pub space: Space,
    pub method: Method,
    pub metric: String,
    pub direction: Direction,
    pub seed: u64,
    pub trials: usize,
    pub parallel: usize,
    pub pruner: Pruner,
}

/// The settings that must match for a resume to continue the same sweep.
const RESUME_KEYS: [&str; 6] = ["space", "method", "metric", "direction", "seed", "pruner"];

impl SweepConfig {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "space": self.space.to_json(),
            "method": self.method.to_json(),
            "metric": self.metric,
            "direction": self.direction.name(),
            "seed": self.seed,
            "trials": self.trials,
            "parallel": self.parallel,
            "pruner": self.pruner.to_json(),
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A trial's end as the objective (or its worker) saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: TrialState,
    pub value: Option<f64>,
    pub error: Option<String>,
}

pub struct Study {
    pub config: SweepConfig,
    pub dir: PathBuf,
    pub trials: Vec<TrialRecord>,
}

impl Study {
    /// Opens `root/<name>`: a new sweep records its settings; an existing one must have the
    /// same space, method, metric, direction, seed and pruner, and its finished trials are kept.
    pub fn open(root: &Path, config: SweepConfig) -> Result<Study> {
        let dir = records::sweep_dir(root, &config.name)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let meta = config.to_json();
        if let Some(old) = records::read_meta(&dir)? {
            for key in RESUME_KEYS {
                if old.get(key) != meta.get(key) {
                    return Err(Error::msg(format!(
                        "sweep {} in {} was started with {key} {}, this call has {}; give this \
                         sweep another name, or remove the directory to start it afresh",
                        config.name,
                        dir.display(),
                        old.get(key).unwrap_or(&Value::Null),
                        meta.get(key).unwrap_or(&Value::Null),
                    )));
                }
            }
        }
        records::write_meta(&dir, &meta)?;
        let trials = records::load_trials(&dir)?;
        Ok(Study {
            config,
            dir,
            trials,
        })
    }

    /// Trial numbers not finished yet, in order.
    pub fn pending(&self) -> Vec<usize> {
        let done: std::collections::BTreeSet<usize> =
            self.trials.iter().map(|t| t.number).collect();
        (0..self.config.trials)
            .filter(|n| !done.contains(n))
            .collect()
    }

    pub fn trial_dir(&self, number: usize) -> PathBuf {
        self.dir.join("trials").join(format!("{number:04}"))
    }

    /// Parameters for trial `number`, given the trials finished so far.
    pub fn propose(&self, number: usize) -> Result<Map<String, Value>> {
        let mut history = self.trials.clone();
        history.sort_by_key(|t| t.number);
        self.config
            .method
            .sample(
                &self.config.space,
                number,
                &history,
                self.config.direction,
                self.config.seed,
            )
            .map_err(|e| Error::msg(format!("sweep {}: {e}", self.config.name)))
    }

    /// The finished trials' curves, as the pruner sees them.
    pub fn finished_curves(&self) -> Vec<StateCurve> {
        self.trials
            .iter()
            .map(|t| (Some(t.state), t.intermediate.clone()))
            .collect()
    }

    /// Records a finished trial: `trials.jsonl`, `best.rhai`, the plots, one line on stdout.
    pub fn finish(&mut self, record: TrialRecord) -> Result<()> {
        records::append_trial(&self.dir, &record)?;
        let line = self.summary_line(&record);
        self.trials.push(record);
        if let Some(best) = records::best(&self.trials, self.config.direction) {
            let snippet = records::best_snippet(&self.config.name, &self.config.metric, best);
            write_atomic(&self.dir.join("best.rhai"), snippet.as_bytes())?;
        }
        if let Err(error) = sweep_plots(
            &self.dir,
            &self.config.space,
            &self.trials,
            &self.config.metric,
            self.config.direction,
        ) {
            llmlab_plugin_api::tracing::warn!(%error, "could not draw the sweep plots");
        }
        println!("{line}");
        Ok(())
    }

    fn summary_line(&self, t: &TrialRecord) -> String {
        let value = t.value.map_or_else(|| "-".into(), |v| format!("{v:.5}"));
        let mut line = format!(
            "sweep {}: trial {} {} {} {value} after {} steps, {:.1}s, {}",
            self.config.name,
            t.number,
            t.state.name(),
            self.config.metric,
            t.steps(),
            t.duration_s,
            Value::Object(t.params.clone())
        );
        if let Some(e) = &t.error {
            line.push_str(&format!(" ({})", e.lines().next().unwrap_or_default()));
        }
        line
    }

    /// Whether `curve` (a running trial's reports) should stop, against the finished trials
    /// and the other running ones.
    pub fn decide(&self, curve: &[(u64, f64)], running: &[&[(u64, f64)]]) -> Decision {
        let finished = self.finished_curves();
        let mut others: Vec<Curve> = finished
            .iter()
            .map(|(state, points)| Curve {
                state: *state,
                points,
            })
            .collect();
        others.extend(running.iter().map(|points| Curve {
            state: None,
            points,
        }));
        if self
            .config
            .pruner
            .should_prune(curve, &others, self.config.direction)
        {
            Decision::Prune
        } else {
            Decision::Continue
        }
    }

    /// Runs the pending trials `parallel` at a time in worker processes, recording each as it
    /// ends. Returns whether the sweep was interrupted (`cancel`), in which case the running
    /// trials were stopped after their current step and not recorded.
    pub fn run_workers(&mut self, call: usize, cancel: &CancelFlag) -> Result<bool> {
        struct Running {
            worker: Worker,
            params: Map<String, Value>,
            curve: Vec<(u64, f64)>,
            started: f64,
            clock: Instant,
        }
        let (events, inbox) = mpsc::channel();
        let mut pending: VecDeque<usize> = self.pending().into();
        let mut running: BTreeMap<usize, Running> = BTreeMap::new();
        let mut stopping = false;
        loop {
            if cancel.is_cancelled() && !stopping {
                stopping = true;
                for r in running.values_mut() {
                    r.worker.interrupt();
                }
            }
            while !stopping && running.len() < self.config.parallel.max(1) {
                let Some(number) = pending.pop_front() else {
                    break;
                };
                let params = self.propose(number)?;
                let spec = WorkerSpec {
                    sweep: self.config.name.clone(),
                    call,
                    number,
                    params: params.clone(),
                    run_dir: self.trial_dir(number),
                };
                let started = now_s();
                match Worker::spawn(&spec, events.clone()) {
                    Ok(worker) => {
                        running.insert(
                            number,
                            Running {
                                worker,
                                params,
                                curve: Vec::new(),
                                started,
                                clock: Instant::now(),
                            },
                        );
                    }
                    Err(error) => self.finish(TrialRecord {
                        number,
                        params,
                        state: TrialState::Failed,
                        run_dir: spec.run_dir.display().to_string(),
                        started,
                        error: Some(error.to_string()),
                        ..TrialRecord::default()
                    })?,
                }
            }
            if running.is_empty() {
                break;
            }
            match inbox.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::Report {
                    number,
                    step,
                    value,
                }) => {
                    let decision = match running.get(&number) {
                        None => continue,
                        Some(_) if stopping => Decision::Stop,
                        Some(r) => {
                            let mut curve = r.curve.clone();
                            curve.push((step, value));
                            let others: Vec<&[(u64, f64)]> = running
                                .iter()
                                .filter(|(n, _)| **n != number)
                                .map(|(_, o)| o.curve.as_slice())
                                .collect();
                            self.decide(&curve, &others)
                        }
                    };
                    if let Some(r) = running.get_mut(&number) {
                        r.curve.push((step, value));
                        r.worker.reply(decision);
                    }
                }
                Ok(Event::Finished { number, result }) => {
                    let Some(r) = running.remove(&number) else {
                        continue;
                    };
                    let log = r.worker.log.clone();
                    let status = r.worker.wait();
                    let outcome = match result.as_ref().map(outcome_of) {
                        Some(Some(outcome)) => Some(outcome),
                        // Interrupted, or killed by the interruption before it could say so.
                        Some(None) => None,
                        None if stopping => None,
                        None => Some(Outcome {
                            state: TrialState::Failed,
                            value: None,
                            error: Some(format!(
                                "worker process ended ({}) before finishing the trial; end of {}:\n{}",
                                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                                log.display(),
                                log_tail(&log, 6)
                            )),
                        }),
                    };
                    let Some(outcome) = outcome else {
                        if !stopping {
                            // A worker stopped by something else than us: record why.
                            self.finish(TrialRecord {
                                number,
                                params: r.params,
                                state: TrialState::Failed,
                                intermediate: r.curve,
                                run_dir: self.trial_dir(number).display().to_string(),
                                started: r.started,
                                duration_s: r.clock.elapsed().as_secs_f64(),
                                error: Some("worker was interrupted".into()),
                                ..TrialRecord::default()
                            })?;
                        }
                        continue;
                    };
                    let value = match outcome.state {
                        TrialState::Pruned => outcome.value.or(r.curve.last().map(|p| p.1)),
                        _ => outcome.value,
                    };
                    self.finish(TrialRecord {
                        number,
                        params: r.params,
                        state: outcome.state,
                        value,
                        intermediate: r.curve,
                        run_dir: self.trial_dir(number).display().to_string(),
                        started: r.started,
                        duration_s: r.clock.elapsed().as_secs_f64(),
                        error: outcome.error,
                    })?;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(stopping)
    }
}

/// A worker's result message; `None` for an interrupted trial.
pub fn outcome_of(result: &Value) -> Option<Outcome> {
    let state = result.get("state").and_then(Value::as_str)?;
    Some(Outcome {
        state: TrialState::parse(state)?,
        value: result.get("value").and_then(Value::as_f64),
        error: result
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

impl Outcome {
    /// The worker's result message.
    pub fn to_json(&self) -> Value {
        json!({ "state": self.state.name(), "value": self.value, "error": self.error })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap as Dims;

    use super::*;
    use crate::sweep::space::Dimension;

    fn config(trials: usize) -> SweepConfig {
        let mut dims = Dims::new();
        dims.insert(
            "x".into(),
            Dimension::Uniform {
                low: 0.0,
                high: 1.0,
            },
        );
        SweepConfig {
            name: "s".into(),
            space: Space { dims },
            method: Method::Random,
            metric: "loss".into(),
            direction: Direction::Minimize,
            seed: 3,
            trials,
            parallel: 1,
            pruner: Pruner::None,
        }
    }

    #[test]
    fn resume_skips_finished_trials_and_refuses_a_different_space() {
        let root = tempfile::tempdir().unwrap();
        let mut study = Study::open(root.path(), config(4)).unwrap();
        let proposals: Vec<_> = (0..4).map(|n| study.propose(n).unwrap()).collect();
        for n in [0, 2] {
            study
                .finish(TrialRecord {
                    number: n,
                    params: proposals[n].clone(),
                    value: Some(n as f64),
                    ..TrialRecord::default()
                })
                .unwrap();
        }
        drop(study);
        // Same name, more trials: the finished ones stay, 1 and 3 onwards remain, and trial
        // 1's parameters are what the first run would have proposed.
        let study = Study::open(root.path(), config(6)).unwrap();
        assert_eq!(study.trials.len(), 2);
        assert_eq!(study.pending(), vec![1, 3, 4, 5]);
        assert_eq!(study.propose(1).unwrap(), proposals[1]);
        assert!(root.path().join("s/best.rhai").exists());
        let mut other = config(6);
        other.space.dims.insert(
            "y".into(),
            Dimension::Uniform {
                low: 0.0,
                high: 1.0,
            },
        );
        let err = Study::open(root.path(), other).err().unwrap().to_string();
        assert!(
            err.contains("space") && err.contains("another name"),
            "{err}"
        );
    }
}
