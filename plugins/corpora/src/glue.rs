//! A GLUE-style suite whose labels are exact: five tasks made from the `stories` grammar's
//! words and sentence templates, where the generator knows the truth (who went where, found
//! what, met whom, how the story ended).
//!
//! - `sentiment` (single sentence, accuracy): a short story; positive or negative by how it
//!   ended (`In the end, Tom was sad.`), with feelings of either kind earlier as distractors;
//! - `acceptability` (single, Matthews correlation, CoLA-like): a sentence of the grammar, or one
//!   corrupted (words swapped, dropped, doubled or replaced) and checked ungrammatical by
//!   [`is_grammatical`], which matches every template of the grammar;
//! - `entailment` (pair, accuracy, RTE-like): a story and a statement about it (`Tom went to the
//!   park.`); entailed when the story says so, not when the place, object, friend or person
//!   differs (hard negatives use words the story does mention, in another role; their share of
//!   the training negatives is a setting, [`GlueData::generate_with`]);
//! - `paraphrase` (pair, F1, MRPC-like): two renderings of two events; the same events in other
//!   sentence forms, or events with one slot changed;
//! - `similarity` (pair, regression 0–5, Pearson, STS-B-like): two renderings of one event
//!   sharing k of its n slots, scored 5·k/n;
//! - `roles` (token classification, entity-level F1, CoNLL-like): each word of a sentence
//!   tagged with its role in the event ([`crate::glue_roles`]).
//!
//! Classes are balanced; train and val are disjoint (a val example never repeats a train text).

use std::collections::HashSet;

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::{
    Label, LabelledSource, LabelledText, Result, Split, TaggedWords, TextSource,
};

use crate::glue_roles::{roles, ROLE_LABELS};
use crate::stories::Lexicon;

const L: &Lexicon = &Lexicon::FULL;
const POSITIVE: &[&str] = &["happy", "excited", "proud", "calm"];
const NEGATIVE: &[&str] = &["sad", "scared", "tired", "angry", "worried"];

/// The tasks of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlueTask {
    Sentiment,
    Acceptability,
    Entailment,
    Paraphrase,
    Similarity,
    Roles,
}

impl GlueTask {
    pub const ALL: [GlueTask; 6] = [
        GlueTask::Sentiment,
        GlueTask::Acceptability,
        GlueTask::Entailment,
        GlueTask::Paraphrase,
        GlueTask::Similarity,
        GlueTask::Roles,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GlueTask::Sentiment => "sentiment",
            GlueTask::Acceptability => "acceptability",
            GlueTask::Entailment => "entailment",
            GlueTask::Paraphrase => "paraphrase",
            GlueTask::Similarity => "similarity",
            GlueTask::Roles => "roles",
        }
    }

    pub fn from_name(name: &str) -> Option<GlueTask> {
        GlueTask::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Class names in index order; empty for the regression task.
    pub fn labels(self) -> Vec<String> {
        let names: &[&str] = match self {
            GlueTask::Sentiment => &["negative", "positive"],
            GlueTask::Acceptability => &["unacceptable", "acceptable"],
            GlueTask::Entailment => &["not_entailment", "entailment"],
            GlueTask::Paraphrase => &["not_paraphrase", "paraphrase"],
            GlueTask::Similarity => &[],
            GlueTask::Roles => &ROLE_LABELS,
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    pub fn metric(self) -> &'static str {
        match self {
            GlueTask::Sentiment | GlueTask::Entailment => "accuracy",
            GlueTask::Acceptability => "mcc",
            GlueTask::Paraphrase | GlueTask::Roles => "f1",
            GlueTask::Similarity => "pearson",
        }
    }

    pub fn is_pair(self) -> bool {
        matches!(
            self,
            GlueTask::Entailment | GlueTask::Paraphrase | GlueTask::Similarity
        )
    }
}

pub(crate) struct Draw(pub(crate) SplitMix64);

impl Draw {
    pub(crate) fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.0.below(options.len())]
    }
    /// One of `options` other than every word in `not`.
    fn pick_other<'a>(&mut self, options: &[&'a str], not: &[&str]) -> &'a str {
        loop {
            let w = self.pick(options);
            if !not.contains(&w) {
                return w;
            }
        }
    }
    fn coin(&mut self) -> bool {
        self.0.next_u64() & 1 == 1
    }
    /// True with probability `p`, from one draw (as [`Draw::coin`], so the stream stays aligned).
    fn chance(&mut self, p: f64) -> bool {
        ((self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }
}

fn names() -> Vec<&'static str> {
    L.feminine.iter().chain(L.masculine).copied().collect()
}

/// One event of a story, with the hero (or a pronoun for them) as subject.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    WentTo {
        who: String,
        place: String,
    },
    Found {
        who: String,
        look: String,
        object: String,
        place: String,
    },
    Met {
        who: String,
        trait_: String,
        kind: String,
        name: String,
    },
    Felt {
        who: String,
        feeling: String,
        object: String,
    },
    Shared {
        who: String,
        name: String,
        object: String,
    },
}

impl Event {
    /// The sentence in the `stories` grammar's own form (`form` 0) or another (1, 2).
    fn render(&self, form: usize) -> String {
        match self {
            Event::WentTo { who, place } => match form % 2 {
                0 => format!("One day, {who} went to the {place}."),
                _ => format!("{who} went to the {place} one day."),
            },
            Event::Found {
                who,
                look,
                object,
                place,
            } => match form % 3 {
                0 => format!("{who} found a {look} {object} near the {place}."),
                1 => format!("Near the {place}, {who} found a {look} {object}."),
                _ => format!("A {look} {object} was found by {who} near the {place}."),
            },
            Event::Met {
                who,
                trait_,
                kind,
                name,
            } => match form % 2 {
                0 => format!("{who} met a {trait_} {kind} called {name}."),
                _ => format!("{who} met {name}, a {trait_} {kind}."),
            },
            Event::Felt {
                who,
                feeling,
                object,
            } => match form % 2 {
                0 => format!("{who} felt {feeling} because of the {object}."),
                _ => format!("The {object} made {who} feel {feeling}."),
            },
            Event::Shared { who, name, object } => match form % 2 {
                0 => format!("{who} and {name} shared the {object}."),
                _ => format!("The {object} was shared by {who} and {name}."),
            },
        }
    }

    fn forms(&self) -> usize {
        match self {
            Event::Found { .. } => 3,
            _ => 2,
        }
    }

    /// The slot values (the subject first).
    fn slots(&self) -> Vec<&String> {
        match self {
            Event::WentTo { who, place } => vec![who, place],
            Event::Found {
                who,
                look,
                object,
                place,
            } => vec![who, look, object, place],
            Event::Met {
                who,
                trait_,
                kind,
                name,
            } => vec![who, trait_, kind, name],
            Event::Felt {
                who,
                feeling,
                object,
            } => vec![who, feeling, object],
            Event::Shared { who, name, object } => vec![who, name, object],
        }
    }

    /// The word list slot `i` draws from (the subject: names).
    fn slot_words(&self, i: usize) -> Vec<&'static str> {
        let lists: Vec<Vec<&'static str>> = match self {
            Event::WentTo { .. } => vec![names(), L.places.to_vec()],
            Event::Found { .. } => vec![
                names(),
                L.looks.to_vec(),
                L.objects.to_vec(),
                L.places.to_vec(),
            ],
            Event::Met { .. } => vec![names(), L.traits.to_vec(), L.kinds.to_vec(), names()],
            Event::Felt { .. } => vec![names(), L.feelings.to_vec(), L.objects.to_vec()],
            Event::Shared { .. } => vec![names(), names(), L.objects.to_vec()],
        };
        lists[i].clone()
    }

    fn slot_mut(&mut self, i: usize) -> &mut String {
        match self {
            Event::WentTo { who, place } => [who, place].into_iter().nth(i),
            Event::Found {
                who,
                look,
                object,
                place,
            } => [who, look, object, place].into_iter().nth(i),
            Event::Met {
                who,
                trait_,
                kind,
                name,
            } => [who, trait_, kind, name].into_iter().nth(i),
            Event::Felt {
                who,
                feeling,
                object,
            } => [who, feeling, object].into_iter().nth(i),
            Event::Shared { who, name, object } => [who, name, object].into_iter().nth(i),
        }
        .expect("slot index in range")
    }

    /// A random event of `hero` (or a friend other than `hero`).
    fn random(d: &mut Draw, who: &str, hero: &str) -> Event {
        let s = |w: &str| w.to_string();
        let all = names();
        match d.below(5) {
            0 => Event::WentTo {
                who: s(who),
                place: s(d.pick(L.places)),
            },
            1 => Event::Found {
                who: s(who),
                look: s(d.pick(L.looks)),
                object: s(d.pick(L.objects)),
                place: s(d.pick(L.places)),
            },
            2 => Event::Met {
                who: s(who),
                trait_: s(d.pick(L.traits)),
                kind: s(d.pick(L.kinds)),
                name: s(d.pick_other(&all, &[hero])),
            },
            3 => Event::Felt {
                who: s(who),
                feeling: s(d.pick(L.feelings)),
                object: s(d.pick(L.objects)),
            },
            _ => Event::Shared {
                who: s(who),
                name: s(d.pick_other(&all, &[hero])),
                object: s(d.pick(L.objects)),
            },
        }
    }
}

/// A hero: name and pronoun.
fn hero(d: &mut Draw) -> (&'static str, &'static str) {
    if d.coin() {
        (d.pick(L.feminine), "She")
    } else {
        (d.pick(L.masculine), "He")
    }
}

fn opening(d: &mut Draw, hero: &str) -> String {
    format!(
        "Once upon a time, there was a {} little {} named {hero}.",
        d.pick(L.traits),
        d.pick(L.kinds)
    )
}

fn sentiment(d: &mut Draw) -> LabelledText {
    let (name, pronoun) = hero(d);
    let mut text = opening(d, name);
    for _ in 0..1 + d.below(2) {
        let who = if d.coin() { name } else { pronoun };
        let event = Event::random(d, who, name);
        text.push(' ');
        text.push_str(&event.render(0));
    }
    let positive = d.coin();
    let ending = if positive && d.below(4) == 0 {
        "And they all lived happily ever after.".to_string()
    } else {
        let feeling = d.pick(if positive { POSITIVE } else { NEGATIVE });
        format!("In the end, {name} was {feeling}.")
    };
    text.push(' ');
    text.push_str(&ending);
    LabelledText {
        text,
        text_pair: None,
        label: Label::Class(usize::from(positive)),
    }
}

/// The single-sentence templates of the grammar, `{Class}` slots with punctuation after them.
const TEMPLATES: &[&str] = &[
    "Once upon a time, there was a {trait} little {kind} named {name}.",
    "One day, {name} went to the {place}.",
    "{who} found a {look} {object} near the {place}.",
    "{who} met a {trait} {kind} called {name}.",
    "Then it started to {weather}.",
    "{who} felt {feeling} because of the {object}.",
    "{pronoun} wanted to see the {place} again.",
    "{who} and {name} shared the {object}.",
    "In the end, {name} was {feeling}.",
];

pub(crate) fn class_words(class: &str) -> Vec<&'static str> {
    match class {
        "trait" => L.traits.to_vec(),
        "kind" => L.kinds.to_vec(),
        "name" => names(),
        "pronoun" => vec!["He", "She"],
        "who" => names().into_iter().chain(["He", "She"]).collect(),
        "place" => L.places.to_vec(),
        "look" => L.looks.to_vec(),
        "object" => L.objects.to_vec(),
        "feeling" => L.feelings.to_vec(),
        "weather" => L.weather.to_vec(),
        other => unreachable!("template class {other}"),
    }
}

/// A template token: a literal word, or a slot class with the punctuation after it.
fn matches_token(token: &str, word: &str) -> bool {
    match token.strip_prefix('{').and_then(|t| t.split_once('}')) {
        Some((class, suffix)) => word
            .strip_suffix(suffix)
            .is_some_and(|w| class_words(class).contains(&w)),
        None => token == word,
    }
}

/// Whether `sentence` is one the grammar makes (any single-sentence template, any words).
pub fn is_grammatical(sentence: &str) -> bool {
    let words: Vec<&str> = sentence.split(' ').collect();
    TEMPLATES.iter().any(|template| {
        let tokens: Vec<&str> = template.split(' ').collect();
        tokens.len() == words.len() && tokens.iter().zip(&words).all(|(t, w)| matches_token(t, w))
    })
}

/// A sentence of a random template with random words.
fn grammatical_sentence(d: &mut Draw) -> String {
    let template = TEMPLATES[d.below(TEMPLATES.len())];
    let words: Vec<String> = template
        .split(' ')
        .map(
            |token| match token.strip_prefix('{').and_then(|t| t.split_once('}')) {
                Some((class, suffix)) => format!("{}{suffix}", d.pick(&class_words(class))),
                None => token.to_string(),
            },
        )
        .collect();
    words.join(" ")
}

/// `sentence` corrupted until the grammar cannot make it.
fn corrupt(d: &mut Draw, sentence: &str) -> Option<String> {
    for _ in 0..50 {
        let mut words: Vec<String> = sentence.split(' ').map(String::from).collect();
        let i = d.below(words.len());
        match d.below(4) {
            0 if i + 1 < words.len() => words.swap(i, i + 1),
            1 if words.len() > 3 => {
                words.remove(i);
            }
            2 => {
                let w = words[i].clone();
                words.insert(i, w.trim_end_matches(['.', ',']).to_string());
            }
            _ => {
                let punctuation: String = words[i]
                    .chars()
                    .filter(|c| matches!(c, '.' | ','))
                    .collect();
                let class = ["place", "object", "feeling", "kind", "look", "name"][d.below(6)];
                words[i] = format!("{}{punctuation}", d.pick(&class_words(class)));
            }
        }
        let candidate = words.join(" ");
        if !is_grammatical(&candidate) {
            return Some(candidate);
        }
    }
    None
}

fn acceptability(d: &mut Draw) -> LabelledText {
    loop {
        let sentence = grammatical_sentence(d);
        if d.coin() {
            return LabelledText {
                text: sentence,
                text_pair: None,
                label: Label::Class(1),
            };
        }
        if let Some(bad) = corrupt(d, &sentence) {
            return LabelledText {
                text: bad,
                text_pair: None,
                label: Label::Class(0),
            };
        }
    }
}

/// `hard_negatives`: the chance that a negative reuses a word the story mentions in another role
/// when the story has one; `None` is the suite's own mix (one in two, by a coin).
fn entailment(d: &mut Draw, hard_negatives: Option<f64>) -> LabelledText {
    let (name, pronoun) = hero(d);
    let mut story = opening(d, name);
    let mut events = Vec::new();
    for _ in 0..3 + d.below(3) {
        let who = if d.coin() { name } else { pronoun };
        let event = Event::random(d, who, name);
        story.push(' ');
        story.push_str(&event.render(0));
        events.push(event);
    }
    let went: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::WentTo { place, .. } => Some(place.as_str()),
            _ => None,
        })
        .collect();
    let found: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Found { object, .. } => Some(object.as_str()),
            _ => None,
        })
        .collect();
    let met: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Met { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    // Words the story mentions in other roles: the hardest negatives.
    let places: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Found { place, .. } => Some(place.as_str()),
            _ => None,
        })
        .collect();
    let objects: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Felt { object, .. } | Event::Shared { object, .. } => Some(object.as_str()),
            _ => None,
        })
        .collect();
    let friends: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Shared { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let entailed = d.coin();
    let all = names();
    let pick_missing = |d: &mut Draw,
                        mentioned: &[&str],
                        list: &[&'static str],
                        facts: &[&str],
                        also_not: &str|
     -> String {
        let hard: Vec<&str> = mentioned
            .iter()
            .copied()
            .filter(|w| !facts.contains(w) && *w != also_not)
            .collect();
        let take_hard = match hard_negatives {
            None => d.coin(),
            Some(p) => d.chance(p),
        };
        if !hard.is_empty() && take_hard {
            hard[d.below(hard.len())].to_string()
        } else {
            let mut not: Vec<&str> = facts.to_vec();
            not.push(also_not);
            d.pick_other(list, &not).to_string()
        }
    };
    let statement = loop {
        match d.below(4) {
            0 if entailed && !went.is_empty() => {
                break format!("{name} went to the {}.", went[d.below(went.len())])
            }
            0 if !entailed => {
                break format!(
                    "{name} went to the {}.",
                    pick_missing(d, &places, L.places, &went, "")
                )
            }
            1 if entailed && !found.is_empty() => {
                break format!("{name} found a {}.", found[d.below(found.len())])
            }
            1 if !entailed => {
                break format!(
                    "{name} found a {}.",
                    pick_missing(d, &objects, L.objects, &found, "")
                )
            }
            2 if entailed && !met.is_empty() => {
                break format!("{name} met {}.", met[d.below(met.len())])
            }
            2 if !entailed => {
                break format!(
                    "{name} met {}.",
                    pick_missing(d, &friends, &all, &met, name)
                )
            }
            // Someone else did what the hero did.
            3 if !entailed && !went.is_empty() => {
                let other = d.pick_other(&all, &[name]);
                break format!("{other} went to the {}.", went[d.below(went.len())]);
            }
            _ if entailed && went.is_empty() && found.is_empty() && met.is_empty() => {
                // Nothing to state: tell a new story.
                return entailment(d, hard_negatives);
            }
            _ => continue,
        }
    };
    LabelledText {
        text: story,
        text_pair: Some(statement),
        label: Label::Class(usize::from(entailed)),
    }
}

fn render_all(d: &mut Draw, events: &[Event]) -> String {
    events
        .iter()
        .map(|e| e.render(d.below(e.forms())))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `event` with slot `i` set to another word of its list.
fn changed(d: &mut Draw, event: &Event, i: usize) -> Event {
    let mut e = event.clone();
    let words = e.slot_words(i);
    let taken: Vec<String> = event.slots().into_iter().cloned().collect();
    let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
    *e.slot_mut(i) = d.pick_other(&words, &taken).to_string();
    e
}

fn paraphrase(d: &mut Draw) -> LabelledText {
    let (name, _) = hero(d);
    let events: Vec<Event> = (0..2).map(|_| Event::random(d, name, name)).collect();
    let text = render_all(d, &events);
    let same = d.coin();
    let other = if same {
        events.clone()
    } else {
        let mut other = events.clone();
        let k = d.below(2);
        let slot = 1 + d.below(other[k].slots().len() - 1);
        other[k] = changed(d, &other[k], slot);
        other
    };
    let pair = loop {
        let p = render_all(d, &other);
        if p != text {
            break p;
        }
    };
    LabelledText {
        text,
        text_pair: Some(pair),
        label: Label::Class(usize::from(same)),
    }
}

fn similarity(d: &mut Draw) -> LabelledText {
    let (name, _) = hero(d);
    let event = loop {
        let e = Event::random(d, name, name);
        if matches!(
            e,
            Event::Found { .. } | Event::Felt { .. } | Event::WentTo { .. }
        ) {
            break e;
        }
    };
    let n = event.slots().len();
    let shared = d.below(n + 1);
    let mut slots: Vec<usize> = (0..n).collect();
    // Which slots differ: the first n − shared of a shuffled order.
    for i in (1..n).rev() {
        slots.swap(i, d.below(i + 1));
    }
    let mut other = event.clone();
    for &i in &slots[..n - shared] {
        other = changed(d, &other, i);
    }
    let text = event.render(d.below(event.forms()));
    let pair = other.render(d.below(other.forms()));
    LabelledText {
        text,
        text_pair: Some(pair),
        label: Label::Score(5.0 * shared as f64 / n as f64),
    }
}

/// A generated task: `n` train and `val` validation examples from `seed`.
pub struct GlueData {
    pub task: GlueTask,
    pub seed: u64,
    /// Entailment's share of hard training negatives, when not the suite's mix.
    pub hard_negatives: Option<f64>,
    train: Vec<LabelledText>,
    val: Vec<LabelledText>,
    /// The words and tags of each example of a token-classification task; empty otherwise.
    train_tags: Vec<TaggedWords>,
    val_tags: Vec<TaggedWords>,
}

impl GlueData {
    pub fn generate(task: GlueTask, n: usize, val: usize, seed: u64) -> GlueData {
        GlueData::generate_with(task, n, val, seed, None)
    }

    /// [`GlueData::generate`] with entailment's share of hard negatives among the *training*
    /// examples set to `hard_negatives` (`None`: the suite's mix). Validation keeps the suite's
    /// mix whatever the setting, so a model trained on another mix is scored on the same task.
    pub fn generate_with(
        task: GlueTask,
        n: usize,
        val: usize,
        seed: u64,
        hard_negatives: Option<f64>,
    ) -> GlueData {
        let make = |d: &mut Draw, train: bool| match task {
            GlueTask::Sentiment => (sentiment(d), None),
            GlueTask::Acceptability => (acceptability(d), None),
            GlueTask::Entailment => (
                entailment(d, if train { hard_negatives } else { None }),
                None,
            ),
            GlueTask::Paraphrase => (paraphrase(d), None),
            GlueTask::Similarity => (similarity(d), None),
            GlueTask::Roles => {
                let (text, tagged) = roles(d);
                (text, Some(tagged))
            }
        };
        let key =
            |e: &LabelledText| format!("{}\u{0}{}", e.text, e.text_pair.as_deref().unwrap_or(""));
        let mut d = Draw(SplitMix64::new(seed ^ 0x474c_5545));
        let (train, train_tags): (Vec<LabelledText>, Vec<Option<TaggedWords>>) =
            (0..n).map(|_| make(&mut d, true)).unzip();
        let seen: HashSet<String> = train.iter().map(key).collect();
        let wanted = val;
        let (mut val, mut val_tags) = (Vec::with_capacity(wanted), Vec::new());
        // The val stream may run dry of unseen texts on a tiny grammar slice: bounded tries.
        for _ in 0..wanted * 100 {
            if val.len() == wanted {
                break;
            }
            let (e, tagged) = make(&mut d, false);
            if !seen.contains(&key(&e)) {
                val.push(e);
                val_tags.extend(tagged);
            }
        }
        GlueData {
            task,
            seed,
            hard_negatives,
            train,
            val,
            train_tags: train_tags.into_iter().flatten().collect(),
            val_tags,
        }
    }

    fn split(&self, split: Split) -> &[LabelledText] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }
}

impl LabelledSource for GlueData {
    fn name(&self) -> String {
        let mix = self
            .hard_negatives
            .map(|p| format!(", hard_negatives={p}"))
            .unwrap_or_default();
        format!(
            "glue:{}(n={}, seed={}{mix})",
            self.task.name(),
            self.train.len(),
            self.seed
        )
    }
    fn len(&self, split: Split) -> usize {
        self.split(split).len()
    }
    fn get(&self, split: Split, index: usize) -> LabelledText {
        self.split(split)[index].clone()
    }
    fn label_names(&self) -> Vec<String> {
        self.task.labels()
    }
    fn is_pair(&self) -> bool {
        self.task.is_pair()
    }
    fn metric(&self) -> String {
        self.task.metric().to_string()
    }
    fn is_tagging(&self) -> bool {
        self.task == GlueTask::Roles
    }
    fn tagged(&self, split: Split, index: usize) -> Option<TaggedWords> {
        match split {
            Split::Train => self.train_tags.get(index).cloned(),
            Split::Val => self.val_tags.get(index).cloned(),
        }
    }
}

/// The train texts (and pairs) as documents, for training a tokenizer on the task.
impl TextSource for GlueData {
    fn name(&self) -> String {
        LabelledSource::name(self)
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(self.train.iter().map(|e| {
            Ok(match &e.text_pair {
                Some(p) => format!("{} {p}", e.text),
                None => e.text.clone(),
            })
        }))
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(
            self.train
                .iter()
                .map(|e| e.text.len() + e.text_pair.as_ref().map_or(0, String::len))
                .sum::<usize>() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_share(data: &GlueData, class: usize) -> f64 {
        let n = data.len(Split::Train);
        (0..n)
            .filter(|&i| data.get(Split::Train, i).label == Label::Class(class))
            .count() as f64
            / n as f64
    }

    #[test]
    fn every_template_sentence_is_grammatical_and_corruptions_are_not() {
        let mut d = Draw(SplitMix64::new(1));
        for _ in 0..500 {
            let s = grammatical_sentence(&mut d);
            assert!(is_grammatical(&s), "{s}");
            let bad = corrupt(&mut d, &s).unwrap();
            assert!(!is_grammatical(&bad), "{bad}");
        }
        // The stories grammar's own sentences pass too.
        assert!(is_grammatical("One day, Tom went to the park."));
        assert!(!is_grammatical("One day, Tom went the to park."));
    }

    #[test]
    fn labels_are_the_truth() {
        let sentiment = GlueData::generate(GlueTask::Sentiment, 400, 100, 3);
        for e in &sentiment.train {
            let ending = e.text.rsplit(". ").next().unwrap();
            let positive = ending.contains("happily")
                || POSITIVE
                    .iter()
                    .any(|f| ending.ends_with(&format!("was {f}.")));
            assert_eq!(e.label, Label::Class(usize::from(positive)), "{}", e.text);
        }
        let accept = GlueData::generate(GlueTask::Acceptability, 400, 100, 3);
        for e in &accept.train {
            assert_eq!(
                e.label,
                Label::Class(usize::from(is_grammatical(&e.text))),
                "{}",
                e.text
            );
        }
        let entail = GlueData::generate(GlueTask::Entailment, 400, 100, 3);
        for e in &entail.train {
            let statement = e.text_pair.as_deref().unwrap();
            // An entailed statement is about the hero, and its place/object/friend is in the story.
            if e.label == Label::Class(1) {
                let hero = e
                    .text
                    .split(" named ")
                    .nth(1)
                    .unwrap()
                    .split('.')
                    .next()
                    .unwrap();
                let slot = statement.trim_end_matches('.').rsplit(' ').next().unwrap();
                assert!(statement.starts_with(hero), "{statement} / {}", e.text);
                assert!(
                    e.text.matches(slot).count() >= 1,
                    "{statement} / {}",
                    e.text
                );
            }
        }
        for (task, class) in [(&sentiment, 1), (&accept, 1), (&entail, 1)] {
            let share = class_share(task, class);
            assert!((share - 0.5).abs() < 0.1, "{}: {share}", task.task.name());
        }
        let sim = GlueData::generate(GlueTask::Similarity, 200, 50, 3);
        for e in &sim.train {
            let Label::Score(s) = e.label else {
                panic!("a score")
            };
            assert!((0.0..=5.0).contains(&s));
            if s == 5.0 {
                // Same event: the same slot words, whatever the sentence form.
                let mut a: Vec<&str> = e.text.trim_end_matches('.').split([' ', ',']).collect();
                let mut b: Vec<&str> = e
                    .text_pair
                    .as_deref()
                    .unwrap()
                    .trim_end_matches('.')
                    .split([' ', ','])
                    .collect();
                a.retain(|w| {
                    L.objects.contains(w) || L.places.contains(w) || L.feelings.contains(w)
                });
                b.retain(|w| {
                    L.objects.contains(w) || L.places.contains(w) || L.feelings.contains(w)
                });
                a.sort();
                b.sort();
                assert_eq!(a, b, "{e:?}");
            }
        }
    }

    #[test]
    fn seeded_and_val_disjoint_from_train() {
        for task in GlueTask::ALL {
            let a = GlueData::generate(task, 200, 50, 9);
            let b = GlueData::generate(task, 200, 50, 9);
            assert_eq!(a.train, b.train);
            assert_eq!(a.val.len(), 50, "{}", task.name());
            let train: HashSet<(String, Option<String>)> = a
                .train
                .iter()
                .map(|e| (e.text.clone(), e.text_pair.clone()))
                .collect();
            assert!(a
                .val
                .iter()
                .all(|e| !train.contains(&(e.text.clone(), e.text_pair.clone()))));
            assert_eq!(a.is_pair(), a.train.iter().all(|e| e.text_pair.is_some()));
            if a.is_tagging() {
                assert_eq!(a.train_tags.len(), a.train.len());
                assert_eq!(a.val_tags.len(), a.val.len());
                let t = a.tagged(Split::Val, 3).unwrap();
                assert_eq!(crate::glue_roles::text_of(&t.words), a.val[3].text);
            }
        }
    }

    /// The share of negatives a bag-of-words rule gets wrong: the statement's last word (its
    /// place, object or friend) is in the story.
    fn lexically_hard_share(examples: &[LabelledText]) -> f64 {
        let negatives: Vec<&LabelledText> = examples
            .iter()
            .filter(|e| e.label == Label::Class(0))
            .collect();
        let hard = negatives
            .iter()
            .filter(|e| {
                let statement = e.text_pair.as_deref().unwrap();
                let slot = statement.trim_end_matches('.').rsplit(' ').next().unwrap();
                e.text.split([' ', '.', ',']).any(|w| w == slot)
            })
            .count();
        hard as f64 / negatives.len() as f64
    }

    #[test]
    fn the_hard_negative_share_sets_the_training_mix_and_leaves_validation_alone() {
        let mix = GlueData::generate(GlueTask::Entailment, 2000, 1000, 4);
        let hard = GlueData::generate_with(GlueTask::Entailment, 2000, 1000, 4, Some(1.0));
        let easy = GlueData::generate_with(GlueTask::Entailment, 2000, 1000, 4, Some(0.0));
        let (m, h, e) = (
            lexically_hard_share(&mix.train),
            lexically_hard_share(&hard.train),
            lexically_hard_share(&easy.train),
        );
        assert!((0.35..0.55).contains(&m), "the suite's mix: {m}");
        assert!(
            h > m + 0.2,
            "all the hard negatives there are: {h} (mix {m})"
        );
        // Only "someone else went there" stays lexically hard when no slot word is reused.
        assert!(e < 0.25, "{e}");
        for data in [&hard, &easy] {
            let v = lexically_hard_share(&data.val);
            assert!((0.35..0.55).contains(&v), "validation keeps the mix: {v}");
            assert!((class_share(data, 1) - 0.5).abs() < 0.05);
        }
        // `None` is the suite itself, bit for bit.
        let again = GlueData::generate_with(GlueTask::Entailment, 2000, 1000, 4, None);
        assert_eq!(again.train, mix.train);
        assert_eq!(again.val, mix.val);
    }
}
