//! Rhai values at the script edge and JSON configs: maps to JSON (refusing NaN/inf with the key's
//! path) and back, and the typed options script functions read from their options maps.

use llmlab_plugin_api::serde_json::Value;
use rhai::{Dynamic, Map};

use super::{script_error, ScriptResult};

pub fn dynamic_to_json(value: Dynamic) -> ScriptResult<Value> {
    if value.is_unit() {
        return Ok(Value::Null);
    }
    // JSON has no NaN or infinity: serde would turn them into null, and the component would
    // report "invalid type: null" for a key the script set to a number.
    if let Some((path, number)) = non_finite(&value, String::new()) {
        let path = if path.is_empty() {
            "value".to_string()
        } else {
            format!("`{path}`")
        };
        return Err(script_error(format!(
            "config {path} is {number}: settings must be finite numbers"
        )));
    }
    rhai::serde::from_dynamic::<Value>(&value)
        .map_err(|e| script_error(format!("config is not representable as JSON: {e}")))
}

/// The path (`lr`, `schedule.warmup`, `stop[2]`) and text of the first NaN or infinite number
/// inside `value`.
fn non_finite(value: &Dynamic, path: String) -> Option<(String, String)> {
    if let Ok(x) = value.as_float() {
        return (!x.is_finite()).then(|| (path, x.to_string()));
    }
    if let Some(map) = value.read_lock::<Map>() {
        return map.iter().find_map(|(key, v)| {
            let inner = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            non_finite(v, inner)
        });
    }
    if let Some(array) = value.read_lock::<rhai::Array>() {
        return array
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(v, format!("{path}[{i}]")));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    #[test]
    fn nan_in_a_config_names_the_key() {
        let mut map = Map::new();
        map.insert("lr".into(), Dynamic::from(f64::NAN));
        let error = dynamic_to_json(map.into()).unwrap_err().to_string();
        assert!(error.contains("`lr`") && error.contains("NaN"), "{error}");
        let mut inner = Map::new();
        inner.insert("warmup".into(), Dynamic::from(f64::INFINITY));
        let mut outer = Map::new();
        outer.insert("schedule".into(), Dynamic::from(inner));
        let error = dynamic_to_json(outer.into()).unwrap_err().to_string();
        assert!(
            error.contains("`schedule.warmup`") && error.contains("inf"),
            "{error}"
        );
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
