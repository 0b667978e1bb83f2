//! `llmlab plugin new NAME --kind model|tokenizer|trainer|corpus`: writes an out-of-tree plugin
//! crate with one working component named NAME, a test, a README and a script to try it.
//! The templates (`host/templates/plugin/`) use the runtime's building blocks: the model is
//! driven by llmlab-nn's generation engine and saves with its safetensors helpers, the trainer
//! is an `Objective` on llmlab-train's step loop; neither writes sampling or optimiser code.

use std::path::{Path, PathBuf};

/// The component kinds a new plugin can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaffoldKind {
    Model,
    Tokenizer,
    Trainer,
    Corpus,
}

impl ScaffoldKind {
    pub fn parse(kind: &str) -> Result<ScaffoldKind, String> {
        Ok(match kind {
            "model" => ScaffoldKind::Model,
            "tokenizer" => ScaffoldKind::Tokenizer,
            "trainer" => ScaffoldKind::Trainer,
            "corpus" => ScaffoldKind::Corpus,
            other => {
                return Err(format!(
                    "unknown plugin kind {other:?}; one of: model, tokenizer, trainer, corpus"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            ScaffoldKind::Model => "model",
            ScaffoldKind::Tokenizer => "tokenizer",
            ScaffoldKind::Trainer => "trainer",
            ScaffoldKind::Corpus => "corpus",
        }
    }

    fn source(self) -> &'static str {
        match self {
            ScaffoldKind::Model => include_str!("../../templates/plugin/model.rs.tmpl"),
            ScaffoldKind::Tokenizer => include_str!("../../templates/plugin/tokenizer.rs.tmpl"),
            ScaffoldKind::Trainer => include_str!("../../templates/plugin/trainer.rs.tmpl"),
            ScaffoldKind::Corpus => include_str!("../../templates/plugin/corpus.rs.tmpl"),
        }
    }

    /// Dependencies besides plugin-api: the building-block crates the template uses.
    fn extra_dependencies(self) -> &'static str {
        match self {
            ScaffoldKind::Model => "llmlab-nn = { path = \"{{llmlab}}/nn\" }\n",
            ScaffoldKind::Trainer => "llmlab-train = { path = \"{{llmlab}}/train\" }\n",
            ScaffoldKind::Tokenizer | ScaffoldKind::Corpus => "",
        }
    }

    /// A script that uses the component (`try.rhai`, shown in the README too).
    fn usage(self) -> &'static str {
        match self {
            ScaffoldKind::Model => include_str!("../../templates/plugin/model.rhai.tmpl"),
            ScaffoldKind::Tokenizer => {
                "let tok = tokenizer(\"{{name}}\");\nlet ids = tok.encode(\"héllo\");\nprint(ids);\nprint(tok.decode(ids));\n"
            }
            ScaffoldKind::Trainer => include_str!("../../templates/plugin/trainer.rhai.tmpl"),
            ScaffoldKind::Corpus => {
                "let tasks = corpus(\"{{name}}\", #{ n: 5, seed: 1 });\nprint(tasks.examples(2));\nprint(tasks.check(\"double 21 =\", \"42\"));\nprint(tasks.reward().score(\"double 21 =\", \"41\"));\n"
            }
        }
    }
}

/// Checks a plugin name: lower-case letters, digits, `_` and `-`, starting with a letter; not
/// one of llmlab's own crate names.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(format!(
            "plugin name {name:?}: use lower-case letters, digits, `_` and `-`, starting with a \
             letter (it names the crate, the plugin and its component)"
        ));
    }
    if name.starts_with("llmlab") {
        return Err(format!(
            "plugin name {name:?}: names starting with `llmlab` are llmlab's own"
        ));
    }
    Ok(())
}

/// `char-lstm` → `CharLstm`.
fn camel(name: &str) -> String {
    name.split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn fill(template: &str, name: &str, kind: ScaffoldKind, llmlab: &Path) -> String {
    template
        .replace("{{extra_dependencies}}", kind.extra_dependencies())
        .replace("{{usage}}", kind.usage())
        .replace("{{llmlab}}", &llmlab.display().to_string())
        .replace("{{package}}", name)
        .replace("{{name}}", name)
        .replace("{{Name}}", &camel(name))
        .replace("{{kind}}", kind.name())
}

/// Writes the crate `name` of `kind` into `dir` (which must not exist, or be empty), against the
/// llmlab source tree `llmlab`; returns the files written.
pub fn scaffold(
    dir: &Path,
    name: &str,
    kind: ScaffoldKind,
    llmlab: &Path,
) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} exists and is not empty; plugin new writes a new crate (choose another directory)",
            dir.display()
        ));
    }
    let files = [
        (
            "Cargo.toml",
            include_str!("../../templates/plugin/Cargo.toml.tmpl"),
        ),
        ("src/lib.rs", kind.source()),
        (
            "README.md",
            include_str!("../../templates/plugin/README.md.tmpl"),
        ),
        ("try.rhai", kind.usage()),
        (".gitignore", "/target\n"),
    ];
    let mut written = Vec::new();
    for (file, template) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, fill(template, name, kind, llmlab))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds_are_checked() {
        assert!(check_name("char-lstm").is_ok());
        for bad in ["", "CharLstm", "1x", "a b", "llmlab-gpt"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(camel("char-lstm_v2"), "CharLstmV2");
        assert!(ScaffoldKind::parse("quantizer")
            .unwrap_err()
            .contains("model, tokenizer"));
    }

    #[test]
    fn every_kind_fills_every_placeholder() {
        for kind in ["model", "tokenizer", "trainer", "corpus"] {
            let kind = ScaffoldKind::parse(kind).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let crate_dir = dir.path().join("mine");
            let files = scaffold(&crate_dir, "mine", kind, Path::new("/src/llmlab")).unwrap();
            assert_eq!(files.len(), 5);
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                assert!(
                    !text.contains("{{"),
                    "{}: unfilled placeholder",
                    file.display()
                );
            }
            let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains("path = \"/src/llmlab/plugin-api\""),
                "{manifest}"
            );
            // Not over an existing crate.
            let again = scaffold(&crate_dir, "mine", kind, Path::new("/src/llmlab")).unwrap_err();
            assert!(again.contains("not empty"), "{again}");
        }
    }
}
