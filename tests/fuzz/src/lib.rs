//! Fuzz entry points: one function per parser of input a user (or an attacker) controls, each
//! driving the real code path from bytes on disk to a usable object, and a valid seed input for
//! each built by the real writers, so seeds never drift from the formats.
//!
//! Two drivers share these: the cargo-fuzz targets in `libfuzzer/` (nightly, coverage-guided,
//! run for minutes; see docs/reliability.md) and `tests/parsers.rs` (stable proptest, bounded, in
//! CI). An entry returns normally for every input: `Ok` or a clear `Err`. A panic, an abort
//! (allocation failure), a hang or a signal is a finding.
//!
//! Inputs made of several files are the files' bytes joined by [`PART_SEPARATOR`].

use std::path::{Path, PathBuf};

use llmlab::data::text_file::{Format, TextFile};
use llmlab::data::token_dataset::{self, TokenDataset};
use llmlab_plugin_api::candle::{DType, Device, Tensor};
use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::data::TextSource;
use llmlab_plugin_api::model::{ForwardOptions, Model};
use llmlab_plugin_api::serde_json::{self, json};
use llmlab_plugin_api::tokenizer::Tokenizer;
use llmlab_plugin_api::{Context, Split};

/// Joins the files of a multi-file input. Long and unlikely enough that a fuzzer finds it only
/// through the seeds, which keeps mutations mostly inside one file.
pub const PART_SEPARATOR: &[u8] = b"\n--llmlab-fuzz-part--\n";

/// An entry point: `true` when the input was accepted all the way (a loaded, usable object).
pub type Entry = fn(&[u8]) -> bool;

/// Every target: its name (the cargo-fuzz target and corpus folder) and its entry point.
pub const TARGETS: &[(&str, Entry)] = &[
    ("declaration", declaration),
    ("dataset_header", dataset_header),
    ("checkpoint_manifest", checkpoint_manifest),
    ("tokenizer_json", tokenizer_json),
    ("gguf", gguf),
    ("safetensors_config", safetensors_config),
    ("jsonl", jsonl),
    ("rhai_config", rhai_config),
];

/// The entry point of target `name`.
pub fn entry(name: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Splits a multi-file input into exactly `n` parts (missing ones empty).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match find(rest, PART_SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + PART_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[][..]);
    out
}

/// Joins files into one input ([`parts`] inverts it).
pub fn join(files: &[&[u8]]) -> Vec<u8> {
    files.join(PART_SEPARATOR)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A scratch directory holding `files`; removed when dropped.
fn scratch(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).expect("write a scratch file");
    }
    dir
}

/// Runs the model on one token, as the first thing a user does with a loaded model.
fn first_forward(model: &dyn Model) -> bool {
    if model.vocab_size() == 0 {
        return false;
    }
    Tensor::new(&[[0u32]], model.device())
        .map(|ids| model.forward(&ids, &ForwardOptions::default()).is_ok())
        .unwrap_or(false)
}

/// The plugin declaration: the fingerprint text parser, and the loader's reading of the
/// declaration symbol out of a library file (without ever opening it as a library).
pub fn declaration(data: &[u8]) -> bool {
    let text = llmlab_plugin_api::Fingerprint::parse(&String::from_utf8_lossy(data)).is_ok();
    let dir = scratch(&[("libfuzzed.so", data)]);
    let library = llmlab::loader::read_declaration(&dir.path().join("libfuzzed.so")).is_ok();
    text || library
}

/// A token dataset: `dataset.json`, `train.bin`, `val.bin`; opened and sampled from.
pub fn dataset_header(data: &[u8]) -> bool {
    let p = parts(data, 3);
    let dir = scratch(&[
        (token_dataset::HEADER_FILE, p[0]),
        ("train.bin", p[1]),
        ("val.bin", p[2]),
    ]);
    match TokenDataset::open(dir.path()) {
        Ok(dataset) => [Split::Train, Split::Val]
            .into_iter()
            .all(|split| dataset.sample_windows(split, 2, 4, 7).is_ok()),
        Err(_) => false,
    }
}

/// A trainer checkpoint: `trainer.json`, `model.safetensors`, `optimizer.safetensors`.
pub fn checkpoint_manifest(data: &[u8]) -> bool {
    use llmlab_train::trainer_checkpoint as ckpt;
    let p = parts(data, 3);
    let dir = scratch(&[
        (ckpt::MANIFEST, p[0]),
        (ckpt::MODEL_FILE, p[1]),
        (ckpt::OPTIMIZER_FILE, p[2]),
    ]);
    ckpt::load(dir.path()).is_ok_and(|checkpoint| checkpoint.manifest.rng_state().is_ok())
}

/// A `tokenizer.json` file, loaded as each tokenizer kind and used.
pub fn tokenizer_json(data: &[u8]) -> bool {
    let dir = scratch(&[("tokenizer.json", data)]);
    let path = dir.path().join("tokenizer.json");
    let mut accepted = false;
    for component in ["bpe", "wordpiece"] {
        if let Ok(tok) = llmlab_tokenizers::tokenizer::HfTokenizer::load(&path, component) {
            let _ = tok.vocab_size();
            if let Ok(ids) = tok.encode("Once upon a time, 12 cats said \"héllo\" 🐈.") {
                accepted |= tok.decode(&ids).is_ok();
            }
        }
    }
    accepted
}

/// A GGUF model file, loaded and run.
pub fn gguf(data: &[u8]) -> bool {
    let dir = scratch(&[("model.gguf", data)]);
    llmlab_gpt::gguf::load(&dir.path().join("model.gguf"), &Context::cpu())
        .is_ok_and(|model| first_forward(&model))
}

/// A saved model directory: `config.json` and `model.safetensors`, loaded and run.
pub fn safetensors_config(data: &[u8]) -> bool {
    use llmlab_gpt::save_load::{CONFIG_FILE, WEIGHTS_FILE};
    let p = parts(data, 2);
    let dir = scratch(&[(CONFIG_FILE, p[0]), (WEIGHTS_FILE, p[1])]);
    llmlab_gpt::save_load::load(dir.path(), &Context::cpu())
        .is_ok_and(|model| first_forward(&model))
}

/// JSONL files: documents (strict and lossy UTF-8) and preference pairs.
pub fn jsonl(data: &[u8]) -> bool {
    let dir = scratch(&[("data.jsonl", data)]);
    let path = dir.path().join("data.jsonl");
    let mut documents = false;
    for lossy in [false, true] {
        let format = Format::Jsonl {
            field: "text".to_string(),
        };
        if let Ok(file) = TextFile::open(&path, format, lossy) {
            // Bounded: a fuzzed file is small, but a reader that never ends must not hang the run.
            let read: Result<Vec<String>, _> = file.documents().take(10_000).collect();
            documents |= read.is_ok_and(|d| !d.is_empty());
        }
    }
    let pairs = llmlab::data::preferences::parse(&path, &String::from_utf8_lossy(data))
        .is_ok_and(|p| !p.is_empty());
    documents || pairs
}

/// A config written in Rhai, as a script passes it: evaluated under limits, converted to JSON
/// and checked by the typed configs of the model and the trainer; `--set` overrides too.
pub fn rhai_config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut engine = rhai::Engine::new_raw();
    engine
        .set_max_operations(20_000)
        .set_max_string_size(10_000)
        .set_max_array_size(10_000)
        .set_max_map_size(10_000)
        .set_max_expr_depths(32, 32)
        .set_max_call_levels(8);
    let mut accepted = false;
    let mut lines = text.lines();
    if let Some(Ok(value)) = lines
        .next()
        .map(|l| engine.eval_expression::<rhai::Dynamic>(l))
    {
        if let Ok(json) = llmlab::script::dynamic_to_json(value) {
            let model = llmlab_gpt::GptConfig::from_json("gpt", &json).is_ok();
            let trainer = llmlab_train::TrainConfig::from_json("lm", &json).is_ok();
            let _ = llmlab::script::json_to_dynamic(&json);
            accepted = model || trainer;
        }
    }
    // The remaining lines are `--set` overrides.
    let overrides: Vec<String> = lines.map(str::to_string).collect();
    accepted && llmlab::script::Overrides::parse(&overrides).is_ok()
}

/// Writes target `name`'s seeds into the folder `LLMLAB_FUZZ_SEEDS` names, if set, and the plugin
/// library `LLMLAB_FUZZ_PLUGIN` names as a declaration seed: the cargo-fuzz targets call this
/// once at start-up, so a corpus folder starts from valid inputs made by this build's writers.
pub fn seed_corpus_from_env(name: &str) {
    let Some(dir) = std::env::var_os("LLMLAB_FUZZ_SEEDS").map(PathBuf::from) else {
        return;
    };
    let plugin = std::env::var_os("LLMLAB_FUZZ_PLUGIN").map(PathBuf::from);
    std::fs::create_dir_all(&dir).expect("create the corpus folder");
    for (i, seed) in seeds(name, plugin.as_deref()).iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write a seed");
    }
}

/// Valid inputs for target `name`, made by the real writers (and, for `declaration`, a built
/// plugin library when `plugin` names one).
pub fn seeds(name: &str, plugin: Option<&Path>) -> Vec<Vec<u8>> {
    match name {
        "declaration" => {
            let mut seeds = vec![llmlab_plugin_api::FINGERPRINT.as_bytes().to_vec()];
            if let Some(bytes) = plugin.and_then(|p| std::fs::read(p).ok()) {
                seeds.push(bytes);
            }
            seeds
        }
        "dataset_header" => vec![seed_dataset()],
        "checkpoint_manifest" => vec![seed_checkpoint()],
        "tokenizer_json" => ["bpe.json", "wordpiece.json"]
            .iter()
            .filter_map(|f| std::fs::read(fixtures().join("tokenizer").join(f)).ok())
            .collect(),
        "gguf" => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("model.gguf");
            llmlab_gpt::gguf::save(&tiny_gpt(), &path).expect("save a GGUF seed");
            vec![std::fs::read(path).expect("read the GGUF seed")]
        }
        "safetensors_config" => {
            let dir = tempfile::tempdir().expect("temp dir");
            llmlab_gpt::save_load::save(&tiny_gpt(), dir.path()).expect("save a model seed");
            let read = |f: &str| std::fs::read(dir.path().join(f)).expect("read the model seed");
            vec![join(&[
                &read(llmlab_gpt::save_load::CONFIG_FILE),
                &read(llmlab_gpt::save_load::WEIGHTS_FILE),
            ])]
        }
        "jsonl" => vec![
            b"{\"text\": \"Once upon a time.\"}\n{\"text\": \"The end.\", \"id\": 2}\n".to_vec(),
            b"{\"prompt\": \"1+1=\", \"chosen\": \"2\", \"rejected\": \"3\"}\n".to_vec(),
        ],
        "rhai_config" => vec![
            b"#{ vocab_size: 64, n_layer: 2, n_head: 2, d_model: 32, ctx: 16, norm: \"rms\", pos: \"rope\", mlp: \"swiglu\" }".to_vec(),
            b"#{ steps: 20, batch_size: 4, lr: 3e-3, warmup: 5 }\ngpt.n_layer=3\nlm.steps=5".to_vec(),
        ],
        _ => Vec::new(),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A 1-layer GPT small enough that its files make good fuzzing seeds.
pub fn tiny_gpt() -> llmlab_gpt::Gpt {
    let config = json!({ "vocab_size": 16, "n_layer": 1, "n_head": 2, "d_model": 8, "ctx": 8 });
    llmlab_gpt::new_gpt(&config, &Context::cpu()).expect("build the seed model")
}

fn seed_dataset() -> Vec<u8> {
    let vocab_size = 16;
    let dtype = token_dataset::Dtype::for_vocab(vocab_size);
    let tokens = |n: u64| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let id = (i % vocab_size as u64) as u32;
                id.to_le_bytes()[..dtype.width_bytes()].to_vec()
            })
            .collect()
    };
    let header = token_dataset::Header {
        format: token_dataset::FORMAT.to_string(),
        version: token_dataset::FORMAT_VERSION,
        dtype,
        train_tokens: 40,
        val_tokens: 10,
        vocab_size,
        tokenizer: "bpe".to_string(),
        tokenizer_hash: "0000000000000000".to_string(),
        end_of_text: Some(0),
        source: "fuzz seed".to_string(),
        val_fraction: 0.2,
        entropy_floor_nats_per_token: None,
    };
    let header = serde_json::to_vec_pretty(&header).expect("header JSON");
    join(&[&header, &tokens(40), &tokens(10)])
}

fn seed_checkpoint() -> Vec<u8> {
    use llmlab_train::trainer_checkpoint as ckpt;
    let model = tiny_gpt();
    let weights: Vec<(String, Tensor)> = model
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let moments: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(n, t)| {
            let zeros = Tensor::zeros(t.shape(), DType::F32, &Device::Cpu).expect("zeros");
            (format!("{n}.m"), zeros)
        })
        .collect();
    let manifest = ckpt::Manifest {
        format: ckpt::FORMAT.to_string(),
        version: ckpt::VERSION,
        trainer: "lm".to_string(),
        step: 3,
        optimizer_steps: 3,
        rng_state: ckpt::format_rng_state(42),
        cursor: llmlab_train::batches::DataCursor::default(),
        config: json!({}),
        model: ckpt::ModelInfo {
            name: "gpt".to_string(),
            config: model.config(),
        },
        files: Default::default(),
        loss_scale: None,
        data: None,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("checkpoint");
    ckpt::save(&path, manifest, &weights, &moments).expect("save the checkpoint seed");
    let read = |f: &str| std::fs::read(path.join(f)).expect("read the checkpoint seed");
    join(&[
        &read(ckpt::MANIFEST),
        &read(ckpt::MODEL_FILE),
        &read(ckpt::OPTIMIZER_FILE),
    ])
}
