//! Throughput of the `bpe` component, measured as `bench/hf_tokenizers.py` measures Python's
//! `tokenizers`: read the file (invalid UTF-8 replaced), train a byte-level BPE of VOCAB on its
//! lines (split on "\n", newline kept; min_frequency 0, no special tokens), then encode all lines
//! in batches of 4096 with `Tokenizer::encode_batch`. Threads: RAYON_NUM_THREADS (the runtime's
//! pool). Prints one JSON line.
//!
//! ```text
//! cargo run --release -p llmlab-tokenizers --example bench_bpe -- CORPUS [--vocab 8192]
//!     [--save tokenizer.json] [--ids-out ids.u32] [--profile]
//! ```
//!
//! `--profile` adds where the time goes: counting pre-tokens vs. learning merges (the two
//! halves of the fast trainer, timed separately), and encoding with the wrapped `tokenizers`
//! crate itself (`encode_batch_fast`, its regex path) for comparison.

use std::time::Instant;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TextSource;
use llmlab_tokenizers::bpe::BpeConfig;
use llmlab_tokenizers::tokenizer::{HfTokenizer, Recipe};

/// The file's lines (newlines kept).
struct Lines(Vec<String>);

impl TextSource for Lines {
    fn name(&self) -> String {
        "bench corpus".into()
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(self.0.iter().cloned().map(Ok))
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(self.0.iter().map(|l| l.len() as u64).sum())
    }
}

fn main() -> std::result::Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_bpe CORPUS [--vocab N] [--save PATH] [--ids-out PATH]";
    let path = args.first().ok_or(usage)?;
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).cloned().ok_or(usage))
            .transpose()
    };
    let vocab: usize = match option("--vocab")? {
        Some(v) => v.parse().map_err(|_| usage)?,
        None => 8192,
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let mb = text.len() as f64 / 1e6;

    let config = BpeConfig {
        vocab_size: vocab,
        min_frequency: 0,
        special_tokens: vec![],
        ..BpeConfig::default()
    };
    let ctx = Context::cpu();
    let mut tok = HfTokenizer::new(Recipe::Bpe(config.clone())).map_err(|e| e.to_string())?;
    let corpus = Lines(lines);
    let start = Instant::now();
    tok.train(&corpus, &ctx).map_err(|e| e.to_string())?;
    let train_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut encoded: Vec<Vec<u32>> = Vec::with_capacity(corpus.0.len());
    for batch in corpus.0.chunks(4096) {
        encoded.extend(tok.encode_batch(batch).map_err(|e| e.to_string())?);
    }
    let encode_s = start.elapsed().as_secs_f64();
    let tokens: usize = encoded.iter().map(Vec::len).sum();
    if let Some(save) = option("--save")? {
        std::fs::write(&save, tok.to_json().map_err(|e| e.to_string())?)
            .map_err(|e| format!("{save}: {e}"))?;
    }
    if let Some(out) = option("--ids-out")? {
        let raw: Vec<u8> = encoded
            .iter()
            .flatten()
            .flat_map(|id| id.to_le_bytes())
            .collect();
        std::fs::write(&out, raw).map_err(|e| format!("{out}: {e}"))?;
    }
    let mut profile = json!({});
    if args.iter().any(|a| a == "--profile") {
        use llmlab_tokenizers::fast_bpe::train::{count_pieces, learn};
        use llmlab_tokenizers::pretokenize::Splitter;
        let start = Instant::now();
        let counts =
            count_pieces(&corpus, Splitter::GPT2, &ctx, "bpe").map_err(|e| e.to_string())?;
        let count_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let learned = learn(&counts, &llmlab_tokenizers::bpe::fast_settings(&config));
        let learn_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut hf_tokens = 0;
        for batch in corpus.0.chunks(4096) {
            let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
            let encodings = tok
                .inner()
                .encode_batch_fast(batch, false)
                .map_err(|e| e.to_string())?;
            hf_tokens += encodings.iter().map(|e| e.get_ids().len()).sum::<usize>();
        }
        let hf_s = start.elapsed().as_secs_f64();
        profile = json!({
            "count_s": count_s,
            "learn_s": learn_s,
            "distinct_pretokens": counts.len(),
            "merges": learned.merges.len(),
            "tokenizers_crate_encode_mb_s": mb / hf_s,
            "tokenizers_crate_tokens": hf_tokens,
        });
    }
    let round = |x: f64, digits: i32| (x * 10f64.powi(digits)).round() / 10f64.powi(digits);
    println!(
        "{}",
        json!({
            "peer": "llmlab-bpe",
            "vocab": vocab,
            "mb": round(mb, 2),
            "train_s": round(train_s, 3),
            "encode_mb_s": round(mb / encode_s, 2),
            "tokens": tokens,
            "fast_path": tok.is_fast(),
            "threads": llmlab_plugin_api::rayon::current_num_threads(),
            "profile": profile,
        })
    );
    Ok(())
}
