//! Prompt and target templates: text with `{{field}}` placeholders filled from a document's
//! fields (a JSONL object, a CSV row, a task corpus's `prompt`/`answer`). A placeholder naming no
//! field is an error naming it and the fields there are, checked before any model call.

use llmlab_plugin_api::serde_json::{Map, Value};
use llmlab_plugin_api::{Error, Result};

/// A parsed template: literal text and placeholders in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses `source`; `what` names it in errors (`task "x": prompt`).
    pub fn parse(what: &str, source: &str) -> Result<Template> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                Error::Data(format!(
                    "{what}: `{{{{` without a closing `}}}}` in {source:?}"
                ))
            })?;
            let name = after[..close].trim();
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Error::Data(format!(
                    "{what}: `{{{{{name}}}}}` is not a field name (letters, digits, _)"
                )));
            }
            parts.push(Part::Field(name.to_string()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// The field names used, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Field(name) = part {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// Errors naming every placeholder that `doc` has no field for.
    pub fn check(&self, what: &str, doc: &Map<String, Value>) -> Result<()> {
        let unknown: Vec<&str> = self
            .fields()
            .into_iter()
            .filter(|f| !doc.contains_key(*f))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut have: Vec<&str> = doc.keys().map(String::as_str).collect();
        have.sort_unstable();
        Err(Error::Data(format!(
            "{what}: unknown template variable{} {} in {:?}; the documents have: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            self.source,
            have.join(", ")
        )))
    }

    /// The text with every placeholder replaced by its field (strings as they are, other values
    /// as JSON).
    pub fn render(&self, what: &str, doc: &Map<String, Value>) -> Result<String> {
        self.check(what, doc)?;
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(name) => match &doc[name] {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(out)
    }

    /// The field this template is exactly (`"{{choices}}"`), if it is nothing else.
    pub fn sole_field(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Field(name)] => Some(name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn renders_fields_and_names_unknown_ones() {
        let t = Template::parse("prompt", "Q: {{question}}\nA:{{ n }}").unwrap();
        let d = doc(json!({"question": "2+2?", "n": 4}));
        assert_eq!(t.render("prompt", &d).unwrap(), "Q: 2+2?\nA:4");
        assert_eq!(t.fields(), ["question", "n"]);
        let err = Template::parse("task \"x\": prompt", "{{questoin}} {{m}}")
            .unwrap()
            .render("task \"x\": prompt", &d)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`questoin`, `m`") && err.contains("n, question"),
            "{err}"
        );
        let err = Template::parse("target", "{{a").unwrap_err().to_string();
        assert!(err.contains("closing"), "{err}");
        let err = Template::parse("target", "{{a b}}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a field name"), "{err}");
        assert_eq!(
            Template::parse("c", "{{choices}}").unwrap().sole_field(),
            Some("choices")
        );
    }
}
