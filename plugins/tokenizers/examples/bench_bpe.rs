//! Throughput of the `bpe` component, measured exactly as `../shared/bench/hf_tokenizers.py`
//! measures Python's `tokenizers`: read the file (invalid UTF-8 replaced), train a byte-level BPE
//! of VOCAB on its lines, then encode all lines in batches of 4096. Prints one JSON line.
//!
//! ```text
//! cargo run --release -p llmlab-tokenizers --example bench_bpe -- CORPUS [--vocab 8192]
//! ```

use std::time::Instant;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::TextSource;
use llmlab_tokenizers::bpe::Bpe;

/// The file's lines (newlines kept), as the Python reference feeds them.
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
    let usage = "usage: bench_bpe CORPUS [--vocab N]";
    let path = args.first().ok_or(usage)?;
    let vocab: usize = match args.iter().position(|a| a == "--vocab") {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or(usage)?,
        None => 8192,
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let mb = text.len() as f64 / 1e6;

    // min_frequency 0 as in the reference (BpeTrainer's default there).
    let config = json!({ "vocab_size": vocab, "min_frequency": 0, "special_tokens": [] });
    let ctx = Context::cpu();
    let mut tok = match Bpe.create(&config, &ctx).map_err(|e| e.to_string())? {
        Instance::Tokenizer(t) => t,
        _ => return Err("bpe did not make a tokenizer".into()),
    };
    let corpus = Lines(lines);
    let start = Instant::now();
    tok.train(&corpus, &ctx).map_err(|e| e.to_string())?;
    let train_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut tokens = 0;
    for batch in corpus.0.chunks(4096) {
        tokens += tok
            .encode_batch(batch)
            .map_err(|e| e.to_string())?
            .iter()
            .map(Vec::len)
            .sum::<usize>();
    }
    let encode_s = start.elapsed().as_secs_f64();
    let round = |x: f64, digits: i32| (x * 10f64.powi(digits)).round() / 10f64.powi(digits);
    println!(
        "{}",
        json!({
            "peer": "llmlab-bpe",
            "vocab": vocab,
            "mb": round(mb, 2),
            "train_s": round(train_s, 2),
            "encode_mb_s": round(mb / encode_s, 2),
            "tokens": tokens,
            "bytes_per_token": round(mb * 1e6 / tokens as f64, 3),
            "threads": llmlab_plugin_api::rayon::current_num_threads(),
        })
    );
    Ok(())
}
