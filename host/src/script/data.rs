//! The script surface of data: corpora (`corpus(...)`), training a tokenizer on one
//! (`tok.train(corpus_or_path)`), encoding one into a token dataset
//! (`tok.encode(corpus_or_path, #{ val_fraction, out })`), and inspecting datasets
//! (`ds.len()`, `ds.sample(batch, ctx)`, `dataset_load(path)`).
//!
//! A [`CorpusHandle`] wraps any `TextSource`; [`open_corpus`] is the one place that decides
//! what `corpus(name_or_path, options)` means: a `corpus` component (the corpora plugin's
//! `stories` and tasks, or a third party's) or a file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use llmlab_plugin_api::{
    Corpus, ExampleSource, Instance, Kind, Split, TextSource, TokenData, Tokenizer,
};
use rhai::{Array, Dynamic, Engine, Map, FLOAT, INT};

use super::tokenizer::{ids_to_array, TokenizerHandle};
use super::{json_to_dynamic, plugin_call, script_error, Host, ScriptResult};
use crate::data::token_dataset::{self, parse_split};
use crate::data::{encode_to_dataset, EncodeOptions, Format, TextFile, TokenDataset};

/// A corpus in scripts: documents of text, from a file or a built-in generator.
#[derive(Clone)]
pub struct CorpusHandle {
    pub source: Arc<dyn TextSource>,
    /// The documents are separate texts: a token dataset puts the end-of-text token after each.
    /// `false` when they are consecutive pieces of one running text (a plain text file).
    pub separate_documents: bool,
    /// Prompt/answer pairs, for corpora that have them (task corpora): what SFT trains on.
    pub examples: Option<Arc<dyn ExampleSource>>,
    /// The component behind a `corpus("name")`: rewards' well-formedness, preference pairs.
    pub corpus: Option<Arc<dyn Corpus>>,
}

impl CorpusHandle {
    /// A corpus of separate documents (JSONL records, generated stories).
    pub fn documents(source: Arc<dyn TextSource>) -> Self {
        CorpusHandle {
            source,
            separate_documents: true,
            examples: None,
            corpus: None,
        }
    }

    /// A corpus component's documents and examples.
    pub fn of_component(corpus: Arc<dyn Corpus>) -> Self {
        CorpusHandle {
            source: corpus.documents(),
            separate_documents: corpus.separate_documents(),
            examples: corpus.examples(),
            corpus: Some(corpus),
        }
    }

    /// A corpus that is one running text handed out in pieces (a plain text file).
    pub fn running_text(source: Arc<dyn TextSource>) -> Self {
        CorpusHandle {
            source,
            separate_documents: false,
            examples: None,
            corpus: None,
        }
    }
}

/// A token dataset in scripts; clones share the mapping.
#[derive(Clone)]
pub struct DatasetHandle {
    pub dataset: Arc<TokenDataset>,
    /// Calls to `sample` without a seed so far: each draws new windows, reproducibly.
    draws: Arc<AtomicU64>,
}

impl DatasetHandle {
    pub fn new(dataset: TokenDataset) -> Self {
        DatasetHandle {
            dataset: Arc::new(dataset),
            draws: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The dataset as the trainers see it.
    #[allow(dead_code)] // for the trainers' script surface
    pub fn data(&self) -> &dyn TokenData {
        &*self.dataset
    }
}

/// What `corpus(spec, options)` names: the one place deciding between corpus components and
/// files. A component's name wins over a file of that name; a name that is neither a component
/// nor an existing path is reported as an unknown corpus (listing the corpora, and libraries
/// refused at start-up), not as a missing file.
pub fn open_corpus(host: &Host, spec: &str, options: &Map) -> ScriptResult<CorpusHandle> {
    let is_component = host
        .registry()
        .get(spec)
        .is_some_and(|e| e.factory.kind() == Kind::Corpus);
    let looks_like_a_name = !spec.contains(['/', '.']) && !Path::new(spec).exists();
    if is_component || looks_like_a_name {
        return match host.create(Kind::Corpus, spec, Dynamic::from(options.clone()))? {
            Instance::Corpus(corpus) => Ok(CorpusHandle::of_component(Arc::from(corpus))),
            other => Err(script_error(format!(
                "corpus(\"{spec}\"): the component made a {}, not a corpus",
                other.kind()
            ))),
        };
    }
    file_corpus(Path::new(spec), options)
}

/// Options of a file corpus: `field` (JSONL), `lossy`, `format` ("text" | "jsonl").
const FILE_OPTIONS: [&str; 3] = ["field", "lossy", "format"];

/// `corpus(path, #{ field, lossy, format })`: a text or JSONL file.
pub fn file_corpus(path: &Path, options: &Map) -> ScriptResult<CorpusHandle> {
    if crate::data::parquet_source::is_parquet(path) {
        return parquet_corpus(path, options);
    }
    check_keys("corpus", options, &FILE_OPTIONS)?;
    let field = options
        .get("field")
        .map(|v| string_option("corpus", "field", v))
        .transpose()?;
    let lossy = options
        .get("lossy")
        .map(|v| {
            v.as_bool().map_err(|t| {
                script_error(format!(
                    "corpus option `lossy` must be true or false, not {t}"
                ))
            })
        })
        .transpose()?
        .unwrap_or(false);
    let format = match options
        .get("format")
        .map(|v| string_option("corpus", "format", v))
        .transpose()?
        .as_deref()
    {
        None => match field {
            Some(field) => Format::Jsonl { field },
            None => TextFile::format_for(path),
        },
        Some("text") if field.is_none() => Format::Text,
        Some("jsonl") => Format::Jsonl {
            field: field.unwrap_or_else(|| "text".into()),
        },
        Some(other) => {
            return Err(script_error(format!(
                "corpus option `format` is \"text\" or \"jsonl\" (`field` implies jsonl), not {other:?}"
            )))
        }
    };
    let separate_documents = matches!(format, Format::Jsonl { .. });
    let file =
        TextFile::open(path, format, lossy).map_err(|e| script_error(format!("corpus: {e}")))?;
    let source: Arc<dyn TextSource> = Arc::new(file);
    Ok(if separate_documents {
        CorpusHandle::documents(source)
    } else {
        CorpusHandle::running_text(source)
    })
}

/// `corpus("x.parquet" | "dir/", #{ field })`: a column of Parquet files, one document per row
/// (`field` defaults to "text"; a `messages` column gives conversations as JSON).
fn parquet_corpus(path: &Path, options: &Map) -> ScriptResult<CorpusHandle> {
    check_keys("corpus (parquet)", options, &["field"])?;
    let field = options
        .get("field")
        .map(|v| string_option("corpus", "field", v))
        .transpose()?
        .unwrap_or_else(|| "text".into());
    let source = crate::data::parquet_source::ParquetSource::open(path, &field)
        .map_err(|e| script_error(format!("corpus: {e}")))?;
    Ok(CorpusHandle::documents(Arc::new(source)))
}

fn check_keys(what: &str, options: &Map, accepted: &[&str]) -> ScriptResult<()> {
    match options.keys().find(|k| !accepted.contains(&k.as_str())) {
        Some(key) => Err(script_error(format!(
            "unknown option `{key}` for {what}; accepted: {}",
            accepted.join(", ")
        ))),
        None => Ok(()),
    }
}

fn string_option(what: &str, key: &str, value: &Dynamic) -> ScriptResult<String> {
    value
        .clone()
        .into_string()
        .map_err(|t| script_error(format!("{what} option `{key}` must be a string, not {t}")))
}

fn number_option(what: &str, key: &str, value: &Dynamic) -> ScriptResult<f64> {
    value
        .as_float()
        .or_else(|_| value.as_int().map(|i| i as FLOAT))
        .map_err(|t| script_error(format!("{what} option `{key}` must be a number, not {t}")))
}

fn positive(what: &str, value: INT) -> ScriptResult<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| script_error(format!("{what} must be a positive integer, not {value}")))
}

const ENCODE_OPTIONS: [&str; 2] = ["val_fraction", "out"];

/// `tok.encode(corpus, #{ val_fraction, out })`.
fn encode_corpus(
    host: &Host,
    tok: &TokenizerHandle,
    corpus: &CorpusHandle,
    options: &Map,
) -> ScriptResult<DatasetHandle> {
    check_keys("encode", options, &ENCODE_OPTIONS)?;
    let val_fraction = options
        .get("val_fraction")
        .map(|v| number_option("encode", "val_fraction", v))
        .transpose()?
        .unwrap_or(0.05);
    let tokenizer = tok.read();
    let out = match options.get("out") {
        Some(v) => PathBuf::from(string_option("encode", "out", v)?),
        None => default_dataset_dir(host, &**tokenizer, &*corpus.source)?,
    };
    let encode = EncodeOptions {
        out,
        val_fraction,
        separate_documents: corpus.separate_documents,
    };
    let dataset = plugin_call("encode", || {
        encode_to_dataset(&**tokenizer, &*corpus.source, &encode, &host.context)
    })?;
    Ok(DatasetHandle::new(dataset))
}

/// `<run dir or runs/>/data/<tokenizer>-<hash of tokenizer and corpus>`: the same tokenizer on
/// the same corpus lands in the same place, different ones never collide.
fn default_dataset_dir(
    host: &Host,
    tokenizer: &dyn Tokenizer,
    source: &dyn TextSource,
) -> ScriptResult<PathBuf> {
    let hash = plugin_call("encode", || token_dataset::tokenizer_hash(tokenizer))?;
    let key = token_dataset::fnv1a64(format!("{hash}\n{}", source.name()).as_bytes());
    let base = host
        .context
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs"));
    Ok(base
        .join("data")
        .join(format!("{}-{:08x}", tokenizer.name(), key >> 32)))
}

fn train(host: &Host, tok: &TokenizerHandle, corpus: &CorpusHandle) -> ScriptResult<()> {
    let mut tokenizer = tok.write();
    let label = format!("train {}", tokenizer.name());
    plugin_call(&label, || tokenizer.train(&*corpus.source, &host.context))
}

fn split_option(options: &Map) -> ScriptResult<Split> {
    match options.get("split") {
        None => Ok(Split::Train),
        Some(v) => parse_split(&string_option("sample", "split", v)?).map_err(script_error),
    }
}

fn sample(
    host: &Host,
    ds: &DatasetHandle,
    batch: INT,
    ctx: INT,
    options: &Map,
) -> ScriptResult<Array> {
    check_keys("sample", options, &["seed", "split"])?;
    let batch = positive("sample: batch", batch)?;
    let ctx_len = positive("sample: ctx", ctx)?;
    let split = split_option(options)?;
    let seed = match options.get("seed") {
        Some(v) => v.as_int().map_err(|t| {
            script_error(format!("sample option `seed` must be an integer, not {t}"))
        })? as u64,
        None => host
            .context
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(ds.draws.fetch_add(1, Ordering::SeqCst)),
    };
    let windows = ds
        .dataset
        .sample_windows(split, batch, ctx_len, seed)
        .map_err(script_error)?;
    Ok(windows
        .iter()
        .map(|w| Dynamic::from(ids_to_array(w)))
        .collect())
}

fn load_dataset(path: &str, tokenizer: Option<&TokenizerHandle>) -> ScriptResult<DatasetHandle> {
    let dir = Path::new(path);
    let dataset = match tokenizer {
        None => TokenDataset::open(dir).map_err(|e| script_error(format!("dataset_load: {e}")))?,
        Some(tok) => {
            let tok = tok.read();
            plugin_call("dataset_load", || TokenDataset::open_for(dir, &**tok))?
        }
    };
    Ok(DatasetHandle::new(dataset))
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    engine.register_type_with_name::<CorpusHandle>("Corpus");
    engine.register_type_with_name::<DatasetHandle>("Dataset");

    let h = host.clone();
    engine.register_fn("corpus", move |spec: &str| {
        open_corpus(&h, spec, &Map::new())
    });
    let h = host.clone();
    engine.register_fn("corpus", move |spec: &str, options: Map| {
        open_corpus(&h, spec, &options)
    });
    engine.register_fn("to_string", |c: &mut CorpusHandle| {
        let bytes = c
            .source
            .approx_bytes()
            .map(|b| format!(", {:.2} MB", b as f64 / 1e6))
            .unwrap_or_default();
        let kind = if c.separate_documents {
            "documents"
        } else {
            "running text"
        };
        format!("corpus {}{bytes}, {kind}", c.source.name())
    });
    engine.register_fn("name", |c: &mut CorpusHandle| c.source.name());
    engine.register_fn(
        "documents",
        |c: &mut CorpusHandle, n: INT| -> ScriptResult<Array> {
            let n = usize::try_from(n).unwrap_or(0);
            // The documents' total is unknown up front (a file streams): count as they come and
            // stop at half the memory available rather than grow until the machine gives out.
            let limit = llmlab_plugin_api::memory::available_bytes().map(|b| b.bytes / 2);
            let mut held = 0u64;
            let mut out = Array::new();
            for document in c.source.documents().take(n) {
                let text = document.map_err(script_error)?;
                held += text.len() as u64 + 64;
                if let Some(limit) = limit.filter(|&limit| held > limit) {
                    return Err(script_error(format!(
                        "{}.documents({n}): the first {} documents already take {}, more than \
                         half the memory available ({}); ask for fewer",
                        c.source.name(),
                        out.len() + 1,
                        llmlab_plugin_api::memory::human_bytes(held as f64),
                        llmlab_plugin_api::memory::human_bytes(limit as f64 * 2.0)
                    )));
                }
                out.push(Dynamic::from(text));
            }
            Ok(out)
        },
    );

    let h = host.clone();
    engine.register_fn("train", move |t: &mut TokenizerHandle, c: CorpusHandle| {
        train(&h, t, &c)
    });
    let h = host.clone();
    engine.register_fn("train", move |t: &mut TokenizerHandle, path: &str| {
        train(&h, t, &file_corpus(Path::new(path), &Map::new())?)
    });
    let h = host.clone();
    engine.register_fn("encode", move |t: &mut TokenizerHandle, c: CorpusHandle| {
        encode_corpus(&h, t, &c, &Map::new())
    });
    let h = host.clone();
    engine.register_fn(
        "encode",
        move |t: &mut TokenizerHandle, c: CorpusHandle, options: Map| {
            encode_corpus(&h, t, &c, &options)
        },
    );
    let h = host.clone();
    engine.register_fn(
        "encode",
        move |t: &mut TokenizerHandle, path: &str, options: Map| {
            let corpus = file_corpus(Path::new(path), &Map::new())?;
            encode_corpus(&h, t, &corpus, &options)
        },
    );

    engine.register_fn("dataset_load", |path: &str| load_dataset(path, None));
    engine.register_fn("dataset_load", |path: &str, tok: TokenizerHandle| {
        load_dataset(path, Some(&tok))
    });
    engine.register_fn("to_string", |d: &mut DatasetHandle| {
        let h = d.dataset.header();
        format!(
            "dataset {} ({} train + {} val tokens, {}, vocab {}, {})",
            d.dataset.dir().display(),
            h.train_tokens,
            h.val_tokens,
            h.dtype.name(),
            h.vocab_size,
            h.tokenizer
        )
    });
    engine.register_fn("len", |d: &mut DatasetHandle| {
        d.dataset.len(Split::Train) as INT
    });
    engine.register_fn(
        "len",
        |d: &mut DatasetHandle, split: &str| -> ScriptResult<INT> {
            let split = parse_split(split).map_err(script_error)?;
            Ok(d.dataset.len(split) as INT)
        },
    );
    engine.register_fn("vocab_size", |d: &mut DatasetHandle| {
        d.dataset.vocab_size() as INT
    });
    engine.register_fn("path", |d: &mut DatasetHandle| {
        d.dataset.dir().display().to_string()
    });
    engine.register_fn("header", |d: &mut DatasetHandle| {
        llmlab_plugin_api::serde_json::to_value(d.dataset.header())
            .map(|v| json_to_dynamic(&v))
            .unwrap_or(Dynamic::UNIT)
    });
    engine.register_fn(
        "tokens",
        |d: &mut DatasetHandle, split: &str, start: INT, n: INT| -> ScriptResult<Array> {
            let split = parse_split(split).map_err(script_error)?;
            let start = usize::try_from(start)
                .map_err(|_| script_error(format!("tokens: start {start} is negative")))?;
            let n = usize::try_from(n)
                .map_err(|_| script_error(format!("tokens: count {n} is negative")))?;
            let mut ids = vec![0; n];
            d.dataset
                .read(split, start, &mut ids)
                .map_err(script_error)?;
            Ok(ids_to_array(&ids))
        },
    );
    let h = host.clone();
    engine.register_fn(
        "sample",
        move |d: &mut DatasetHandle, batch: INT, ctx: INT| sample(&h, d, batch, ctx, &Map::new()),
    );
    let h = host.clone();
    engine.register_fn(
        "sample",
        move |d: &mut DatasetHandle, batch: INT, ctx: INT, options: Map| {
            sample(&h, d, batch, ctx, &options)
        },
    );
}
