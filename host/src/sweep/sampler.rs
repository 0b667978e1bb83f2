//! Choosing a trial's parameters: `grid` (the cartesian product, trial `n` is point `n`),
//! `random` (uniform, log-uniform for log dimensions) or `tpe` ([`super::tpe`]). Each trial's
//! draws come from its own generator seeded by the sweep seed and the trial number, so a resumed
//! sweep proposes what an uninterrupted one would have, given the same finished trials.

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Map, Value};

use super::records::{Direction, TrialRecord};
use super::space::Space;
use super::tpe::{self, TpeOptions};

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Grid,
    Random,
    Tpe(TpeOptions),
}

impl Method {
    /// `"grid"`, `"random"`, `"tpe"`, or `{ kind: "tpe", startup, candidates }`.
    pub fn from_json(value: &Value) -> Result<Method, String> {
        let (kind, fields) = match value {
            Value::String(s) => (s.as_str(), None),
            Value::Object(m) => (
                m.get("kind")
                    .and_then(Value::as_str)
                    .ok_or("method: a map needs `kind`")?,
                Some(m),
            ),
            other => return Err(format!("method: expected a name or a map, got {other}")),
        };
        match kind {
            "grid" => Ok(Method::Grid),
            "random" => Ok(Method::Random),
            "tpe" => {
                let mut options = TpeOptions::default();
                for (key, v) in fields.into_iter().flatten() {
                    let n = || {
                        v.as_u64()
                            .filter(|n| *n > 0)
                            .map(|n| n as usize)
                            .ok_or_else(|| format!("method tpe: {key} must be a positive integer"))
                    };
                    match key.as_str() {
                        "kind" => {}
                        "startup" => options.startup = n()?,
                        "candidates" => options.candidates = n()?,
                        other => {
                            return Err(format!(
                                "method tpe: unknown key {other:?} (accepted: kind, startup, candidates)"
                            ))
                        }
                    }
                }
                Ok(Method::Tpe(options))
            }
            other => Err(format!(
                "method {other:?}: expected \"grid\", \"random\" or \"tpe\""
            )),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Method::Grid => json!("grid"),
            Method::Random => json!("random"),
            Method::Tpe(o) => {
                json!({ "kind": "tpe", "startup": o.startup, "candidates": o.candidates })
            }
        }
    }

    /// Parameters of trial `number` given the finished trials.
    pub fn sample(
        &self,
        space: &Space,
        number: usize,
        history: &[TrialRecord],
        direction: Direction,
        seed: u64,
    ) -> Result<Map<String, Value>, String> {
        let mut rng = trial_rng(seed, number);
        match self {
            Method::Grid => space.grid_point(number),
            Method::Random => Ok(space.sample_uniform(&mut rng)),
            Method::Tpe(options) => Ok(tpe::sample(space, history, direction, options, &mut rng)),
        }
    }
}

/// The generator for trial `number`: two SplitMix steps apart from any other trial's.
pub fn trial_rng(seed: u64, number: usize) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed ^ (number as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    SplitMix64::new(mix.next_u64())
}
