//! [`ChatExamples`]: conversations in the `messages` format (one JSON object per line,
//! `{"messages": [{"role": "user", "content": ".."}, {"role": "assistant", ..}, ..]}`, as HF
//! chat datasets carry them) rendered once through a [`ChatTemplate`], for `trainer("sft")`
//! (the segments, trained on the assistant turns only), for tokenizer training (the rendered
//! texts) and for anything that wants prompt/answer pairs (everything before the last reply →
//! the last reply).

use std::path::Path;

use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Error, Example, ExampleSource, Result, TextSource};

use super::{ChatTemplate, Message, Segment};

pub struct ChatExamples {
    name: String,
    conversations: Vec<Vec<Message>>,
    segments: Vec<Vec<Segment>>,
    /// Everything before the last assistant reply, with the generation prompt.
    prompts: Vec<String>,
    texts: Vec<String>,
}

/// The messages of one JSONL record; `at` names the file and line in errors.
fn parse_record(line: &str, at: &str) -> Result<Vec<Message>> {
    let bad = |why: String| Error::Data(format!("{at}: {why}"));
    let value: Value =
        serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let list = value
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `messages` array".into()))?;
    let messages = list
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |key: &str| {
                m.get(key)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("message {i}: `{key}` missing or not a string")))
            };
            Ok(Message::new(field("role")?, field("content")?))
        })
        .collect::<Result<Vec<_>>>()?;
    if !messages.iter().any(Message::is_assistant) {
        return Err(bad(
            "no assistant message: nothing to train on (roles are \"system\", \"user\", \"assistant\")"
                .into(),
        ));
    }
    Ok(messages)
}

impl ChatExamples {
    /// Conversations already parsed, rendered with `template`.
    pub fn new(
        name: String,
        conversations: Vec<Vec<Message>>,
        template: &ChatTemplate,
    ) -> Result<ChatExamples> {
        if conversations.is_empty() {
            return Err(Error::Data(format!("{name}: no conversations")));
        }
        let (mut segments, mut prompts, mut texts) = (Vec::new(), Vec::new(), Vec::new());
        for (i, messages) in conversations.iter().enumerate() {
            let context = |e: Error| Error::Data(format!("{name}: conversation {}: {e}", i + 1));
            let cut = segments_and_text(template, messages).map_err(context)?;
            let last = messages
                .iter()
                .rposition(Message::is_assistant)
                .unwrap_or(0);
            prompts.push(template.render(&messages[..last], true).map_err(context)?);
            segments.push(cut.0);
            texts.push(cut.1);
        }
        Ok(ChatExamples {
            name,
            conversations,
            segments,
            prompts,
            texts,
        })
    }

    /// JSONL lines (`(line number, text)`), blank lines skipped; errors name `name` and the line.
    pub fn from_lines(
        name: &str,
        lines: impl Iterator<Item = (usize, String)>,
        template: &ChatTemplate,
    ) -> Result<ChatExamples> {
        let conversations = lines
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| parse_record(&line, &format!("{name}: line {n}")))
            .collect::<Result<Vec<_>>>()?;
        ChatExamples::new(name.to_string(), conversations, template)
    }

    /// A `messages` JSONL file.
    pub fn open(path: &Path, template: &ChatTemplate) -> Result<ChatExamples> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.to_string()));
        ChatExamples::from_lines(&path.display().to_string(), lines, template)
    }

    /// The documents of `source`, each one `messages` record (a built-in chat corpus).
    pub fn from_documents(
        source: &dyn TextSource,
        template: &ChatTemplate,
    ) -> Result<ChatExamples> {
        let lines = source
            .documents()
            .enumerate()
            .map(|(i, doc)| doc.map(|d| (i + 1, d)))
            .collect::<Result<Vec<_>>>()?;
        ChatExamples::from_lines(&source.name(), lines.into_iter(), template)
    }

    pub fn conversation(&self, index: usize) -> &[Message] {
        &self.conversations[index]
    }
}

fn segments_and_text(
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<(Vec<Segment>, String)> {
    let segments = template.render_segments(messages)?;
    let text = segments.iter().map(|s| s.text.as_str()).collect();
    Ok((segments, text))
}

impl ExampleSource for ChatExamples {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.conversations.len()
    }
    fn get(&self, index: usize) -> Example {
        let answer = self.conversations[index]
            .iter()
            .rev()
            .find(|m| m.is_assistant())
            .map(|m| m.content.clone())
            .unwrap_or_default();
        Example {
            prompt: self.prompts[index].clone(),
            answer,
            rejected: None,
        }
    }
    fn segments(&self, index: usize) -> Option<Vec<Segment>> {
        Some(self.segments[index].clone())
    }
}

impl TextSource for ChatExamples {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(self.texts.iter().cloned().map(Ok))
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(self.texts.iter().map(|t| t.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_TURNS: &str = r#"{"messages": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3="}, {"role": "assistant", "content": "6"}]}"#;

    #[test]
    fn renders_segments_prompt_and_answer() {
        let lines = [(1, TWO_TURNS.to_string()), (2, String::new())];
        let chat =
            ChatExamples::from_lines("chat.jsonl", lines.into_iter(), &ChatTemplate::chatml())
                .unwrap();
        assert_eq!(ExampleSource::len(&chat), 1);
        let e = chat.get(0);
        assert_eq!(e.answer, "6");
        assert!(
            e.prompt
                .ends_with("3+3=<|im_end|>\n<|im_start|>assistant\n"),
            "{}",
            e.prompt
        );
        let trained: Vec<String> = chat
            .segments(0)
            .unwrap()
            .into_iter()
            .filter(|s| s.trainable)
            .map(|s| s.text)
            .collect();
        assert_eq!(trained, ["4<|im_end|>\n", "6<|im_end|>\n"]);
        let doc = chat.documents().next().unwrap().unwrap();
        assert!(doc.starts_with("<|im_start|>user\n2+2=") && doc.ends_with("6<|im_end|>\n"));
    }

    #[test]
    fn bad_records_name_the_file_line_and_cause() {
        for (line, cause) in [
            ("not json", "not a JSON object"),
            (r#"{"text": "x"}"#, "no `messages` array"),
            (
                r#"{"messages": [{"role": "user"}]}"#,
                "message 0: `content`",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
                "no assistant message",
            ),
        ] {
            let lines = [(1, TWO_TURNS.to_string()), (2, line.to_string())];
            let err =
                ChatExamples::from_lines("c.jsonl", lines.into_iter(), &ChatTemplate::chatml())
                    .err()
                    .unwrap()
                    .to_string();
            assert!(
                err.contains("c.jsonl: line 2") && err.contains(cause),
                "{err}"
            );
        }
    }
}
