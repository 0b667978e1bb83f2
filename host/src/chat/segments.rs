//! Cutting a rendered conversation into trainable and context [`Segment`]s.
//!
//! A Jinja template cannot say which of its output came from which message, so the cut is found
//! the way it can be checked: render the conversation's first `i` turns, then the first `i + 1`;
//! the difference is turn `i`'s text. For an assistant turn, the first `i` turns are rendered
//! once more with `add_generation_prompt`, which splits its text into the header the template
//! writes before any assistant reply (context, what generation starts from) and the reply itself
//! with the template's end-of-turn marker (trainable: the model learns to say it and to stop).
//! A template whose longer render does not extend the shorter one cannot be cut this way; that
//! is an error naming the turn, not a guess.

use llmlab_plugin_api::Result;

use super::message::Message;
use super::template::ChatTemplate;

/// A piece of the rendered conversation: `trainable` pieces are the assistant's replies. The
/// plugin contract's type, so chat examples reach `trainer("sft")` as they are.
pub use llmlab_plugin_api::TextSegment as Segment;

impl ChatTemplate {
    /// The conversation rendered as [`ChatTemplate::render`]`(messages, false)` does, cut into
    /// segments: joined, their texts are exactly that string.
    pub fn render_segments(&self, messages: &[Message]) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        let mut rendered = String::new();
        for (i, message) in messages.iter().enumerate() {
            let with_turn = self.render(&messages[..=i], false)?;
            if message.is_assistant() {
                let header = self.render(&messages[..i], true)?;
                let header_part = self.extension(&rendered, &header, i, "its generation prompt")?;
                let reply = self.extension(&header, &with_turn, i, "the assistant reply")?;
                push(&mut segments, header_part, false);
                push(&mut segments, reply, true);
            } else {
                let turn = self.extension(&rendered, &with_turn, i, "the turn")?;
                push(&mut segments, turn, false);
            }
            rendered = with_turn;
        }
        Ok(segments)
    }

    /// What the template writes after an assistant reply (`<|im_end|>` for ChatML, the
    /// `eos_token` for Llama-style templates), trimmed of whitespace: where generation of a
    /// reply stops. `None` when the template writes nothing there.
    pub fn end_of_turn(&self) -> Result<Option<String>> {
        const REPLY: &str = "\u{1}reply\u{1}";
        let messages = [
            Message::new("user", "question"),
            Message::new(super::ASSISTANT, REPLY),
        ];
        let segments = self.render_segments(&messages)?;
        let reply = segments
            .iter()
            .find(|s| s.trainable)
            .map(|s| s.text.as_str())
            .unwrap_or("");
        let after = reply
            .split_once(REPLY)
            .map_or("", |(_, after)| after)
            .trim();
        Ok((!after.is_empty()).then(|| after.to_string()))
    }

    /// The text `longer` adds after `shorter`, or the error saying the template is not
    /// prefix-stable at turn `index`.
    fn extension(&self, shorter: &str, longer: &str, index: usize, what: &str) -> Result<String> {
        longer
            .strip_prefix(shorter)
            .map(str::to_string)
            .ok_or_else(|| {
                self.unsupported(&format!(
                    "rendering message {index} with {what} changes the text before it \
                     (the template is not prefix-stable, so the assistant turns cannot be masked)"
                ))
            })
    }
}

/// Appends `text`, merging it into the previous segment when both have the same mask.
fn push(segments: &mut Vec<Segment>, text: String, trainable: bool) {
    if text.is_empty() {
        return;
    }
    match segments.last_mut() {
        Some(last) if last.trainable == trainable => last.text.push_str(&text),
        _ => segments.push(Segment { text, trainable }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<Message> {
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "2+2="),
            Message::new("assistant", "4"),
            Message::new("user", "and 3+3?"),
            Message::new("assistant", "6"),
        ]
    }

    #[test]
    fn chatml_renders_turns_and_generation_prompt() {
        let t = ChatTemplate::chatml();
        let msgs = &conversation()[..2];
        assert_eq!(
            t.render(msgs, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n"
        );
        assert_eq!(
            t.render(msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn segments_train_only_assistant_replies_and_join_to_the_render() {
        let t = ChatTemplate::chatml();
        let msgs = conversation();
        let segments = t.render_segments(&msgs).unwrap();
        let joined: String = segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(joined, t.render(&msgs, false).unwrap());
        let trainable: Vec<&str> = segments
            .iter()
            .filter(|s| s.trainable)
            .map(|s| s.text.as_str())
            .collect();
        assert_eq!(trainable, ["4<|im_end|>\n", "6<|im_end|>\n"]);
        // The assistant header is context, not a target.
        assert!(segments[0].text.ends_with("<|im_start|>assistant\n"));
        assert!(!segments[0].trainable);
    }

    #[test]
    fn jinja_template_with_bos_eos_and_python_methods() {
        // The shape of Llama-2/Mistral-style HF templates: bos, [INST] wrapping, eos after replies.
        let source = "{{ bos_token }}{% for message in messages %}\
            {% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}\
            {% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}\
            {% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}\
            {% endfor %}";
        let t = ChatTemplate::from_source(source)
            .unwrap()
            .with_special_tokens("<s>", "</s>");
        let msgs = vec![
            Message::new("user", "  hi "),
            Message::new("assistant", "hello"),
        ];
        assert_eq!(
            t.render(&msgs, false).unwrap(),
            "<s>[INST] hi [/INST]hello</s>"
        );
        let segments = t.render_segments(&msgs).unwrap();
        assert_eq!(
            segments,
            vec![
                Segment {
                    text: "<s>[INST] hi [/INST]".into(),
                    trainable: false
                },
                Segment {
                    text: "hello</s>".into(),
                    trainable: true
                },
            ]
        );
        let err = t
            .render(&[Message::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Only user and assistant roles are supported!"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_features_are_errors_naming_them() {
        let err = ChatTemplate::from_source("{{ strftime_now('%Y') }}")
            .unwrap()
            .render(&[], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported function") && err.contains("strftime_now"),
            "{err}"
        );
        let err = ChatTemplate::from_source("{{ messages | frobnicate }}")
            .and_then(|t| t.render(&[], false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("frobnicate"), "{err}");
        let err = ChatTemplate::from_source("{% for m in messages %}{{ m.content")
            .unwrap_err()
            .to_string();
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn generation_tags_are_accepted() {
        // HF's assistant-mask markers: the masks are computed here, so the tags are dropped.
        let source = "{% for m in messages %}{% if m.role == 'assistant' %}\
            {% generation %}{{ m.content }};{% endgeneration %}\
            {% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}";
        let t = ChatTemplate::from_source(source).unwrap();
        let segments = t
            .render_segments(&[Message::new("user", "q"), Message::new("assistant", "a")])
            .unwrap();
        assert_eq!(
            segments[1],
            Segment {
                text: "a;".into(),
                trainable: true
            }
        );
    }

    #[test]
    fn a_template_that_rewrites_earlier_turns_is_refused() {
        // Prints the number of messages first, so every longer render changes the start.
        let t = ChatTemplate::from_source(
            "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}",
        )
        .unwrap();
        let err = t
            .render_segments(&[Message::new("user", "q"), Message::new("assistant", "a")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not prefix-stable") && err.contains("message"),
            "{err}"
        );
    }

    #[test]
    fn end_of_turn_is_what_follows_a_reply() {
        assert_eq!(
            ChatTemplate::chatml().end_of_turn().unwrap().as_deref(),
            Some("<|im_end|>")
        );
        let llama = ChatTemplate::from_source(
            "{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]\
             {% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
        )
        .unwrap()
        .with_special_tokens("<s>", "</s>");
        assert_eq!(llama.end_of_turn().unwrap().as_deref(), Some("</s>"));
    }

    #[test]
    fn template_file_errors_name_the_file() {
        let err = ChatTemplate::from_file(std::path::Path::new("/nonexistent/chat.jinja"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/chat.jinja"), "{err}");
    }
}
