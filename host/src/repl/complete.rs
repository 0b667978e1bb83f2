//! Tab completion shared by the REPL and the Jupyter kernel: functions, components, config keys
//! and variables by prefix, and after `value.` the methods of that variable's type first
//! (`tok.voc` → `vocab_size`).
//!
//! A [`Completions`] is a snapshot of the session (taken after each evaluation), so the line
//! editor can complete while the session is not borrowed.

use std::collections::HashMap;

use crate::script::Session;

/// The `:` commands of the REPL.
pub const COMMANDS: &[&str] = &[
    ":help", ":plugins", ":load", ":save", ":plot", ":time", ":quit",
];

/// What can be completed in a session, as of the moment it was taken.
#[derive(Default, Clone)]
pub struct Completions {
    /// Functions, components, config keys and variables, sorted.
    words: Vec<String>,
    /// Script type name → names of the functions taking it as first argument (methods).
    methods: HashMap<String, Vec<String>>,
    /// Variable → its script type name.
    variables: HashMap<String, String>,
}

/// The name and the first parameter's type of a signature such as
/// `vocab_size(t: &mut Tokenizer) -> int`.
fn method_of(signature: &str) -> Option<(String, String)> {
    let signature = signature.trim_start_matches("fn ");
    let (name, rest) = signature.split_once('(')?;
    let first = rest.split([',', ')']).next()?.trim();
    let ty = first.rsplit_once(':').map_or(first, |(_, t)| t).trim();
    let ty = ty
        .trim_start_matches("&mut ")
        .trim_start_matches('&')
        .trim();
    (!ty.is_empty() && !name.is_empty()).then(|| (name.to_string(), ty.to_string()))
}

impl Completions {
    pub fn of(session: &Session) -> Completions {
        let engine = session.engine();
        let mut methods: HashMap<String, Vec<String>> = HashMap::new();
        for signature in engine.gen_fn_signatures(false) {
            if let Some((name, ty)) = method_of(&signature) {
                methods.entry(ty).or_default().push(name);
            }
        }
        for names in methods.values_mut() {
            names.sort();
            names.dedup();
        }
        let variables = session
            .scope()
            .iter_raw()
            .map(|(name, _, value)| {
                (
                    name.to_string(),
                    engine.map_type_name(value.type_name()).to_string(),
                )
            })
            .collect();
        Completions {
            words: session.completion_words(),
            methods,
            variables,
        }
    }

    /// Where the word being completed starts in `line` (byte offset) and its candidates, for the
    /// cursor at byte offset `pos`.
    pub fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let pos = pos.min(line.len());
        let before = &line[..pos];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        if prefix.starts_with(':') {
            let matches = COMMANDS
                .iter()
                .filter(|c| c.starts_with(prefix))
                .map(|c| c.to_string())
                .collect();
            return (start, matches);
        }
        // `receiver.prefix`: the receiver's methods, when its type is known.
        if before[..start].ends_with('.') {
            let receiver_end = start - 1;
            let receiver_start = before[..receiver_end]
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let receiver = &before[receiver_start..receiver_end];
            if let Some(names) = self
                .variables
                .get(receiver)
                .and_then(|ty| self.methods.get(ty))
            {
                let matches: Vec<String> = names
                    .iter()
                    .filter(|n| n.starts_with(prefix))
                    .cloned()
                    .collect();
                if !matches.is_empty() {
                    return (start, matches);
                }
            }
        }
        if prefix.is_empty() {
            return (start, Vec::new());
        }
        let matches = self
            .words
            .iter()
            .filter(|w| w.starts_with(prefix))
            .cloned()
            .collect();
        (start, matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Completions {
        let mut methods = HashMap::new();
        methods.insert(
            "Tokenizer".to_string(),
            vec!["vocab_size".to_string(), "encode".to_string()],
        );
        methods.insert("Model".to_string(), vec!["vocab_stats".to_string()]);
        let mut variables = HashMap::new();
        variables.insert("tok".to_string(), "Tokenizer".to_string());
        Completions {
            words: vec![
                "tokenizer".into(),
                "vocab_size".into(),
                "vocab_stats".into(),
            ],
            methods,
            variables,
        }
    }

    #[test]
    fn methods_of_the_receivers_type_come_first() {
        let c = sample();
        assert_eq!(
            c.complete("tok.voc", 7),
            (4, vec!["vocab_size".to_string()])
        );
        // Unknown receiver: every word with the prefix.
        assert_eq!(c.complete("x.voc", 5).1, vec!["vocab_size", "vocab_stats"]);
        assert_eq!(
            c.complete("let t = tok", 11),
            (8, vec!["tokenizer".to_string()])
        );
        assert_eq!(c.complete(":sa", 3), (0, vec![":save".to_string()]));
        assert!(c.complete("", 0).1.is_empty());
    }

    #[test]
    fn signatures_give_name_and_receiver_type() {
        assert_eq!(
            method_of("vocab_size(t: &mut Tokenizer) -> int"),
            Some(("vocab_size".into(), "Tokenizer".into()))
        );
        assert_eq!(
            method_of("fn encode(_: Tokenizer, text: String)"),
            Some(("encode".into(), "Tokenizer".into()))
        );
        assert_eq!(method_of("help()"), None);
    }
}
