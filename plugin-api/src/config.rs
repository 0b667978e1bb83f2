//! Typed component configuration from JSON.
//!
//! Configs cross the boundary as `serde_json::Value` (a Rhai map on the script side). Each
//! component deserializes it into its own struct; [`TypedConfig`] adds what a researcher needs
//! around serde: unknown keys are refused with the list of accepted ones, type errors name the
//! key, and every key's default and doc line is published for `help("name")`.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// One accepted config key, as `help()` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigKey {
    pub name: String,
    pub default: Value,
    pub doc: String,
}

/// A component's config struct: `#[serde(default, deny_unknown_fields)]` + `Default` + docs.
pub trait TypedConfig: Serialize + DeserializeOwned + Default {
    /// `(key, one-line doc)` for every field, in the order `help()` lists them.
    const DOCS: &'static [(&'static str, &'static str)];

    /// Extra checks between fields (`d_model % n_head == 0`); the message names the keys.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Every key with its default (taken from `Default`) and doc.
    fn keys() -> Vec<ConfigKey> {
        let defaults = serde_json::to_value(Self::default()).unwrap_or(Value::Null);
        Self::DOCS
            .iter()
            .map(|(name, doc)| ConfigKey {
                name: name.to_string(),
                default: defaults.get(name).cloned().unwrap_or(Value::Null),
                doc: doc.to_string(),
            })
            .collect()
    }

    /// Parses `value` for `component`; null means all defaults.
    fn from_json(component: &str, value: &Value) -> Result<Self> {
        let object = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            other => {
                return Err(Error::invalid_config(
                    component,
                    format!("expected a map of settings, got {other}"),
                ))
            }
        };
        let accepted: Vec<String> = Self::DOCS.iter().map(|(k, _)| k.to_string()).collect();
        if let Some(key) = object.keys().find(|k| !accepted.contains(k)) {
            return Err(Error::UnknownConfigKey {
                component: component.to_string(),
                key: key.clone(),
                accepted,
            });
        }
        let config: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            Error::invalid_config(component, format!("key `{}`: {}", e.path(), e.inner()))
        })?;
        config
            .validate()
            .map_err(|m| Error::invalid_config(component, m))?;
        Ok(config)
    }

    /// The resolved config, every key present: what run directories record.
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        vocab_size: usize,
        lowercase: bool,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                vocab_size: 1024,
                lowercase: false,
            }
        }
    }

    impl TypedConfig for Demo {
        const DOCS: &'static [(&'static str, &'static str)] = &[
            ("vocab_size", "number of tokens"),
            ("lowercase", "fold case first"),
        ];
        fn validate(&self) -> std::result::Result<(), String> {
            if self.vocab_size < 2 {
                return Err("vocab_size must be at least 2".into());
            }
            Ok(())
        }
    }

    #[test]
    fn unknown_key_names_key_and_accepted_keys() {
        let err = Demo::from_json("demo", &json!({ "vocab": 3 }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`vocab`"), "{err}");
        assert!(err.contains("vocab_size, lowercase"), "{err}");
        assert!(err.contains("demo"), "{err}");
    }

    #[test]
    fn ill_typed_value_names_the_key() {
        let err = Demo::from_json("demo", &json!({ "vocab_size": "big" }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab_size"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn partial_config_keeps_defaults_and_validates() {
        let c = Demo::from_json("demo", &json!({ "lowercase": true })).unwrap();
        assert_eq!(
            c,
            Demo {
                vocab_size: 1024,
                lowercase: true
            }
        );
        assert_eq!(
            Demo::from_json("demo", &Value::Null).unwrap(),
            Demo::default()
        );
        let err = Demo::from_json("demo", &json!({ "vocab_size": 1 }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 2"), "{err}");
    }

    #[test]
    fn keys_publish_defaults_and_docs() {
        let keys = Demo::keys();
        assert_eq!(keys[0].name, "vocab_size");
        assert_eq!(keys[0].default, json!(1024));
        assert_eq!(keys[1].doc, "fold case first");
    }
}
