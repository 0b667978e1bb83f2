//! The suite's token-classification task `roles` (CoNLL-like): every word of one or two
//! `stories` sentences tagged with its role in the event, which the sentence template knows:
//! who acts (`WHO`), the other person (`FRIEND`), where (`WHERE`), what (`WHAT`: an object,
//! with its look word first), the feeling (`FEELING`); every other word and the punctuation are
//! `O`. Tags are BIO: an entity's first word `B-`, the words after it `I-`.
//!
//! The tag is the word's role, not the word: a name is `WHO` or `FRIEND` by the sentence's
//! structure, `happy` is a `FEELING` after `was` and `O` before `little`, and passive forms put
//! the object before the actor. Words are split on spaces with punctuation as words of its own,
//! as CoNLL files have them.

use llmlab_plugin_api::{Label, LabelledText, TaggedWords};

use crate::glue::{class_words, Draw};

/// The tags in index order (`O` first).
pub const ROLE_LABELS: [&str; 7] = [
    "O",
    "B-WHO",
    "B-FRIEND",
    "B-WHERE",
    "B-WHAT",
    "I-WHAT",
    "B-FEELING",
];

/// The grammar's sentence forms, words space-separated; `{class:ROLE}` is a slot of a word
/// class with its role, `{class}` a slot without one.
const ROLE_TEMPLATES: &[&str] = &[
    "Once upon a time , there was a {trait} little {kind} named {name:WHO} .",
    "One day , {name:WHO} went to the {place:WHERE} .",
    "{who:WHO} went to the {place:WHERE} one day .",
    "{who:WHO} found a {look:WHAT} {object:WHAT} near the {place:WHERE} .",
    "Near the {place:WHERE} , {who:WHO} found a {look:WHAT} {object:WHAT} .",
    "A {look:WHAT} {object:WHAT} was found by {who:WHO} near the {place:WHERE} .",
    "{who:WHO} met a {trait} {kind} called {name:FRIEND} .",
    "{who:WHO} met {name:FRIEND} , a {trait} {kind} .",
    "Then it started to {weather} .",
    "{who:WHO} felt {feeling:FEELING} because of the {object:WHAT} .",
    "The {object:WHAT} made {who:WHO} feel {feeling:FEELING} .",
    "{pronoun:WHO} wanted to see the {place:WHERE} again .",
    "{who:WHO} and {name:FRIEND} shared the {object:WHAT} .",
    "The {object:WHAT} was shared by {who:WHO} and {name:FRIEND} .",
    "In the end , {name:WHO} was {feeling:FEELING} .",
];

fn tag_index(tag: &str) -> usize {
    ROLE_LABELS
        .iter()
        .position(|t| *t == tag)
        .unwrap_or_else(|| unreachable!("role tag {tag}"))
}

/// One sentence of a random form: its words and their tags.
fn sentence(d: &mut Draw, words: &mut Vec<String>, tags: &mut Vec<usize>) {
    let template = ROLE_TEMPLATES[d.below(ROLE_TEMPLATES.len())];
    let mut previous_role: Option<&str> = None;
    for token in template.split(' ') {
        let slot = token.strip_prefix('{').and_then(|t| t.strip_suffix('}'));
        let (word, role) = match slot {
            Some(slot) => {
                let (class, role) = match slot.split_once(':') {
                    Some((class, role)) => (class, Some(role)),
                    None => (slot, None),
                };
                (d.pick(&class_words(class)).to_string(), role)
            }
            None => (token.to_string(), None),
        };
        let tag = match role {
            None => "O".to_string(),
            Some(role) if previous_role == Some(role) => format!("I-{role}"),
            Some(role) => format!("B-{role}"),
        };
        previous_role = role;
        words.push(word);
        tags.push(tag_index(&tag));
    }
}

/// The sentence as written: words joined by spaces, no space before punctuation.
pub fn text_of(words: &[String]) -> String {
    let mut text = String::new();
    for w in words {
        if !text.is_empty() && !matches!(w.as_str(), "." | ",") {
            text.push(' ');
        }
        text.push_str(w);
    }
    text
}

/// One example: one or two sentences, tagged.
pub(crate) fn roles(d: &mut Draw) -> (LabelledText, TaggedWords) {
    let (mut words, mut tags) = (Vec::new(), Vec::new());
    for _ in 0..1 + d.below(2) {
        sentence(d, &mut words, &mut tags);
    }
    let text = LabelledText {
        text: text_of(&words),
        text_pair: None,
        label: Label::Class(0),
    };
    (text, TaggedWords { words, tags })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glue::is_grammatical;
    use llmlab_plugin_api::rng::SplitMix64;

    #[test]
    fn tags_follow_the_templates_roles() {
        let mut d = Draw(SplitMix64::new(4));
        let mut seen = [0usize; ROLE_LABELS.len()];
        for _ in 0..400 {
            let (text, tagged) = roles(&mut d);
            assert_eq!(tagged.words.len(), tagged.tags.len());
            assert_eq!(text_of(&tagged.words), text.text);
            for (i, (w, &t)) in tagged.words.iter().zip(&tagged.tags).enumerate() {
                seen[t] += 1;
                let tag = ROLE_LABELS[t];
                // Punctuation and template words are O; I- only continues its own entity.
                if matches!(w.as_str(), "." | "," | "the" | "went" | "found") {
                    assert_eq!(tag, "O", "{w} in {}", text.text);
                }
                if let Some(role) = tag.strip_prefix("I-") {
                    assert!(i > 0 && ROLE_LABELS[tagged.tags[i - 1]].ends_with(role));
                }
                if tag == "B-WHERE" {
                    assert!(class_words("place").contains(&w.as_str()), "{w}");
                }
                if tag == "B-FEELING" {
                    assert!(class_words("feeling").contains(&w.as_str()), "{w}");
                }
            }
            // The stories grammar's own single-sentence forms stay grammatical.
            if !text.text.contains(". ") && !text.text.contains(" by ") {
                let plain = text.text.starts_with("One day")
                    || text.text.starts_with("Once upon")
                    || text.text.starts_with("In the end")
                    || text.text.starts_with("Then it");
                if plain {
                    assert!(is_grammatical(&text.text), "{}", text.text);
                }
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "every tag occurs: {seen:?}");
        // A name is the actor or the friend by its place in the sentence.
        let mut d = Draw(SplitMix64::new(5));
        let mut name_roles = std::collections::HashSet::new();
        for _ in 0..300 {
            let (_, tagged) = roles(&mut d);
            for (w, &t) in tagged.words.iter().zip(&tagged.tags) {
                if w == "Tom" {
                    name_roles.insert(ROLE_LABELS[t]);
                }
            }
        }
        assert!(name_roles.contains("B-WHO") && name_roles.contains("B-FRIEND"));
    }
}
