//! Interop check: real chat templates (Qwen2.5, Llama-3.1, Gemma, ChatML) rendered by
//! transformers' `apply_chat_template` must come out byte-identical from [`ChatTemplate`].
//! The fixture (`tests/fixtures/chat_template/`: the `.jinja` files, `expected.json` and
//! `make_fixture.py`, which made it) records every conversation × `add_generation_prompt`, and
//! the error message where the template refuses the conversation (`raise_exception`).

use std::path::PathBuf;

use llmlab_plugin_api::serde_json::{self, Value};

use super::{ChatTemplate, Message};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat_template")
}

fn expected() -> Value {
    let path = fixture_dir().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn conversation(expected: &Value, name: &str) -> Vec<Message> {
    serde_json::from_value(expected["conversations"][name].clone()).unwrap()
}

fn template(spec: &Value) -> ChatTemplate {
    let file = fixture_dir().join(spec["file"].as_str().unwrap());
    ChatTemplate::from_file(&file).unwrap().with_special_tokens(
        spec["bos_token"].as_str().unwrap(),
        spec["eos_token"].as_str().unwrap(),
    )
}

/// Every (template, conversation, add_generation_prompt) case: `f(name, template, messages,
/// add_generation_prompt, case)`.
fn for_each_case(mut f: impl FnMut(&str, &ChatTemplate, &[Message], bool, &Value)) {
    let expected = expected();
    let templates = expected["templates"].as_object().unwrap();
    assert!(templates.len() >= 4, "the fixture lost templates");
    for (name, spec) in templates {
        let template = template(spec);
        for case in spec["cases"].as_array().unwrap() {
            let messages = conversation(&expected, case["conversation"].as_str().unwrap());
            let add = case["add_generation_prompt"].as_bool().unwrap();
            f(name, &template, &messages, add, case);
        }
    }
}

#[test]
fn renders_byte_identical_to_transformers_apply_chat_template() {
    let mut rendered = 0;
    let mut refused = 0;
    for_each_case(|name, template, messages, add, case| {
        let ours = template.render(messages, add);
        let what = format!(
            "{name}, {}, add_generation_prompt={add}",
            case["conversation"]
        );
        match (case.get("rendered"), case.get("error")) {
            (Some(want), _) => {
                let ours = ours
                    .unwrap_or_else(|e| panic!("{what}: transformers rendered it, we failed: {e}"));
                assert_eq!(ours, want.as_str().unwrap(), "{what}");
                rendered += 1;
            }
            (None, Some(error)) => {
                let err = ours.expect_err(&what).to_string();
                assert!(
                    err.contains(error.as_str().unwrap()),
                    "{what}: transformers raised {error}, we said: {err}"
                );
                refused += 1;
            }
            _ => panic!("{what}: the case has neither `rendered` nor `error`"),
        }
    });
    assert!(
        rendered >= 30 && refused >= 2,
        "{rendered} rendered, {refused} refused"
    );
}

#[test]
fn the_chatml_default_is_the_fixture_chatml_template() {
    let expected = expected();
    for case in expected["templates"]["chatml"]["cases"].as_array().unwrap() {
        let messages = conversation(&expected, case["conversation"].as_str().unwrap());
        let add = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            ChatTemplate::chatml().render(&messages, add).unwrap(),
            case["rendered"].as_str().unwrap()
        );
    }
}

/// The assistant-only segments of each real template join to transformers' rendering, and the
/// trainable text is each assistant reply (trimmed where the template trims) with its marker.
#[test]
fn real_templates_cut_into_segments_that_join_to_the_reference() {
    for_each_case(|name, template, messages, add, case| {
        let Some(want) = case.get("rendered").and_then(Value::as_str) else {
            return;
        };
        if add {
            return;
        }
        let segments = template
            .render_segments(messages)
            .unwrap_or_else(|e| panic!("{name}, {}: {e}", case["conversation"]));
        let joined: String = segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(joined, want, "{name}, {}", case["conversation"]);
        let replies = messages.iter().filter(|m| m.is_assistant());
        let trainable: Vec<&str> = segments
            .iter()
            .filter(|s| s.trainable)
            .map(|s| s.text.as_str())
            .collect();
        for (reply, segment) in replies.zip(&trainable) {
            assert!(
                segment.starts_with(reply.content.trim()),
                "{name}: trainable {segment:?} does not start with the reply {:?}",
                reply.content
            );
        }
    });
}
