//! `corpus("stories")`: short stories from a seeded probabilistic grammar whose exact
//! probabilities are known, so the best achievable loss of a model trained on them is known too.
//!
//! Every document is a derivation: a sentence count, then a sequence of weighted choices (names,
//! places, objects, templates). The grammar is **unambiguous** — at every choice point the options
//! differ in their first word (or, for the two quote templates, in the speaker, who is never the
//! same character), and which choice points come next depends only on earlier choices — so the
//! text determines its derivation, and `p(document)` is the product of the choice probabilities.
//! Summing `-ln p` over documents and dividing by their tokens gives the entropy floor in nats per
//! token of any tokenization (the end-of-text token is predictable from the sentence count).

use std::sync::Arc;

use llmlab_plugin_api::{Result, TextSource};

use super::rng::SplitMix64;

/// Zipf-weighted options: the k-th most common gets weight 1/(k+1).
struct Choices {
    words: &'static [&'static str],
}

const NAMES_FEMININE: Choices = Choices {
    words: &[
        "Lily", "Mia", "Sara", "Anna", "Zoe", "Ella", "Lucy", "Ruby", "Ivy", "Rose", "Nora", "Maya",
    ],
};
const NAMES_MASCULINE: Choices = Choices {
    words: &[
        "Tom", "Ben", "Max", "Leo", "Sam", "Jack", "Finn", "Noah", "Owen", "Kai", "Eli", "Hugo",
    ],
};
const TRAITS: Choices = Choices {
    words: &[
        "kind", "brave", "shy", "curious", "happy", "clever", "sleepy", "silly", "gentle", "proud",
        "tiny", "lonely", "funny", "busy", "quiet",
    ],
};
const KINDS: Choices = Choices {
    words: &[
        "rabbit", "fox", "bear", "cat", "dog", "bird", "mouse", "frog", "owl", "turtle", "duck",
        "lion", "horse", "pig", "squirrel", "deer", "goat", "bee",
    ],
};
const PLACES: Choices = Choices {
    words: &[
        "park", "forest", "river", "garden", "beach", "farm", "hill", "market", "school", "cave",
        "lake", "village", "meadow", "castle", "library", "bakery", "pond", "field",
    ],
};
const OBJECTS: Choices = Choices {
    words: &[
        "ball", "kite", "hat", "box", "shell", "key", "book", "cake", "flower", "stone", "map",
        "drum", "boat", "cup", "rope", "lamp", "apple", "feather", "bell", "basket",
    ],
};
const LOOKS: Choices = Choices {
    words: &[
        "red", "blue", "green", "yellow", "shiny", "old", "big", "small", "soft", "strange",
        "golden", "purple",
    ],
};
const FEELINGS: Choices = Choices {
    words: &[
        "happy",
        "sad",
        "scared",
        "excited",
        "tired",
        "angry",
        "surprised",
        "proud",
        "calm",
        "worried",
    ],
};
const WEATHER: Choices = Choices {
    words: &["rain", "snow", "thunder", "hail"],
};
const QUOTES: Choices = Choices {
    words: &[
        "Let us play together",
        "I am not afraid",
        "Where are you going",
        "This is the best day ever",
        "Can you help me",
        "I want to go home",
        "Look at this",
        "Thank you, friend",
        "We did it",
        "What a surprise",
    ],
};

/// Sentence counts between the opening and the closing sentence, uniformly.
const MIDDLE_SENTENCES: std::ops::RangeInclusive<u64> = 3..=8;

/// Draws choices and keeps the derivation's log-probability.
struct Derivation {
    rng: SplitMix64,
    nats: f64,
}

impl Derivation {
    /// Picks from `options` with Zipf weights, skipping `exclude`.
    fn pick(&mut self, options: &Choices, exclude: Option<&str>) -> &'static str {
        let weight = |k: usize| 1.0 / (k as f64 + 1.0);
        let allowed = |w: &&str| Some(*w) != exclude;
        let total: f64 = options
            .words
            .iter()
            .enumerate()
            .filter(|(_, w)| allowed(w))
            .map(|(k, _)| weight(k))
            .sum();
        let mut target = self.rng.next_unit() * total;
        let mut last = options.words[0];
        for (k, word) in options.words.iter().enumerate().filter(|(_, w)| allowed(w)) {
            last = word;
            target -= weight(k);
            if target <= 0.0 {
                self.nats -= (weight(k) / total).ln();
                return word;
            }
        }
        let k = options.words.iter().position(|w| *w == last).unwrap_or(0);
        self.nats -= (weight(k) / total).ln();
        last
    }

    /// One of `n` equally likely alternatives.
    fn uniform(&mut self, n: u64) -> u64 {
        self.nats += (n as f64).ln();
        self.rng.below(n)
    }

    /// A weighted template choice among those currently allowed.
    fn template(&mut self, weights: &[(Template, f64)]) -> Template {
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        let mut target = self.rng.next_unit() * total;
        for &(template, w) in weights {
            target -= w;
            if target <= 0.0 {
                self.nats -= (w / total).ln();
                return template;
            }
        }
        let (template, w) = weights[weights.len() - 1];
        self.nats -= (w / total).ln();
        template
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Template {
    WentTo,
    Found,
    Said,
    Met,
    Weather,
    Felt,
    Wanted,
    Shared,
    FriendSaid,
}

/// One story and `-ln p(story)` in nats.
pub fn story(rng: SplitMix64) -> (String, f64) {
    let mut d = Derivation { rng, nats: 0.0 };
    let feminine = d.uniform(2) == 0;
    let (names, pronoun) = if feminine {
        (&NAMES_FEMININE, "She")
    } else {
        (&NAMES_MASCULINE, "He")
    };
    let hero = d.pick(names, None);
    let mut text = format!(
        "Once upon a time, there was a {} little {} named {hero}.",
        d.pick(&TRAITS, None),
        d.pick(&KINDS, None)
    );
    let middle =
        MIDDLE_SENTENCES.start() + d.uniform(MIDDLE_SENTENCES.end() - MIDDLE_SENTENCES.start() + 1);
    let mut friend: Option<&'static str> = None;
    for _ in 0..middle {
        let mut weights = vec![
            (Template::WentTo, 3.0),
            (Template::Found, 3.0),
            (Template::Said, 2.0),
            (Template::Met, 2.0),
            (Template::Weather, 1.0),
            (Template::Felt, 2.0),
            (Template::Wanted, 1.0),
        ];
        if friend.is_some() {
            weights.extend([(Template::Shared, 2.0), (Template::FriendSaid, 2.0)]);
        }
        // The subject: the hero's name or pronoun, a choice of its own (first word differs).
        let subject = |d: &mut Derivation| if d.uniform(3) == 0 { pronoun } else { hero };
        let sentence = match d.template(&weights) {
            Template::WentTo => format!("One day, {} went to the {}.", hero, d.pick(&PLACES, None)),
            Template::Found => {
                let who = subject(&mut d);
                format!(
                    "{who} found a {} {} near the {}.",
                    d.pick(&LOOKS, None),
                    d.pick(&OBJECTS, None),
                    d.pick(&PLACES, None)
                )
            }
            Template::Said => format!("\"{},\" said {hero}.", d.pick(&QUOTES, None)),
            Template::Met => {
                let who = subject(&mut d);
                let look = d.pick(&TRAITS, None);
                let kind = d.pick(&KINDS, None);
                let names = if d.uniform(2) == 0 {
                    &NAMES_FEMININE
                } else {
                    &NAMES_MASCULINE
                };
                let name = d.pick(names, Some(hero));
                friend = Some(name);
                format!("{who} met a {look} {kind} called {name}.")
            }
            Template::Weather => format!("Then it started to {}.", d.pick(&WEATHER, None)),
            Template::Felt => {
                let who = subject(&mut d);
                format!(
                    "{who} felt {} because of the {}.",
                    d.pick(&FEELINGS, None),
                    d.pick(&OBJECTS, None)
                )
            }
            Template::Wanted => format!(
                "{pronoun} wanted to see the {} again.",
                d.pick(&PLACES, None)
            ),
            Template::Shared => {
                let who = subject(&mut d);
                format!(
                    "{who} and {} shared the {}.",
                    friend.unwrap_or(hero),
                    d.pick(&OBJECTS, None)
                )
            }
            Template::FriendSaid => format!(
                "\"{},\" said {}.",
                d.pick(&QUOTES, None),
                friend.unwrap_or(hero)
            ),
        };
        text.push(' ');
        text.push_str(&sentence);
    }
    let ending = match d.uniform(3) {
        0 => format!("In the end, {hero} was {}.", d.pick(&FEELINGS, None)),
        1 => "And they all lived happily ever after.".to_string(),
        _ => "The end.".to_string(),
    };
    text.push(' ');
    text.push_str(&ending);
    (text, d.nats)
}

/// A generated stories corpus: documents and their exact `-ln p`.
pub struct Stories {
    pub seed: u64,
    documents: Arc<Vec<String>>,
    nats: Arc<Vec<f64>>,
}

impl Stories {
    /// Stories from `seed` until at least `bytes` of text.
    pub fn generate(bytes: usize, seed: u64) -> Stories {
        let mut rng = SplitMix64::new(seed);
        let (mut documents, mut nats, mut total) = (Vec::new(), Vec::new(), 0);
        while total < bytes {
            // Each story has its own stream, so story k is the same whatever `bytes` is.
            let (text, n) = story(SplitMix64::new(rng.next_u64()));
            total += text.len();
            documents.push(text);
            nats.push(n);
        }
        Stories {
            seed,
            documents: Arc::new(documents),
            nats: Arc::new(nats),
        }
    }

    pub fn len(&self) -> usize {
        self.documents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    pub fn total_bytes(&self) -> usize {
        self.documents.iter().map(String::len).sum()
    }

    /// Entropy of the text in nats per byte (excluding document separators).
    pub fn entropy_nats_per_byte(&self) -> f64 {
        self.nats.iter().sum::<f64>() / self.total_bytes().max(1) as f64
    }
}

impl TextSource for Stories {
    fn name(&self) -> String {
        format!(
            "stories(seed={}, {} documents)",
            self.seed,
            self.documents.len()
        )
    }

    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(self.documents.iter().map(|d| Ok(d.clone())))
    }

    fn approx_bytes(&self) -> Option<u64> {
        Some(self.total_bytes() as u64)
    }

    fn document_nats(&self, index: usize) -> Option<f64> {
        self.nats.get(index).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_are_seeded_and_sized() {
        let a = Stories::generate(20_000, 7);
        let b = Stories::generate(20_000, 7);
        let c = Stories::generate(20_000, 8);
        assert_eq!(a.documents, b.documents);
        assert_ne!(a.documents, c.documents);
        assert!(a.total_bytes() >= 20_000);
        assert!(a
            .documents
            .iter()
            .all(|d| d.starts_with("Once upon a time") && d.ends_with('.')));
        // A longer corpus starts with the same stories.
        let longer = Stories::generate(40_000, 7);
        assert_eq!(&longer.documents[..a.len()], &a.documents[..]);
    }

    #[test]
    fn probabilities_are_a_distribution_over_the_sentence_count() {
        // The sentence count alone contributes exactly ln 6 nats; the whole story far more.
        let stories = Stories::generate(50_000, 1);
        let mean = stories.nats.iter().sum::<f64>() / stories.len() as f64;
        assert!(mean > (6f64).ln() + 10.0, "mean nats per story {mean}");
        let per_byte = stories.entropy_nats_per_byte();
        // Rich enough not to be trivial, far below a uniform byte model (ln 256 = 5.5).
        assert!(per_byte > 0.1 && per_byte < 1.5, "{per_byte} nats/byte");
    }

    #[test]
    fn story_text_determines_its_log_probability() {
        // Unambiguity, checked empirically: equal texts never come with different probabilities.
        let mut seen = std::collections::HashMap::new();
        for seed in 0..20_000 {
            let (text, nats) = story(SplitMix64::new(seed));
            if let Some(previous) = seen.insert(text.clone(), nats) {
                assert!(
                    (previous - nats).abs() < 1e-9,
                    "{text:?}: {previous} vs {nats}"
                );
            }
        }
    }
}
