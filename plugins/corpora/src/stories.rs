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

use llmlab_plugin_api::rng::SplitMix64;

/// The word lists and sizes of a grammar; [`Lexicon::FULL`] is `corpus("stories")`.
pub struct Lexicon {
    pub feminine: &'static [&'static str],
    pub masculine: &'static [&'static str],
    pub traits: &'static [&'static str],
    pub kinds: &'static [&'static str],
    pub places: &'static [&'static str],
    pub objects: &'static [&'static str],
    pub looks: &'static [&'static str],
    pub feelings: &'static [&'static str],
    pub weather: &'static [&'static str],
    pub quotes: &'static [&'static str],
    /// Sentence counts between the opening and the closing sentence, uniformly.
    pub middle_sentences: std::ops::RangeInclusive<u64>,
}

impl Lexicon {
    pub const FULL: Lexicon = Lexicon {
        feminine: &[
            "Lily", "Mia", "Sara", "Anna", "Zoe", "Ella", "Lucy", "Ruby", "Ivy", "Rose", "Nora",
            "Maya",
        ],
        masculine: &[
            "Tom", "Ben", "Max", "Leo", "Sam", "Jack", "Finn", "Noah", "Owen", "Kai", "Eli", "Hugo",
        ],
        traits: &[
            "kind", "brave", "shy", "curious", "happy", "clever", "sleepy", "silly", "gentle",
            "proud", "tiny", "lonely", "funny", "busy", "quiet",
        ],
        kinds: &[
            "rabbit", "fox", "bear", "cat", "dog", "bird", "mouse", "frog", "owl", "turtle",
            "duck", "lion", "horse", "pig", "squirrel", "deer", "goat", "bee",
        ],
        places: &[
            "park", "forest", "river", "garden", "beach", "farm", "hill", "market", "school",
            "cave", "lake", "village", "meadow", "castle", "library", "bakery", "pond", "field",
        ],
        objects: &[
            "ball", "kite", "hat", "box", "shell", "key", "book", "cake", "flower", "stone", "map",
            "drum", "boat", "cup", "rope", "lamp", "apple", "feather", "bell", "basket",
        ],
        looks: &[
            "red", "blue", "green", "yellow", "shiny", "old", "big", "small", "soft", "strange",
            "golden", "purple",
        ],
        feelings: &[
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
        weather: &["rain", "snow", "thunder", "hail"],
        quotes: &[
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
        middle_sentences: 3..=8,
    };
}

/// Makes the choices of a derivation: sampling from a seed, or replaying a path to enumerate.
pub trait Chooser {
    /// Index of the chosen option given their (unnormalised) weights.
    fn choose(&mut self, weights: &[f64]) -> usize;
}

/// Samples choices from a seeded stream.
pub struct Sampler(pub SplitMix64);

impl Chooser for Sampler {
    fn choose(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut target = self.0.next_unit() * total;
        for (i, w) in weights.iter().enumerate() {
            target -= w;
            if target <= 0.0 {
                return i;
            }
        }
        weights.len() - 1
    }
}

/// Draws choices and keeps the derivation's log-probability.
struct Derivation<'c> {
    chooser: &'c mut dyn Chooser,
    nats: f64,
}

impl Derivation<'_> {
    fn weighted(&mut self, weights: &[f64]) -> usize {
        let i = self.chooser.choose(weights);
        self.nats -= (weights[i] / weights.iter().sum::<f64>()).ln();
        i
    }

    /// Picks from `options` with Zipf weights (the k-th gets 1/(k+1)), skipping `exclude`.
    fn pick(&mut self, options: &[&'static str], exclude: Option<&str>) -> &'static str {
        let allowed: Vec<(usize, &'static str)> = options
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, w)| Some(*w) != exclude)
            .collect();
        let weights: Vec<f64> = allowed
            .iter()
            .map(|(k, _)| 1.0 / (*k as f64 + 1.0))
            .collect();
        allowed[self.weighted(&weights)].1
    }

    /// One of `n` equally likely alternatives.
    fn uniform(&mut self, n: u64) -> u64 {
        self.weighted(&vec![1.0; n as usize]) as u64
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

/// One story of `lexicon` with choices from `chooser`, and `-ln p(story)` in nats.
pub fn story_with(chooser: &mut dyn Chooser, lexicon: &Lexicon) -> (String, f64) {
    let mut d = Derivation { chooser, nats: 0.0 };
    let feminine = d.uniform(2) == 0;
    let (names, pronoun) = if feminine {
        (lexicon.feminine, "She")
    } else {
        (lexicon.masculine, "He")
    };
    let hero = d.pick(names, None);
    let opening_trait = d.pick(lexicon.traits, None);
    let opening_kind = d.pick(lexicon.kinds, None);
    let mut text = format!(
        "Once upon a time, there was a {opening_trait} little {opening_kind} named {hero}."
    );
    let range = &lexicon.middle_sentences;
    let middle = range.start() + d.uniform(range.end() - range.start() + 1);
    let mut friend: Option<&'static str> = None;
    for _ in 0..middle {
        let mut templates = vec![
            (Template::WentTo, 3.0),
            (Template::Found, 3.0),
            (Template::Said, 2.0),
            (Template::Met, 2.0),
            (Template::Weather, 1.0),
            (Template::Felt, 2.0),
            (Template::Wanted, 1.0),
        ];
        if friend.is_some() {
            templates.extend([(Template::Shared, 2.0), (Template::FriendSaid, 2.0)]);
        }
        let weights: Vec<f64> = templates.iter().map(|(_, w)| *w).collect();
        // The subject: the hero's name or pronoun, a choice of its own (first word differs).
        let subject = |d: &mut Derivation| {
            if d.weighted(&[1.0, 2.0]) == 0 {
                pronoun
            } else {
                hero
            }
        };
        let sentence = match templates[d.weighted(&weights)].0 {
            Template::WentTo => format!(
                "One day, {hero} went to the {}.",
                d.pick(lexicon.places, None)
            ),
            Template::Found => {
                let who = subject(&mut d);
                let look = d.pick(lexicon.looks, None);
                let object = d.pick(lexicon.objects, None);
                format!(
                    "{who} found a {look} {object} near the {}.",
                    d.pick(lexicon.places, None)
                )
            }
            Template::Said => format!("\"{},\" said {hero}.", d.pick(lexicon.quotes, None)),
            Template::Met => {
                let who = subject(&mut d);
                let look = d.pick(lexicon.traits, None);
                let kind = d.pick(lexicon.kinds, None);
                // The friend is never the hero: a gender whose names are all the hero's is no option.
                let genders: Vec<&[&str]> = [lexicon.feminine, lexicon.masculine]
                    .into_iter()
                    .filter(|names| names.iter().any(|n| *n != hero))
                    .collect();
                let names = genders[d.uniform(genders.len() as u64) as usize];
                let name = d.pick(names, Some(hero));
                friend = Some(name);
                format!("{who} met a {look} {kind} called {name}.")
            }
            Template::Weather => format!("Then it started to {}.", d.pick(lexicon.weather, None)),
            Template::Felt => {
                let who = subject(&mut d);
                let feeling = d.pick(lexicon.feelings, None);
                format!(
                    "{who} felt {feeling} because of the {}.",
                    d.pick(lexicon.objects, None)
                )
            }
            Template::Wanted => format!(
                "{pronoun} wanted to see the {} again.",
                d.pick(lexicon.places, None)
            ),
            Template::Shared => {
                let who = subject(&mut d);
                format!(
                    "{who} and {} shared the {}.",
                    friend.unwrap_or(hero),
                    d.pick(lexicon.objects, None)
                )
            }
            Template::FriendSaid => {
                format!(
                    "\"{},\" said {}.",
                    d.pick(lexicon.quotes, None),
                    friend.unwrap_or(hero)
                )
            }
        };
        text.push(' ');
        text.push_str(&sentence);
    }
    let ending = match d.uniform(3) {
        0 => format!("In the end, {hero} was {}.", d.pick(lexicon.feelings, None)),
        1 => "And they all lived happily ever after.".to_string(),
        _ => "The end.".to_string(),
    };
    text.push(' ');
    text.push_str(&ending);
    (text, d.nats)
}

/// One story of the full grammar from a seeded stream.
pub fn story(rng: SplitMix64) -> (String, f64) {
    story_with(&mut Sampler(rng), &Lexicon::FULL)
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

    /// Replays a fixed prefix of choices, then takes option 0, recording how many options each
    /// choice point had: re-running with every prefix enumerates all derivations (DFS).
    struct Replay {
        path: Vec<usize>,
        arity: Vec<usize>,
    }

    impl Chooser for Replay {
        fn choose(&mut self, weights: &[f64]) -> usize {
            let depth = self.arity.len();
            self.arity.push(weights.len());
            *self.path.get(depth).unwrap_or(&0)
        }
    }

    const TINY: Lexicon = Lexicon {
        feminine: &["Ana", "Bea"],
        masculine: &["Cy"],
        traits: &["shy"],
        kinds: &["fox", "owl"],
        places: &["park", "lake"],
        objects: &["ball"],
        looks: &["red"],
        feelings: &["sad", "glad"],
        weather: &["rain"],
        quotes: &["Hi"],
        middle_sentences: 1..=2,
    };

    #[test]
    fn tiny_grammar_floor_matches_brute_force_enumeration() {
        // Enumerate every derivation of the tiny grammar.
        let mut documents: std::collections::HashMap<String, f64> = Default::default();
        let mut stack = vec![Vec::<usize>::new()];
        let mut derivations = 0;
        while let Some(prefix) = stack.pop() {
            let mut replay = Replay {
                path: prefix.clone(),
                arity: Vec::new(),
            };
            let (text, nats) = story_with(&mut replay, &TINY);
            let full_path: Vec<usize> = (0..replay.arity.len())
                .map(|i| *prefix.get(i).unwrap_or(&0))
                .collect();
            // Children: at every depth past the prefix, the other options.
            for depth in prefix.len()..replay.arity.len() {
                for option in 1..replay.arity[depth] {
                    let mut child = full_path[..depth].to_vec();
                    child.push(option);
                    stack.push(child);
                }
            }
            derivations += 1;
            // Unambiguous: no two derivations produce the same text.
            assert!(
                documents.insert(text.clone(), (-nats).exp()).is_none(),
                "two derivations of {text:?}"
            );
        }
        let total: f64 = documents.values().sum();
        assert!(
            (total - 1.0).abs() < 1e-9,
            "probabilities sum to {total} over {derivations} derivations"
        );
        let exact_entropy: f64 = documents.values().map(|p| -p * p.ln()).sum();
        // The floor the corpus reports is the sample mean of -ln p: it converges to the entropy.
        let samples = 40_000;
        let mean: f64 = (0..samples)
            .map(|seed| story_with(&mut Sampler(SplitMix64::new(seed)), &TINY).1)
            .sum::<f64>()
            / samples as f64;
        assert!(
            (mean - exact_entropy).abs() < 0.02 * exact_entropy,
            "sampled {mean} vs exact {exact_entropy}"
        );
        assert!(
            derivations > 100,
            "the tiny grammar still branches ({derivations} derivations)"
        );
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
