//! Early stopping of trials from their intermediate values (`trial.report(step, value)`, or a
//! trainer given `trial` reporting its validation metric):
//!
//! * `median` (Optuna's `MedianPruner`): after `startup` complete trials and past `warmup`
//!   steps, stop a trial whose best value so far is worse than the median of the complete
//!   trials' values at the same step;
//! * `asha` (asynchronous successive halving, Li et al. 2020, as Optuna's
//!   `SuccessiveHalvingPruner`): rungs at `min_resource * reduction_factor^k` steps; a trial
//!   reaching a rung is promoted only if its value there is in the top `1 / reduction_factor` of
//!   all values recorded at that rung so far (with fewer than `reduction_factor` of them, only
//!   the best one goes on). Decisions are made once per rung, when the trial reaches it.
//!
//! Both decide from the curves alone, so a decision can be replayed from `trials.jsonl`.

use llmlab_plugin_api::serde_json::{json, Value};

use super::records::{Direction, TrialState};

#[derive(Debug, Clone, PartialEq)]
pub enum Pruner {
    None,
    Median {
        /// Complete trials needed before anything is pruned.
        startup: usize,
        /// Steps before which a trial is never pruned.
        warmup: u64,
    },
    Asha {
        /// The first rung's step; `None`: the trial's first reported step.
        min_resource: Option<u64>,
        reduction_factor: u64,
    },
}

/// A trial's state (`None`: still running) and its reports: what a pruner keeps of the others.
pub type StateCurve = (Option<TrialState>, Vec<(u64, f64)>);

/// Another trial's curve as a pruner sees it.
pub struct Curve<'a> {
    pub state: Option<TrialState>,
    pub points: &'a [(u64, f64)],
}

impl Pruner {
    /// `"none"`, `"median"`, `"asha"`, or a map `{ kind, startup, warmup, min_resource,
    /// reduction_factor }`.
    pub fn from_json(value: &Value) -> Result<Pruner, String> {
        let (kind, fields) = match value {
            Value::Null => ("none", None),
            Value::String(s) => (s.as_str(), None),
            Value::Object(m) => (
                m.get("kind")
                    .and_then(Value::as_str)
                    .ok_or("pruner: a map needs `kind` (\"none\", \"median\" or \"asha\")")?,
                Some(m),
            ),
            other => return Err(format!("pruner: expected a name or a map, got {other}")),
        };
        let int = |key: &str| -> Result<Option<u64>, String> {
            match fields.and_then(|m| m.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                    format!("pruner {kind}: {key} must be a non-negative integer, got {v}")
                }),
            }
        };
        let allowed: &[&str] = match kind {
            "none" => &["kind"],
            "median" => &["kind", "startup", "warmup"],
            "asha" => &["kind", "min_resource", "reduction_factor"],
            other => {
                return Err(format!(
                    "pruner {other:?}: expected \"none\", \"median\" or \"asha\""
                ))
            }
        };
        if let Some(extra) = fields.and_then(|m| m.keys().find(|k| !allowed.contains(&k.as_str())))
        {
            return Err(format!(
                "pruner {kind}: unknown key {extra:?} (accepted: {})",
                allowed.join(", ")
            ));
        }
        Ok(match kind {
            "none" => Pruner::None,
            "median" => Pruner::Median {
                startup: int("startup")?.unwrap_or(5) as usize,
                warmup: int("warmup")?.unwrap_or(0),
            },
            _ => {
                let reduction_factor = int("reduction_factor")?.unwrap_or(3);
                if reduction_factor < 2 {
                    return Err("pruner asha: reduction_factor must be at least 2".into());
                }
                Pruner::Asha {
                    min_resource: int("min_resource")?.filter(|r| *r > 0),
                    reduction_factor,
                }
            }
        })
    }

    pub fn to_json(&self) -> Value {
        match self {
            Pruner::None => json!({ "kind": "none" }),
            Pruner::Median { startup, warmup } => {
                json!({ "kind": "median", "startup": startup, "warmup": warmup })
            }
            Pruner::Asha {
                min_resource,
                reduction_factor,
            } => {
                json!({ "kind": "asha", "min_resource": min_resource, "reduction_factor": reduction_factor })
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Pruner::None => "none",
            Pruner::Median { .. } => "median",
            Pruner::Asha { .. } => "asha",
        }
    }

    /// Whether the trial whose reports so far are `curve` (its latest last) should stop;
    /// `others` are the other trials: finished (with a state) and running (`state: None`).
    pub fn should_prune(
        &self,
        curve: &[(u64, f64)],
        others: &[Curve<'_>],
        direction: Direction,
    ) -> bool {
        let Some(&(step, value)) = curve.last() else {
            return false;
        };
        if value.is_nan() && !matches!(self, Pruner::None) {
            return true;
        }
        match self {
            Pruner::None => false,
            Pruner::Median { startup, warmup } => {
                let complete: Vec<&Curve> = others
                    .iter()
                    .filter(|c| c.state == Some(TrialState::Complete))
                    .collect();
                if complete.len() < *startup || step < *warmup {
                    return false;
                }
                let mut at_step: Vec<f64> = complete
                    .iter()
                    .filter_map(|c| c.points.iter().find(|(s, _)| *s == step).map(|(_, v)| *v))
                    .filter(|v| v.is_finite())
                    .collect();
                if at_step.is_empty() {
                    return false;
                }
                at_step.sort_by(f64::total_cmp);
                let n = at_step.len();
                let median = if n % 2 == 1 {
                    at_step[n / 2]
                } else {
                    0.5 * (at_step[n / 2 - 1] + at_step[n / 2])
                };
                let best_so_far = curve
                    .iter()
                    .map(|(_, v)| *v)
                    .filter(|v| v.is_finite())
                    .min_by(|a, b| direction.loss(*a).total_cmp(&direction.loss(*b)))
                    .unwrap_or(value);
                direction.better(median, best_so_far)
            }
            Pruner::Asha {
                min_resource,
                reduction_factor,
            } => {
                let eta = *reduction_factor;
                let r0 = min_resource.unwrap_or(curve[0].0).max(1);
                let previous = if curve.len() >= 2 {
                    curve[curve.len() - 2].0
                } else {
                    0
                };
                let mut rung_step = r0;
                while rung_step <= step {
                    // Only rungs first reached by this report are decided now.
                    if rung_step > previous {
                        let mine = rung_value(curve, rung_step).unwrap_or(value);
                        let mut competing: Vec<f64> = others
                            .iter()
                            .filter_map(|c| rung_value(c.points, rung_step))
                            .filter(|v| v.is_finite())
                            .collect();
                        competing.push(mine);
                        competing.sort_by(|a, b| direction.loss(*a).total_cmp(&direction.loss(*b)));
                        let promotable = (competing.len() / eta as usize).saturating_sub(1);
                        if direction.better(competing[promotable], mine) {
                            return true;
                        }
                    }
                    rung_step = rung_step.saturating_mul(eta);
                }
                false
            }
        }
    }
}

/// A curve's value at a rung: its first report at or after the rung's step.
fn rung_value(points: &[(u64, f64)], rung_step: u64) -> Option<f64> {
    points
        .iter()
        .find(|(s, _)| *s >= rung_step)
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loss curves: `start` falling by `rate` per 10 steps, reported every 10 steps.
    fn curve(start: f64, rate: f64, steps: u64) -> Vec<(u64, f64)> {
        (1..=steps / 10)
            .map(|i| (i * 10, start - rate * i as f64))
            .collect()
    }

    fn complete(points: &[(u64, f64)]) -> Curve<'_> {
        Curve {
            state: Some(TrialState::Complete),
            points,
        }
    }

    /// The step at which `pruner` stops `trial`, feeding its reports one at a time.
    fn pruned_at(pruner: &Pruner, trial: &[(u64, f64)], others: &[Curve<'_>]) -> Option<u64> {
        (1..=trial.len())
            .find(|&n| pruner.should_prune(&trial[..n], others, Direction::Minimize))
            .map(|n| trial[n - 1].0)
    }

    #[test]
    fn median_stops_a_trial_worse_than_the_median_at_the_same_step() {
        let finished = [
            curve(5.0, 0.2, 100),
            curve(4.0, 0.2, 100),
            curve(4.5, 0.2, 100),
        ];
        let others: Vec<Curve> = finished.iter().map(|c| complete(c)).collect();
        let median = Pruner::Median {
            startup: 3,
            warmup: 0,
        };
        // Median at step 10 is 4.3; a trial starting at 6 is worse everywhere: stopped at once.
        assert_eq!(pruned_at(&median, &curve(6.0, 0.2, 100), &others), Some(10));
        // One that starts better than the median goes on to the end.
        assert_eq!(pruned_at(&median, &curve(4.2, 0.2, 100), &others), None);
        // A trial that starts badly and catches up is stopped when it is first behind only if
        // its best so far is worse: starts at 4.6 (> 4.3 median at step 10).
        assert_eq!(
            pruned_at(&median, &[(10, 4.6), (20, 3.0)], &others),
            Some(10)
        );
        // Warm-up and start-up protect early trials.
        let warm = Pruner::Median {
            startup: 3,
            warmup: 30,
        };
        assert_eq!(pruned_at(&warm, &curve(6.0, 0.2, 100), &others), Some(30));
        let startup = Pruner::Median {
            startup: 4,
            warmup: 0,
        };
        assert_eq!(pruned_at(&startup, &curve(6.0, 0.2, 100), &others), None);
        // Maximising flips it.
        assert!(!median.should_prune(&[(10, 6.0)], &others, Direction::Maximize));
        assert!(median.should_prune(&[(10, 1.0)], &others, Direction::Maximize));
        // Pruned and running trials do not count for the median.
        let pruned = [Curve {
            state: Some(TrialState::Pruned),
            points: &finished[0],
        }];
        assert_eq!(pruned_at(&median, &curve(6.0, 0.2, 100), &pruned), None);
    }

    #[test]
    fn asha_promotes_only_the_top_fraction_at_each_rung() {
        let asha = Pruner::Asha {
            min_resource: Some(10),
            reduction_factor: 3,
        };
        // Rungs at steps 10, 30, 90.
        // First trial: alone at every rung, it is the best there, so it runs to the end.
        let first = curve(5.0, 0.1, 100);
        assert_eq!(pruned_at(&asha, &first, &[]), None);
        // Second, worse at step 10 (5.5 vs 4.9): with 2 values < eta only the best goes on.
        let others = [complete(&first)];
        assert_eq!(pruned_at(&asha, &curve(5.6, 0.1, 100), &others), Some(10));
        // A better one is promoted past every rung.
        assert_eq!(pruned_at(&asha, &curve(4.0, 0.1, 100), &others), None);
        // With six values at rung 10 the top 6/3 = 2 go on: third best is stopped, second not.
        let curves: Vec<Vec<(u64, f64)>> = [4.0, 4.5, 5.0, 5.5, 6.0]
            .iter()
            .map(|s| curve(*s, 0.0, 100))
            .collect();
        let others: Vec<Curve> = curves.iter().map(|c| complete(c)).collect();
        assert_eq!(pruned_at(&asha, &curve(4.4, 0.0, 20), &others), None);
        assert_eq!(pruned_at(&asha, &curve(4.7, 0.0, 20), &others), Some(10));
        // Running trials compete too (state None), and a report past a rung's step counts for
        // that rung: reports at 25 and 50 stand for rungs 10 and 30.
        let running = [Curve {
            state: None,
            points: &[(10, 1.0), (30, 1.0)],
        }];
        assert_eq!(pruned_at(&asha, &[(25, 2.0)], &running), Some(25));
        assert!(!asha.should_prune(&[(25, 0.5), (50, 0.9)], &running, Direction::Minimize));
    }

    #[test]
    fn asha_decides_each_rung_once_when_the_trial_reaches_it() {
        let asha = Pruner::Asha {
            min_resource: Some(10),
            reduction_factor: 2,
        };
        let trial = [(10, 3.0), (15, 2.9)];
        // A better trial arriving at rung 10 later does not stop this one between rungs.
        let later = [complete(&[(10, 1.0)])];
        assert!(!asha.should_prune(&trial, &later, Direction::Minimize));
        // At rung 20 it is compared again.
        let trial = [(10, 3.0), (15, 2.9), (20, 2.8)];
        let others = [complete(&[(10, 1.0), (20, 1.0)])];
        assert!(asha.should_prune(&trial, &others, Direction::Minimize));
    }

    #[test]
    fn pruner_specs_parse_and_unknown_keys_are_named() {
        assert_eq!(Pruner::from_json(&json!("none")).unwrap(), Pruner::None);
        assert_eq!(
            Pruner::from_json(&json!({ "kind": "asha", "min_resource": 25 })).unwrap(),
            Pruner::Asha {
                min_resource: Some(25),
                reduction_factor: 3
            }
        );
        let err = Pruner::from_json(&json!({ "kind": "median", "patience": 3 })).unwrap_err();
        assert!(err.contains("patience") && err.contains("warmup"), "{err}");
        assert!(Pruner::from_json(&json!("hyperband"))
            .unwrap_err()
            .contains("asha"));
    }
}
