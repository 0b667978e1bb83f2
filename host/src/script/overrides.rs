//! The `--set` overrides applied to every config before it reaches a component.
//!
//! `--set name.key=value` overrides `key` in the config of component `name` (or of every
//! component of a kind: `trainer.steps=20`); `--set key=value` without a dot is a script setting
//! read with `setting("key", default)` or the `SETTINGS` map.
//!
//! An override must reach something: `--set` with an empty name (`=5`, `.steps=5`) is refused
//! when parsed; one whose component is neither loaded nor a kind (`lmm.steps`) before the script
//! runs; and one that no component made by the script took and no `setting` call (or text of the
//! script) read, when the script ends — each naming the override and the closest known name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::Kind;
use rhai::{Dynamic, Map};

use super::rhai_json::json_to_dynamic;

/// Settings the host itself reads (`name`: the run directory's name, `runs_dir`: its parent).
pub const HOST_SETTINGS: [&str; 2] = ["name", "runs_dir"];

/// `--set` values from the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `(component name or kind, key) -> value`.
    component: BTreeMap<(String, String), Value>,
    settings: BTreeMap<String, Value>,
    /// What the script touched, for the end-of-script check (shared by clones).
    seen: Arc<Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Component overrides that reached a config, as `(scope, key)`.
    applied: BTreeSet<(String, String)>,
    /// Components made (by name and by kind), whether or not an override reached them.
    components: BTreeSet<String>,
    /// Settings read with `setting(key, default)`, overridden or not.
    settings: BTreeSet<String>,
}

impl Overrides {
    /// Parses `key=value` / `name.key=value` pairs; values are JSON when they parse as JSON
    /// (`20`, `3e-4`, `true`, `[1,2]`), strings otherwise. An empty key or component name is
    /// an error.
    pub fn parse(pairs: &[String]) -> Result<Overrides, String> {
        let mut overrides = Overrides::default();
        for pair in pairs {
            let (key, raw) = pair.split_once('=').ok_or_else(|| {
                format!("--set {pair:?}: expected key=value or component.key=value")
            })?;
            let value =
                serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
            match key.split_once('.') {
                Some(("", _)) => {
                    return Err(format!(
                        "--set {pair:?}: no component before the dot (write lm.steps=20 for a \
                         component's key, or steps=20 for a script setting)"
                    ))
                }
                Some((scope, "")) => {
                    return Err(format!(
                        "--set {pair:?}: no key after `{scope}.` (write {scope}.steps=20)"
                    ))
                }
                Some((scope, key)) => {
                    overrides
                        .component
                        .insert((scope.to_string(), key.to_string()), value);
                }
                None if key.trim().is_empty() => {
                    return Err(format!(
                        "--set {pair:?}: empty key (write key=value or component.key=value)"
                    ))
                }
                None => {
                    overrides.settings.insert(key.to_string(), value);
                }
            }
        }
        Ok(overrides)
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the overrides addressed to `name` or to `kind` onto `config` (a map or null).
    pub fn apply(&self, kind: Kind, name: &str, config: &mut Value) -> Result<(), String> {
        let kind_name = kind.script_constructor();
        {
            let mut seen = self.seen();
            seen.components.insert(name.to_string());
            seen.components.insert(kind_name.to_string());
            seen.components.insert(kind.to_string());
        }
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
        let mut seen = self.seen();
        for ((scope, key), value) in applicable {
            object.insert(key.clone(), value.clone());
            seen.applied.insert((scope.clone(), key.clone()));
        }
        Ok(())
    }

    /// The value of setting `key` when overridden (the read is recorded either way).
    pub fn setting(&self, key: &str) -> Option<Dynamic> {
        self.seen().settings.insert(key.to_string());
        self.settings.get(key).map(json_to_dynamic)
    }

    pub fn settings_map(&self) -> Map {
        self.settings
            .iter()
            .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
            .collect()
    }

    /// Before a script runs: every component override must name a component in `known`
    /// (component and kind names) — `lmm.steps` is an error naming the closest one.
    pub fn check_components(&self, known: &[String]) -> Result<(), String> {
        for ((scope, key), value) in &self.component {
            if !known.iter().any(|k| k == scope) {
                return Err(format!(
                    "--set {scope}.{key}={value}: no component or kind `{scope}` is loaded{}",
                    closest_hint(scope, known.iter().map(String::as_str))
                ));
            }
        }
        Ok(())
    }

    /// After a script ran: the overrides nothing took — a component override whose component
    /// the script never made, a setting no `setting(..)` call read and the script's `text` never
    /// mentions (the `SETTINGS` map is read without a call) — each with the closest name the
    /// script did use.
    pub fn unused(&self, text: &str) -> Vec<String> {
        let seen = self.seen();
        let mut problems = Vec::new();
        for ((scope, key), value) in &self.component {
            if seen.applied.contains(&(scope.clone(), key.clone())) {
                continue;
            }
            problems.push(format!(
                "--set {scope}.{key}={value} was not used: the script made no `{scope}`{}",
                closest_hint(scope, seen.components.iter().map(String::as_str))
            ));
        }
        for (key, value) in &self.settings {
            if HOST_SETTINGS.contains(&key.as_str())
                || seen.settings.contains(key)
                || mentions(text, key)
            {
                continue;
            }
            let known = seen
                .settings
                .iter()
                .map(String::as_str)
                .chain(HOST_SETTINGS)
                .chain(self.component.keys().map(|(_, k)| k.as_str()));
            problems.push(format!(
                "--set {key}={value} was not used: the script reads no setting `{key}`{}",
                closest_hint(key, known)
            ));
        }
        problems
    }
}

/// Whether `text` has `word` as a whole identifier (not inside a longer name).
fn mentions(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// `" (closest: `lm`)"` for the candidate nearest to `name` in edit distance, when one is near.
fn closest_hint<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let best = candidates
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .min();
    match best {
        Some((d, c)) if d <= (name.chars().count() / 2).max(2) => format!(" (closest: `{c}`)"),
        _ => String::new(),
    }
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
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
    fn empty_names_are_refused_when_parsed() {
        for bad in ["=5", ".steps=5", "lm.=5", " =1"] {
            let error = Overrides::parse(&[bad.into()]).unwrap_err();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn unknown_component_names_the_closest() {
        let o = Overrides::parse(&["lmm.steps=1000000".into()]).unwrap();
        let known = [
            "lm".to_string(),
            "gpt".into(),
            "trainer".into(),
            "sft".into(),
        ];
        let error = o.check_components(&known).unwrap_err();
        assert!(
            error.contains("lmm.steps") && error.contains("closest: `lm`"),
            "{error}"
        );
        let ok = Overrides::parse(&["trainer.steps=5".into()]).unwrap();
        ok.check_components(&known).unwrap();
    }

    #[test]
    fn overrides_nothing_used_are_reported_with_the_closest_name() {
        let o = Overrides::parse(&[
            "sft.steps=5".into(),
            "lm.steps=5".into(),
            "stesp=3".into(),
            "batch=2".into(),
            "name=x".into(),
        ])
        .unwrap();
        let mut config = json!({});
        o.apply(Kind::Trainer, "lm", &mut config).unwrap();
        assert!(o.setting("steps").is_none());
        let problems = o.unused("let b = SETTINGS.batch;");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("sft.steps=5") && problems[0].contains("no `sft`"));
        assert!(
            problems[1].contains("stesp=3") && problems[1].contains("closest: `steps`"),
            "{problems:?}"
        );
        assert!(!mentions("let batches = 1;", "batch"));
        assert_eq!(edit_distance("lmm", "lm"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn set_without_equals_is_an_error() {
        assert!(Overrides::parse(&["steps".into()])
            .unwrap_err()
            .contains("key=value"));
    }
}
