//! Filters applied to generated text before it is scored, as lm-evaluation-harness chains them:
//! per sample (`regex` extraction, `first_number`, `trim`), then across a document's repeats
//! (`majority_vote`: the most common filtered answer, self-consistency style).

use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::{Error, Result};

/// A filter as written in a task file: `{"regex": "answer: (\\d+)"}`, `"first_number"`,
/// `"trim"`, `"majority_vote"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    crate = "llmlab_plugin_api::serde",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum FilterSpec {
    /// The first match of the pattern: its first capture group if it has one, else the whole
    /// match; no match gives the empty string.
    Regex(String),
    /// The first integer or decimal number in the text (with its sign).
    FirstNumber,
    Trim,
    MajorityVote,
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub enum Filter {
    Regex(regex::Regex),
    FirstNumber,
    Trim,
    MajorityVote,
}

impl Filter {
    pub fn compile(what: &str, spec: &FilterSpec) -> Result<Filter> {
        Ok(match spec {
            FilterSpec::Regex(pattern) => {
                Filter::Regex(regex::Regex::new(pattern).map_err(|e| {
                    Error::Data(format!(
                        "{what}: filter regex {pattern:?} does not compile: {e}"
                    ))
                })?)
            }
            FilterSpec::FirstNumber => Filter::FirstNumber,
            FilterSpec::Trim => Filter::Trim,
            FilterSpec::MajorityVote => Filter::MajorityVote,
        })
    }
}

/// Applies the per-sample filters in order (majority vote is skipped here).
pub fn filter_sample(filters: &[Filter], text: &str) -> String {
    let mut out = text.to_string();
    for filter in filters {
        out = match filter {
            Filter::Regex(re) => match re.captures(&out) {
                Some(c) => c
                    .get(1)
                    .or_else(|| c.get(0))
                    .map_or(String::new(), |m| m.as_str().to_string()),
                None => String::new(),
            },
            Filter::FirstNumber => first_number(&out).unwrap_or_default(),
            Filter::Trim => out.trim().to_string(),
            Filter::MajorityVote => out,
        };
    }
    out
}

/// The document's answer from its filtered samples: the most common one under `majority_vote`
/// (ties go to the one seen first), else the first sample's.
pub fn document_answer(filters: &[Filter], filtered: &[String]) -> String {
    if !filters.iter().any(|f| matches!(f, Filter::MajorityVote)) {
        return filtered.first().cloned().unwrap_or_default();
    }
    let mut best: Option<(&String, usize)> = None;
    for candidate in filtered {
        let votes = filtered.iter().filter(|f| *f == candidate).count();
        if best.is_none_or(|(_, b)| votes > b) {
            best = Some((candidate, votes));
        }
    }
    best.map(|(s, _)| s.clone()).unwrap_or_default()
}

fn first_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let start = (0..bytes.len()).find(|&i| {
        bytes[i].is_ascii_digit()
            || (bytes[i] == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
    })?;
    let mut end = start + 1;
    let mut seen_point = false;
    while end < bytes.len() {
        match bytes[end] {
            b'0'..=b'9' => end += 1,
            b'.' if !seen_point && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) => {
                seen_point = true;
                end += 1;
            }
            _ => break,
        }
    }
    Some(text[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_first_number_and_majority_vote() {
        let regex = Filter::compile("t", &FilterSpec::Regex(r"answer is (\d+)".into())).unwrap();
        assert_eq!(
            filter_sample(std::slice::from_ref(&regex), "so the answer is 42."),
            "42"
        );
        assert_eq!(filter_sample(&[regex], "no idea"), "");
        let number = [Filter::FirstNumber];
        assert_eq!(filter_sample(&number, "x = -3.5 or 7"), "-3.5");
        assert_eq!(filter_sample(&number, "total: 1,200"), "1");
        assert_eq!(filter_sample(&number, "none"), "");
        let vote = [Filter::FirstNumber, Filter::MajorityVote];
        let answers: Vec<String> = ["7", "9", "9", "7", "9"].map(String::from).to_vec();
        assert_eq!(document_answer(&vote, &answers), "9");
        assert_eq!(
            document_answer(&number, &answers),
            "7",
            "no vote: first sample"
        );
        let err = Filter::compile("task \"x\"", &FilterSpec::Regex("(".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("task \"x\"") && err.contains("does not compile"),
            "{err}"
        );
    }
}
