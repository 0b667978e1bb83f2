//! `corpus("chat", #{ n, turns, digits, seed })`: multi-turn conversations made from the task
//! generators, for chat SFT. Each document is one conversation as a `messages` JSON line
//! (`{"messages": [{"role": "system", ..}, {"role": "user", ..}, {"role": "assistant", ..}, ..]}`,
//! the format HF chat datasets use), which `chat_data(corpus("chat"))` renders through a chat
//! template. A conversation has an optional system message and 1 to `turns` exchanges; each
//! user turn asks one task (arithmetic, sort, copy or reverse, chosen at random) in one of a
//! few phrasings, and the assistant answers with the task's exact answer.

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Error, ExampleSource, Result, TextSource};

use crate::tasks::{TaskKind, Tasks};

const SYSTEM_PROMPTS: &[&str] = &[
    "You are a helpful assistant. Answer with the result only.",
    "You solve small puzzles exactly.",
];

/// How a user asks for a task's prompt: the prompt itself, or wrapped in words.
const PHRASINGS: &[(&str, &str)] = &[("", ""), ("Please solve: ", ""), ("", " What is it?")];

const KINDS: [TaskKind; 4] = [
    TaskKind::Arithmetic,
    TaskKind::Sort,
    TaskKind::Copy,
    TaskKind::Reverse,
];

/// Generated conversations, each a `messages` JSON document.
pub struct ChatConversations {
    name: String,
    documents: Vec<String>,
}

impl ChatConversations {
    pub fn generate(n: usize, turns: usize, digits: usize, seed: u64) -> Result<ChatConversations> {
        if n == 0 || turns == 0 {
            return Err(Error::Data(format!(
                "corpus(\"chat\"): n and turns must be at least 1 (got n = {n}, turns = {turns})"
            )));
        }
        // One pool of examples per task, enough for every turn of every conversation.
        let pools = KINDS
            .iter()
            .enumerate()
            .map(|(i, &kind)| Tasks::generate(kind, n * turns, digits, seed ^ (i as u64 + 1)))
            .collect::<Result<Vec<_>>>()?;
        let mut rng = SplitMix64::new(seed);
        let mut used = [0usize; 4];
        let documents = (0..n)
            .map(|_| {
                let mut messages = Vec::new();
                if rng.below(2) == 0 {
                    let system = SYSTEM_PROMPTS[rng.below(SYSTEM_PROMPTS.len())];
                    messages.push(json!({ "role": "system", "content": system }));
                }
                for _ in 0..1 + rng.below(turns) {
                    let k = rng.below(KINDS.len());
                    let example = pools[k].get(used[k]);
                    used[k] += 1;
                    let (before, after) = PHRASINGS[rng.below(PHRASINGS.len())];
                    let ask = format!("{before}{}{after}", example.prompt);
                    messages.push(json!({ "role": "user", "content": ask }));
                    messages.push(json!({ "role": "assistant", "content": example.answer }));
                }
                json!({ "messages": messages }).to_string()
            })
            .collect();
        Ok(ChatConversations {
            name: format!("chat(n={n}, turns={turns}, digits={digits}, seed={seed})"),
            documents,
        })
    }
}

impl TextSource for ChatConversations {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(self.documents.iter().cloned().map(Ok))
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(self.documents.iter().map(|d| d.len() as u64 + 1).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::Value;

    #[test]
    fn conversations_are_messages_whose_answers_check() {
        let chat = ChatConversations::generate(50, 3, 2, 7).unwrap();
        let mut multi_turn = 0;
        for doc in chat.documents() {
            let v: Value = llmlab_plugin_api::serde_json::from_str(&doc.unwrap()).unwrap();
            let messages = v["messages"].as_array().unwrap();
            let turns: Vec<&Value> = messages.iter().filter(|m| m["role"] != "system").collect();
            assert!(turns.len() >= 2 && turns.len() <= 6 && turns.len().is_multiple_of(2));
            multi_turn += (turns.len() > 2) as usize;
            for pair in turns.chunks(2) {
                assert_eq!(pair[0]["role"], "user");
                assert_eq!(pair[1]["role"], "assistant");
                let ask = pair[0]["content"].as_str().unwrap();
                let prompt = ask
                    .trim_start_matches("Please solve: ")
                    .trim_end_matches(" What is it?");
                let kind = TaskKind::of_prompt(prompt).unwrap();
                let solved = Tasks::generate(kind, 1, 2, 0)
                    .unwrap()
                    .solve(prompt)
                    .unwrap();
                assert_eq!(pair[1]["content"], solved.as_str(), "{ask}");
            }
        }
        assert!(
            multi_turn > 10,
            "{multi_turn} of 50 conversations have several turns"
        );
        // Same seed, same conversations.
        let again = ChatConversations::generate(50, 3, 2, 7).unwrap();
        assert!(chat
            .documents()
            .zip(again.documents())
            .all(|(a, b)| a.unwrap() == b.unwrap()));
    }

    #[test]
    fn zero_sizes_are_refused_naming_the_key() {
        let err = ChatConversations::generate(0, 3, 2, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("corpus(\"chat\")") && err.contains("n = 0"),
            "{err}"
        );
    }
}
