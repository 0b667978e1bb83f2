//! Labelled texts from a user's files (`labelled(#{ train, val, .. })`): JSONL records or
//! CSV/TSV rows with a header, with columns `text`, `text_pair` and `label` (other names by
//! option, so GLUE's own TSV files load: `text: "sentence"`). Class names come from `labels`
//! or are the distinct labels of the train file (numerically sorted when they are integers);
//! a label outside them, a single sentence in a pair task (or a pair in a single-sentence
//! task), a missing column, or a score that is not a number is an error naming the file and
//! line. CSV fields may be double-quoted (`""` inside); TSV fields are taken verbatim (GLUE's
//! files do not quote).
//!
//! Token classification (CoNLL-style, Hugging Face `datasets`' layout): JSONL records whose
//! `tokens` column is an array of words and whose `labels` column (`tags` option; e.g.
//! `ner_tags`) holds one tag per word, as names or as integers (indices into `labels` when
//! that option names them). The first train record decides which kind of file it is.

use std::path::{Path, PathBuf};

use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Label, LabelledSource, LabelledText, Split, TaggedWords};

/// Which columns hold what, and what the task is.
#[derive(Debug, Clone)]
pub struct FileOptions {
    pub train: PathBuf,
    pub val: Option<PathBuf>,
    /// Fraction of train held out when there is no val file.
    pub val_fraction: f64,
    pub text: String,
    pub text_pair: String,
    pub label: String,
    /// Class names in index order; `None`: the train file's labels.
    pub labels: Option<Vec<String>>,
    pub regression: bool,
    pub metric: Option<String>,
    /// Token classification: the column of words and the column of their tags.
    pub tokens: String,
    pub tags: String,
}

impl FileOptions {
    pub fn new(train: PathBuf) -> FileOptions {
        FileOptions {
            train,
            val: None,
            val_fraction: 0.1,
            text: "text".into(),
            text_pair: "text_pair".into(),
            label: "label".into(),
            labels: None,
            regression: false,
            metric: None,
            tokens: "tokens".into(),
            tags: "labels".into(),
        }
    }
}

/// One row as read: text, optional pair, label as written (or, tagging, the words and their
/// tags as written); `line` for messages.
struct Row {
    line: usize,
    text: String,
    pair: Option<String>,
    label: String,
    tagged: Option<(Vec<String>, Vec<String>)>,
}

/// A JSON scalar label as written (`"B-PER"`, `3`, `true`).
fn label_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A record's words and their tags, one tag per word.
type WordsAndTags = (Vec<String>, Vec<String>);

/// The words and tags of a token-classification record, `None` when it has no `tokens` array.
fn tagged_record(
    record: &Value,
    o: &FileOptions,
    at: &str,
) -> Result<Option<WordsAndTags>, String> {
    let Some(Value::Array(words)) = record.get(&o.tokens) else {
        return Ok(None);
    };
    let words = words
        .iter()
        .map(|w| {
            w.as_str()
                .map(String::from)
                .ok_or_else(|| format!("{at}: `{}` must hold strings (words), found {w}", o.tokens))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(Value::Array(tags)) = record.get(&o.tags) else {
        return Err(format!(
            "{at}: a `{}` array of words needs a `{}` array with one tag per word",
            o.tokens, o.tags
        ));
    };
    let tags = tags
        .iter()
        .map(|t| {
            label_text(t).ok_or_else(|| {
                format!(
                    "{at}: `{}` must hold tag names or integers, found {t}",
                    o.tags
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if words.len() != tags.len() {
        return Err(format!(
            "{at}: {} words in `{}` but {} tags in `{}` (one tag per word)",
            words.len(),
            o.tokens,
            tags.len(),
            o.tags
        ));
    }
    if words.is_empty() {
        return Err(format!("{at}: `{}` is empty", o.tokens));
    }
    Ok(Some((words, tags)))
}

/// One CSV line's fields (RFC 4180 quoting, one line per record).
fn csv_fields(line: &str, delimiter: char) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => quoted = true,
            c if c == delimiter && !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

fn read_rows(path: &Path, o: &FileOptions) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let at = |line: usize| format!("{}:{line}", path.display());
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut rows = Vec::new();
    match extension {
        "csv" | "tsv" => {
            let delimiter = if extension == "tsv" { '\t' } else { ',' };
            let split = |line: &str| -> Vec<String> {
                if delimiter == '\t' {
                    line.split('\t').map(String::from).collect()
                } else {
                    csv_fields(line, delimiter)
                }
            };
            let mut lines = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty());
            let (_, header) = lines
                .next()
                .ok_or_else(|| format!("{}: empty file", path.display()))?;
            let header = split(header.trim_end_matches('\r'));
            let column = |name: &str| header.iter().position(|h| h == name);
            let text_col = column(&o.text).ok_or_else(|| {
                format!(
                    "{}: no `{}` column (the header has {})",
                    at(1),
                    o.text,
                    header.join(", ")
                )
            })?;
            let label_col = column(&o.label).ok_or_else(|| {
                format!(
                    "{}: no `{}` column (the header has {})",
                    at(1),
                    o.label,
                    header.join(", ")
                )
            })?;
            let pair_col = column(&o.text_pair);
            for (i, line) in lines {
                let fields = split(line.trim_end_matches('\r'));
                let get = |c: usize, name: &str| {
                    fields.get(c).cloned().ok_or_else(|| {
                        format!(
                            "{}: {} fields, no `{name}` (column {})",
                            at(i + 1),
                            fields.len(),
                            c + 1
                        )
                    })
                };
                rows.push(Row {
                    tagged: None,
                    line: i + 1,
                    text: get(text_col, &o.text)?,
                    pair: pair_col
                        .map(|c| get(c, &o.text_pair))
                        .transpose()?
                        .filter(|p| !p.is_empty()),
                    label: get(label_col, &o.label)?,
                });
            }
        }
        _ => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let record: Value = llmlab_plugin_api::serde_json::from_str(line)
                    .map_err(|e| format!("{}: not JSON: {e}", at(i + 1)))?;
                if let Some((words, tags)) = tagged_record(&record, o, &at(i + 1))? {
                    rows.push(Row {
                        line: i + 1,
                        text: words.join(" "),
                        pair: None,
                        label: String::new(),
                        tagged: Some((words, tags)),
                    });
                    continue;
                }
                let string = |key: &str| match record.get(key) {
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    None | Some(Value::Null) => Ok(None),
                    Some(other) => Err(format!(
                        "{}: `{key}` must be a string, not {other}",
                        at(i + 1)
                    )),
                };
                let label = record.get(&o.label).and_then(label_text).ok_or_else(|| {
                    format!("{}: no `{}` (a string or number)", at(i + 1), o.label)
                })?;
                rows.push(Row {
                    tagged: None,
                    line: i + 1,
                    text: string(&o.text)?
                        .ok_or_else(|| format!("{}: no `{}` (a string)", at(i + 1), o.text))?,
                    pair: string(&o.text_pair)?,
                    label,
                });
            }
        }
    }
    if rows.is_empty() {
        return Err(format!("{}: no rows", path.display()));
    }
    Ok(rows)
}

/// A labelled data set read from files.
pub struct FileLabelled {
    name: String,
    train: Vec<LabelledText>,
    val: Vec<LabelledText>,
    labels: Vec<String>,
    pair: bool,
    metric: String,
    /// Token classification: each example's words and tags (parallel to `train`/`val`).
    tagged: Option<(Vec<TaggedWords>, Vec<TaggedWords>)>,
}

fn class_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = rows
        .iter()
        .flat_map(|r| match &r.tagged {
            Some((_, tags)) => tags.clone(),
            None => vec![r.label.clone()],
        })
        .collect();
    names.sort();
    names.dedup();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
    }
    names
}

/// The index of tag `tag` (a name, or an integer index when `labels` were named by option).
fn tag_index(tag: &str, labels: &[String], named: bool, at: &str) -> Result<usize, String> {
    if let Some(i) = labels.iter().position(|l| l == tag) {
        return Ok(i);
    }
    match tag.parse::<usize>() {
        Ok(i) if named && i < labels.len() => Ok(i),
        _ => Err(format!(
            "{at}: unknown tag {tag:?}; the tags are {} (from {})",
            labels.join(", "),
            if named {
                "the `labels` option"
            } else {
                "the train file"
            }
        )),
    }
}

/// Tagged rows as texts (the words joined by spaces) and their words and tag indices.
fn convert_tagged(
    rows: Vec<Row>,
    path: &Path,
    labels: &[String],
    named: bool,
) -> Result<(Vec<LabelledText>, Vec<TaggedWords>), String> {
    rows.into_iter()
        .map(|row| {
            let at = format!("{}:{}", path.display(), row.line);
            let (words, tags) = row.tagged.ok_or_else(|| {
                format!(
                    "{at}: no `tokens` array in a token-classification file (the first train \
                     row has one)"
                )
            })?;
            let tags = tags
                .iter()
                .map(|t| tag_index(t, labels, named, &at))
                .collect::<Result<Vec<_>, _>>()?;
            let text = LabelledText {
                text: row.text,
                text_pair: None,
                label: Label::Class(0),
            };
            Ok((text, TaggedWords { words, tags }))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(|pairs| pairs.into_iter().unzip())
}

fn convert(
    rows: Vec<Row>,
    path: &Path,
    labels: &[String],
    pair: bool,
    regression: bool,
) -> Result<Vec<LabelledText>, String> {
    rows.into_iter()
        .map(|row| {
            let at = format!("{}:{}", path.display(), row.line);
            if row.tagged.is_some() {
                return Err(format!(
                    "{at}: a `tokens` array (token classification) in a sentence-label file \
                     (the first train row has none)"
                ));
            }
            if pair && row.pair.is_none() {
                return Err(format!(
                    "{at}: the task has sentence pairs (text_pair), this row has a single sentence"
                ));
            }
            if !pair && row.pair.is_some() {
                return Err(format!(
                    "{at}: a sentence pair in a single-sentence task (the first train row has no text_pair)"
                ));
            }
            let label = if regression {
                Label::Score(row.label.trim().parse::<f64>().map_err(|_| {
                    format!("{at}: label {:?} is not a number (a regression task)", row.label)
                })?)
            } else {
                Label::Class(labels.iter().position(|l| *l == row.label).ok_or_else(|| {
                    format!(
                        "{at}: unknown label {:?}; the labels are {} (from {})",
                        row.label,
                        labels.join(", "),
                        "the train file, or the `labels` option"
                    )
                })?)
            };
            Ok(LabelledText { text: row.text, text_pair: row.pair, label })
        })
        .collect()
}

impl FileLabelled {
    pub fn load(o: &FileOptions) -> Result<FileLabelled, String> {
        let train_rows = read_rows(&o.train, o)?;
        if train_rows[0].tagged.is_some() {
            return FileLabelled::load_tagged(o, train_rows);
        }
        let pair = train_rows[0].pair.is_some();
        let labels = match (&o.labels, o.regression) {
            (_, true) => Vec::new(),
            (Some(names), false) => names.clone(),
            (None, false) => class_names(&train_rows),
        };
        if !o.regression && labels.len() < 2 {
            return Err(format!(
                "{}: a classification task needs at least 2 labels, the train file has {labels:?} \
                 (regression: true for scores)",
                o.train.display()
            ));
        }
        let mut train = convert(train_rows, &o.train, &labels, pair, o.regression)?;
        let val = match &o.val {
            Some(path) => convert(read_rows(path, o)?, path, &labels, pair, o.regression)?,
            None => {
                let held =
                    ((train.len() as f64 * o.val_fraction).round() as usize).min(train.len() - 1);
                train.split_off(train.len() - held)
            }
        };
        let metric = o
            .metric
            .clone()
            .unwrap_or_else(|| if o.regression { "pearson" } else { "accuracy" }.to_string());
        Ok(FileLabelled {
            name: o.train.display().to_string(),
            train,
            val,
            labels,
            pair,
            metric,
            tagged: None,
        })
    }

    fn load_tagged(o: &FileOptions, train_rows: Vec<Row>) -> Result<FileLabelled, String> {
        if o.regression {
            return Err(format!(
                "{}: a token-classification file (`{}` arrays) cannot be a regression task",
                o.train.display(),
                o.tokens
            ));
        }
        let named = o.labels.is_some();
        let labels = o.labels.clone().unwrap_or_else(|| class_names(&train_rows));
        if labels.len() < 2 {
            return Err(format!(
                "{}: token classification needs at least 2 tags, the train file has {labels:?}",
                o.train.display()
            ));
        }
        let (mut train, mut train_tags) = convert_tagged(train_rows, &o.train, &labels, named)?;
        let (val, val_tags) = match &o.val {
            Some(path) => convert_tagged(read_rows(path, o)?, path, &labels, named)?,
            None => {
                let held =
                    ((train.len() as f64 * o.val_fraction).round() as usize).min(train.len() - 1);
                let at = train.len() - held;
                (train.split_off(at), train_tags.split_off(at))
            }
        };
        Ok(FileLabelled {
            name: o.train.display().to_string(),
            train,
            val,
            labels,
            pair: false,
            metric: o.metric.clone().unwrap_or_else(|| "f1".to_string()),
            tagged: Some((train_tags, val_tags)),
        })
    }

    fn split(&self, split: Split) -> &[LabelledText] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }
}

impl LabelledSource for FileLabelled {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self, split: Split) -> usize {
        self.split(split).len()
    }
    fn get(&self, split: Split, index: usize) -> LabelledText {
        self.split(split)[index].clone()
    }
    fn label_names(&self) -> Vec<String> {
        self.labels.clone()
    }
    fn is_pair(&self) -> bool {
        self.pair
    }
    fn metric(&self) -> String {
        self.metric.clone()
    }
    fn is_tagging(&self) -> bool {
        self.tagged.is_some()
    }
    fn tagged(&self, split: Split, index: usize) -> Option<TaggedWords> {
        let (train, val) = self.tagged.as_ref()?;
        match split {
            Split::Train => train.get(index).cloned(),
            Split::Val => val.get(index).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn jsonl_csv_and_tsv_load_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let train = write(
            dir.path(),
            "t.jsonl",
            "{\"text\": \"good\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\n",
        );
        let val = write(
            dir.path(),
            "v.csv",
            "label,text\npos,\"very, \"\"very\"\" good\"\n",
        );
        let mut o = FileOptions::new(train);
        o.val = Some(val);
        let data = FileLabelled::load(&o).unwrap();
        assert_eq!(data.label_names(), vec!["neg", "pos"]);
        assert_eq!(data.get(Split::Train, 1).label, Label::Class(0));
        assert_eq!(data.get(Split::Val, 0).text, "very, \"very\" good");
        let tsv = write(
            dir.path(),
            "sts.tsv",
            "sentence1\tsentence2\tscore\na b\tc d\t3.8\ne\tf\t1\n",
        );
        let mut o = FileOptions::new(tsv);
        o.text = "sentence1".into();
        o.text_pair = "sentence2".into();
        o.label = "score".into();
        o.regression = true;
        o.val_fraction = 0.5;
        let data = FileLabelled::load(&o).unwrap();
        assert!(data.is_pair());
        assert_eq!(data.get(Split::Train, 0).label, Label::Score(3.8));
        assert_eq!((data.len(Split::Train), data.len(Split::Val)), (1, 1));
    }

    #[test]
    fn token_classification_files_load_words_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let train = write(
            dir.path(),
            "t.jsonl",
            "{\"tokens\": [\"Tom\", \"went\", \"to\", \"Paris\"], \"labels\": [\"B-PER\", \"O\", \"O\", \"B-LOC\"]}\n\
             {\"tokens\": [\"Ann\", \"slept\"], \"labels\": [\"B-PER\", \"O\"]}\n",
        );
        let val = write(
            dir.path(),
            "v.jsonl",
            "{\"tokens\": [\"Rome\"], \"labels\": [\"B-LOC\"]}\n",
        );
        let mut o = FileOptions::new(train.clone());
        o.val = Some(val.clone());
        let data = FileLabelled::load(&o).unwrap();
        assert!(data.is_tagging() && !data.is_pair());
        assert_eq!(data.label_names(), vec!["B-LOC", "B-PER", "O"]);
        assert_eq!(data.metric(), "f1");
        let first = data.tagged(Split::Train, 0).unwrap();
        assert_eq!(first.words, vec!["Tom", "went", "to", "Paris"]);
        assert_eq!(first.tags, vec![1, 2, 2, 0]);
        assert_eq!(data.get(Split::Train, 0).text, "Tom went to Paris");
        assert_eq!(data.tagged(Split::Val, 0).unwrap().tags, vec![0]);
        // Integer tags (datasets' ner_tags) index the `labels` option's names.
        let ints = write(
            dir.path(),
            "i.jsonl",
            "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [0, 1]}\n{\"tokens\": [\"c\"], \"ner_tags\": [1]}\n",
        );
        let mut o = FileOptions::new(ints.clone());
        o.tags = "ner_tags".into();
        o.labels = Some(vec!["O".into(), "B-X".into()]);
        o.val_fraction = 0.5;
        let data = FileLabelled::load(&o).unwrap();
        assert_eq!(data.tagged(Split::Train, 0).unwrap().tags, vec![0, 1]);
        assert_eq!(data.len(Split::Val), 1);
        // Bad rows name file, line and cause.
        let short = write(
            dir.path(),
            "s.jsonl",
            "{\"tokens\": [\"a\", \"b\"], \"labels\": [\"O\", \"X\"]}\n{\"tokens\": [\"a\", \"b\"], \"labels\": [\"O\"]}\n",
        );
        let err = FileLabelled::load(&FileOptions::new(short)).err().unwrap();
        assert!(
            err.contains("s.jsonl:2") && err.contains("2 words") && err.contains("1 tags"),
            "{err}"
        );
        let mut o = FileOptions::new(train);
        o.val = Some(write(
            dir.path(),
            "u.jsonl",
            "{\"tokens\": [\"x\"], \"labels\": [\"B-ORG\"]}\n",
        ));
        let err = FileLabelled::load(&o).err().unwrap();
        assert!(
            err.contains("u.jsonl:1") && err.contains("unknown tag \"B-ORG\""),
            "{err}"
        );
    }

    #[test]
    fn bad_rows_name_the_file_line_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let train = write(
            dir.path(),
            "t.jsonl",
            "{\"text\": \"a\", \"label\": \"yes\"}\n{\"text\": \"b\", \"label\": \"no\"}\n",
        );
        let val = write(
            dir.path(),
            "v.jsonl",
            "{\"text\": \"c\", \"label\": \"no\"}\n{\"text\": \"d\", \"label\": \"maybe\"}\n",
        );
        let mut o = FileOptions::new(train.clone());
        o.val = Some(val.clone());
        let err = FileLabelled::load(&o).err().unwrap();
        assert!(
            err.contains("v.jsonl:2")
                && err.contains("unknown label \"maybe\"")
                && err.contains("no, yes"),
            "{err}"
        );
        let pairs = write(dir.path(), "p.jsonl", "{\"text\": \"a\", \"text_pair\": \"b\", \"label\": 1}\n{\"text\": \"c\", \"label\": 0}\n");
        let err = FileLabelled::load(&FileOptions::new(pairs)).err().unwrap();
        assert!(
            err.contains("p.jsonl:2") && err.contains("single sentence"),
            "{err}"
        );
        let csv = write(dir.path(), "x.csv", "sentence,label\nhi,1\n");
        let err = FileLabelled::load(&FileOptions::new(csv)).err().unwrap();
        assert!(
            err.contains("no `text` column") && err.contains("sentence, label"),
            "{err}"
        );
    }
}
