//! `help()` and `help("name")`: what the REPL shows about components and their config keys.
//! In scripts (and notebook cells) they print the text, as the REPL's `:help` does: a returned
//! string would vanish unprinted in a script file.

use std::fmt::Write;
use std::sync::Arc;

use llmlab_plugin_api::Kind;
use rhai::Engine;

use super::Host;
use crate::registry::Registry;

/// `help()` and `help(name)`: print the text, return nothing (so the REPL does not print it twice).
pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let h = host.clone();
    engine.register_fn("help", move || print!("{}", help_text(&h.registry(), None)));
    let h = host.clone();
    engine.register_fn("help", move |name: &str| {
        print!("{}", help_text(&h.registry(), Some(name)))
    });
}

/// Text for `help()` (no name: every component by kind) or `help("name")` (one component's keys,
/// or every component of a kind when `name` is a kind).
pub fn help_text(registry: &Registry, name: Option<&str>) -> String {
    let mut out = String::new();
    match name {
        None => {
            out.push_str("Components (help(\"name\") for config keys):\n");
            for kind in Kind::ALL {
                for entry in registry.entries().filter(|e| e.factory.kind() == kind) {
                    let _ = writeln!(
                        out,
                        "  {}(\"{}\")  {}  [{}]",
                        kind.script_constructor(),
                        entry.factory.name(),
                        entry.factory.about(),
                        entry.provider
                    );
                }
            }
            out.push_str(
                "Functions: help(name), plugins(), load_plugin(path), setting(key, default), tensor(array), \
                 zeros(shape), randn(shape, seed)\n",
            );
            out.push_str(
                "Evaluation tasks (evaluate(model, tok, [\"name\", ...], #{ limit, batch, seed }), \
                 `llmlab eval`; docs/eval.md):\n",
            );
            for (task, about) in crate::eval::builtin::TASKS {
                let _ = writeln!(out, "  {task:20} {about}");
            }
        }
        Some(name) => {
            if let Some(entry) = registry.get(name) {
                let factory = entry.factory;
                let _ = writeln!(
                    out,
                    "{} \"{}\": {}  [{}]",
                    factory.kind(),
                    name,
                    factory.about(),
                    entry.provider
                );
                let keys = factory.config_keys();
                let width = keys.iter().map(|k| k.name.len()).max().unwrap_or(0);
                for key in keys {
                    let _ = writeln!(
                        out,
                        "  {:width$}  = {:<12}  {}",
                        key.name,
                        key.default.to_string(),
                        key.doc
                    );
                }
                if factory.kind() == Kind::Trainer {
                    let _ = writeln!(
                        out,
                        "  {:width$}  = {:<12}  host key: quantization-aware training, \"q4_0\" or \
                         #{{ scheme, skip }} (fake-quantized linear weights during fit/step)",
                        crate::script::QAT_KEY,
                        "()",
                    );
                }
            } else if let Some(kind) = Kind::ALL
                .into_iter()
                .find(|k| k.script_constructor() == name || k.to_string() == name)
            {
                let _ = writeln!(
                    out,
                    "{kind} components: {}",
                    registry.names(kind).join(", ")
                );
            } else if let Some(spec) = crate::eval::builtin::spec(name) {
                let _ = writeln!(
                    out,
                    "evaluation task \"{name}\" (version {}): {}\n  output_type {}, metrics {}",
                    spec.version,
                    spec.description,
                    spec.output_type.name(),
                    spec.metrics.join(", ")
                );
            } else {
                let _ = writeln!(
                    out,
                    "no component or kind named `{name}`; help() lists them"
                );
            }
        }
    }
    out
}
