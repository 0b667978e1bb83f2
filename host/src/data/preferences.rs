//! [`PreferenceFile`]: preference pairs from a JSONL file, one object per non-blank line with
//! string fields `prompt`, `chosen` and `rejected` (other fields are ignored). The whole file is
//! read and checked when opened: a malformed line is an error naming the file and line number.
//!
//! As an `ExampleSource` each pair is an `Example` with `answer` = `chosen`; as a `TextSource`
//! each pair is the document `prompt + chosen` (what a tokenizer or an SFT warm-up would see).

use std::path::{Path, PathBuf};

use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Error, Example, ExampleSource, Result, TextSource};

use llmlab_plugin_api::data::join;

#[derive(Debug, Clone)]
pub struct PreferenceFile {
    path: PathBuf,
    pairs: Vec<Example>,
}

impl PreferenceFile {
    pub fn open(path: impl Into<PathBuf>) -> Result<PreferenceFile> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let pairs = parse(&path, &text)?;
        Ok(PreferenceFile { path, pairs })
    }
}

/// Parses the JSONL `text` of `path` (named in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Example>> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), i + 1);
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Error::Data(format!("{}: not valid JSON: {e}", at())))?;
        let Value::Object(record) = value else {
            return Err(Error::Data(format!(
                "{}: expected a JSON object with `prompt`, `chosen` and `rejected`",
                at()
            )));
        };
        let field = |name: &str| match record.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Error::Data(format!(
                "{}: `{name}` must be a string, found {other}",
                at()
            ))),
            None => Err(Error::Data(format!("{}: missing field `{name}`", at()))),
        };
        let (prompt, chosen, rejected) = (field("prompt")?, field("chosen")?, field("rejected")?);
        if chosen == rejected {
            return Err(Error::Data(format!(
                "{}: `chosen` and `rejected` are the same answer",
                at()
            )));
        }
        pairs.push(Example {
            prompt,
            answer: chosen,
            rejected: Some(rejected),
        });
    }
    if pairs.is_empty() {
        return Err(Error::Data(format!(
            "{}: no preference pairs (expected JSONL lines with `prompt`, `chosen`, `rejected`)",
            path.display()
        )));
    }
    Ok(pairs)
}

impl ExampleSource for PreferenceFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn len(&self) -> usize {
        self.pairs.len()
    }
    fn get(&self, index: usize) -> Example {
        self.pairs[index % self.pairs.len()].clone()
    }
}

impl TextSource for PreferenceFile {
    fn name(&self) -> String {
        ExampleSource::name(self)
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(self.pairs.iter().map(|e| Ok(join(&e.prompt, &e.answer))))
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(
            self.pairs
                .iter()
                .map(|e| e.prompt.len() + e.answer.len() + 1)
                .sum::<usize>() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_and_skips_blank_lines() {
        let text = "{\"prompt\":\"1+1=\",\"chosen\":\"2\",\"rejected\":\"3\",\"id\":7}\n\n\
                    {\"prompt\":\"2+2=\",\"chosen\":\"4\",\"rejected\":\"5\"}\n";
        let pairs = parse(Path::new("p.jsonl"), text).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].answer, "4");
        assert_eq!(pairs[1].rejected.as_deref(), Some("5"));
    }

    #[test]
    fn malformed_lines_name_file_line_and_cause() {
        let good = "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n";
        for (bad, cause) in [
            (
                "{\"prompt\":\"a\",\"chosen\":\"b\"}",
                "missing field `rejected`",
            ),
            (
                "{\"prompt\":1,\"chosen\":\"b\",\"rejected\":\"c\"}",
                "`prompt` must be a string",
            ),
            ("not json", "not valid JSON"),
            ("[1, 2]", "expected a JSON object"),
            (
                "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"b\"}",
                "the same answer",
            ),
        ] {
            let text = format!("{good}\n{bad}\n");
            let err = parse(Path::new("p.jsonl"), &text).unwrap_err().to_string();
            assert!(err.contains("p.jsonl: line 3"), "{err}");
            assert!(err.contains(cause), "{err}");
        }
        let err = parse(Path::new("e.jsonl"), "\n").unwrap_err().to_string();
        assert!(err.contains("no preference pairs"), "{err}");
    }
}
