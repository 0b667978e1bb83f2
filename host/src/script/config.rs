//! Configs at the script edge: Rhai maps to JSON and back, and the `--set` overrides applied to
//! every config before it reaches a component.
//!
//! `--set name.key=value` overrides `key` in the config of component `name` (or of every
//! component of a kind: `trainer.steps=20`); `--set key=value` without a dot is a script setting
//! read with `setting("key", default)` or the `SETTINGS` map.

use std::collections::BTreeMap;

use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::Kind;
use rhai::{Dynamic, Map};

use super::{script_error, ScriptResult};

pub fn dynamic_to_json(value: Dynamic) -> ScriptResult<Value> {
    if value.is_unit() {
        return Ok(Value::Null);
    }
    rhai::serde::from_dynamic::<Value>(&value)
        .map_err(|e| script_error(format!("config is not representable as JSON: {e}")))
}

pub fn json_to_dynamic(value: &Value) -> Dynamic {
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

/// Option `key` of a script function's options map: a positive integer, or `default` if absent.
pub fn positive_int_option(
    function: &str,
    options: &Map,
    key: &str,
    default: usize,
) -> ScriptResult<usize> {
    match options.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_int()
            .ok()
            .filter(|i| *i > 0)
            .map(|i| i as usize)
            .ok_or_else(|| {
                script_error(format!(
                    "{function} option `{key}` must be a positive integer, not {v}"
                ))
            }),
    }
}

/// `--set` values from the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `(component name or kind, key) -> value`.
    component: BTreeMap<(String, String), Value>,
    settings: BTreeMap<String, Value>,
}

impl Overrides {
    /// Parses `key=value` / `name.key=value` pairs; values are JSON when they parse as JSON
    /// (`20`, `3e-4`, `true`, `[1,2]`), strings otherwise.
    pub fn parse(pairs: &[String]) -> Result<Overrides, String> {
        let mut overrides = Overrides::default();
        for pair in pairs {
            let (key, raw) = pair.split_once('=').ok_or_else(|| {
                format!("--set {pair:?}: expected key=value or component.key=value")
            })?;
            let value =
                serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
            match key.split_once('.') {
                Some((scope, key)) if !scope.is_empty() && !key.is_empty() => {
                    overrides
                        .component
                        .insert((scope.to_string(), key.to_string()), value);
                }
                _ => {
                    overrides.settings.insert(key.to_string(), value);
                }
            }
        }
        Ok(overrides)
    }

    /// Applies the overrides addressed to `name` or to `kind` onto `config` (a map or null).
    pub fn apply(&self, kind: Kind, name: &str, config: &mut Value) -> Result<(), String> {
        let kind_name = kind.script_constructor();
        let applicable: Vec<_> = self
            .component
            .iter()
            .filter(|((scope, _), _)| {
                scope == name || scope == kind_name || *scope == kind.to_string()
            })
            .collect();
        if applicable.is_empty() {
            return Ok(());
        }
        if config.is_null() {
            *config = Value::Object(Default::default());
        }
        let object = config
            .as_object_mut()
            .ok_or_else(|| format!("config of {name} is not a map"))?;
        for ((_, key), value) in applicable {
            object.insert(key.clone(), value.clone());
        }
        Ok(())
    }

    pub fn setting(&self, key: &str) -> Option<Dynamic> {
        self.settings.get(key).map(json_to_dynamic)
    }

    pub fn settings_map(&self) -> Map {
        self.settings
            .iter()
            .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    #[test]
    fn set_parses_json_values_and_scopes() {
        let o = Overrides::parse(&[
            "lm.steps=20".into(),
            "trainer.lr=3e-4".into(),
            "name=demo".into(),
        ])
        .unwrap();
        let mut config = json!({ "steps": 500, "batch_size": 8 });
        o.apply(Kind::Trainer, "lm", &mut config).unwrap();
        assert_eq!(config, json!({ "steps": 20, "batch_size": 8, "lr": 3e-4 }));
        let mut other = Value::Null;
        o.apply(Kind::Model, "gpt", &mut other).unwrap();
        assert_eq!(other, Value::Null);
        assert_eq!(o.setting("name").unwrap().into_string().unwrap(), "demo");
    }

    #[test]
    fn set_without_equals_is_an_error() {
        assert!(Overrides::parse(&["steps".into()])
            .unwrap_err()
            .contains("key=value"));
    }

    #[test]
    fn maps_round_trip_through_json() {
        let mut map = Map::new();
        map.insert("vocab_size".into(), Dynamic::from(1024_i64));
        map.insert("lr".into(), Dynamic::from(0.5_f64));
        map.insert("norm".into(), Dynamic::from("rms"));
        let json = dynamic_to_json(map.into()).unwrap();
        assert_eq!(
            json,
            json!({ "vocab_size": 1024, "lr": 0.5, "norm": "rms" })
        );
    }
}
