//! Encoding a corpus into a [`TokenDataset`] on disk, streaming: one thread reads documents in
//! batches of a few MB while the tokenizer encodes the previous batch in parallel over its
//! documents, and ids go straight to `train.bin` / `val.bin`. Memory stays at a few batches
//! whatever the corpus size.
//!
//! Files are written under temporary names and renamed at the end, header last, so an
//! interrupted run (an error, Ctrl-C) never leaves a dataset that opens.
//!
//! The validation split is chosen deterministically: for separate documents every
//! `1/val_fraction`-th document; for one running text (a text file) its last `val_fraction` of
//! bytes, as nanoGPT does.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use llmlab_plugin_api::serde_json;
use llmlab_plugin_api::{
    files::write_atomic, Context, Error, Result, SpecialToken, Split, TextSource, Tokenizer,
};

use super::token_dataset::{
    split_file, tokenizer_hash, Dtype, Header, TokenDataset, FORMAT, FORMAT_VERSION, HEADER_FILE,
};

/// Text handed to the tokenizer at once.
const BATCH_BYTES: usize = 4 << 20;
const BATCH_DOCUMENTS: usize = 16_384;

#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// The dataset directory (created if missing).
    pub out: PathBuf,
    /// Share of the corpus kept for validation, in `[0, 1)`.
    pub val_fraction: f64,
    /// The source's documents are separate texts: put the tokenizer's end-of-text token after
    /// each. `false` for the pieces of one running text.
    pub separate_documents: bool,
}

/// Decides the split of each document as it streams past.
struct SplitChooser {
    val_fraction: f64,
    /// For a running text: where the validation tail starts, in bytes.
    val_from_byte: Option<u64>,
    index: u64,
    bytes: u64,
}

impl SplitChooser {
    fn new(options: &EncodeOptions, total_bytes: Option<u64>) -> Self {
        let val_from_byte = (!options.separate_documents)
            .then_some(total_bytes)
            .flatten()
            .map(|total| ((1.0 - options.val_fraction) * total as f64).ceil() as u64);
        SplitChooser {
            val_fraction: options.val_fraction,
            val_from_byte,
            index: 0,
            bytes: 0,
        }
    }

    fn choose(&mut self, document_bytes: usize) -> Split {
        let split = match self.val_from_byte {
            Some(from) => {
                if self.bytes >= from && self.val_fraction > 0.0 {
                    Split::Val
                } else {
                    Split::Train
                }
            }
            None => {
                let f = self.val_fraction;
                let i = self.index as f64;
                if ((i + 1.0) * f).floor() > (i * f).floor() {
                    Split::Val
                } else {
                    Split::Train
                }
            }
        };
        self.index += 1;
        self.bytes += document_bytes as u64;
        split
    }
}

/// One split's `.bin` file being written under a temporary name.
struct SplitWriter {
    tmp: PathBuf,
    file: BufWriter<File>,
    dtype: Dtype,
    tokens: u64,
    scratch: Vec<u8>,
}

impl SplitWriter {
    fn create(dir: &Path, split: Split, dtype: Dtype) -> Result<SplitWriter> {
        let tmp = dir.join(format!(".{}.tmp-{}", split_file(split), std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(SplitWriter {
            tmp,
            file: BufWriter::with_capacity(1 << 20, file),
            dtype,
            tokens: 0,
            scratch: Vec::new(),
        })
    }

    fn write(&mut self, ids: &[u32]) -> Result<()> {
        self.scratch.clear();
        match self.dtype {
            Dtype::U16 => {
                for &id in ids {
                    self.scratch.extend_from_slice(&(id as u16).to_le_bytes());
                }
            }
            Dtype::U32 => {
                for &id in ids {
                    self.scratch.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        self.file
            .write_all(&self.scratch)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.tokens += ids.len() as u64;
        Ok(())
    }

    /// Flushes, syncs and renames into `dir/<split>.bin`.
    fn finish(self, final_path: &Path) -> Result<u64> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, final_path).map_err(|e| Error::io(final_path, e))?;
        Ok(self.tokens)
    }
}

struct Batch {
    texts: Vec<String>,
    splits: Vec<Split>,
    bytes: u64,
    /// `-ln p` of this batch's training documents; `None` once any document's is unknown.
    train_nats: Option<f64>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            texts: Vec::new(),
            splits: Vec::new(),
            bytes: 0,
            train_nats: Some(0.0),
        }
    }
}

/// Encodes every document of `source` with `tokenizer` into `options.out`, then opens it.
pub fn encode_to_dataset(
    tokenizer: &dyn Tokenizer,
    source: &dyn TextSource,
    options: &EncodeOptions,
    ctx: &Context,
) -> Result<TokenDataset> {
    if !(0.0..1.0).contains(&options.val_fraction) {
        return Err(Error::msg(format!(
            "val_fraction {} must be at least 0 and below 1",
            options.val_fraction
        )));
    }
    let hash = tokenizer_hash(tokenizer)?;
    let vocab_size = tokenizer.vocab_size();
    let dtype = Dtype::for_vocab(vocab_size);
    let end_of_text = if options.separate_documents {
        tokenizer.special_token(SpecialToken::EndOfText)
    } else {
        None
    };
    let dir = &options.out;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let header_path = dir.join(HEADER_FILE);
    match std::fs::remove_file(&header_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(&header_path, e))
        }
        _ => {}
    }
    let mut train = SplitWriter::create(dir, Split::Train, dtype)?;
    let mut val = SplitWriter::create(dir, Split::Val, dtype)?;
    let tmps = [train.tmp.clone(), val.tmp.clone()];
    let written = stream(
        tokenizer,
        source,
        options,
        ctx,
        end_of_text,
        &mut train,
        &mut val,
    );
    let result = written.and_then(|train_nats| {
        let train_tokens = train.finish(&dir.join(split_file(Split::Train)))?;
        let val_tokens = val.finish(&dir.join(split_file(Split::Val)))?;
        if train_tokens == 0 {
            return Err(Error::Data(format!(
                "{} produced no training tokens: the corpus is empty{}",
                source.name(),
                if val_tokens > 0 {
                    " or too small for val_fraction"
                } else {
                    ""
                }
            )));
        }
        let header = Header {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            dtype,
            train_tokens,
            val_tokens,
            vocab_size,
            tokenizer: tokenizer.name().to_string(),
            tokenizer_hash: hash,
            end_of_text,
            source: source.name(),
            val_fraction: options.val_fraction,
            entropy_floor_nats_per_token: train_nats.map(|nats| nats / train_tokens as f64),
        };
        let text = serde_json::to_string_pretty(&header)?;
        write_atomic(&header_path, text.as_bytes())
    });
    if let Err(error) = result {
        for tmp in &tmps {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(error);
    }
    TokenDataset::open(dir)
}

/// Reads batches on a helper thread and encodes them on this one; returns the training
/// documents' total `-ln p` when the source knows it.
fn stream(
    tokenizer: &dyn Tokenizer,
    source: &dyn TextSource,
    options: &EncodeOptions,
    ctx: &Context,
    end_of_text: Option<u32>,
    train: &mut SplitWriter,
    val: &mut SplitWriter,
) -> Result<Option<f64>> {
    let label = format!("encode {}", source.name());
    let total_bytes = source.approx_bytes();
    let vocab_size = tokenizer.vocab_size();
    let result = std::thread::scope(|scope| -> Result<Option<f64>> {
        let (sender, receiver) = sync_channel::<Result<Batch>>(2);
        scope.spawn(move || {
            let mut chooser = SplitChooser::new(options, total_bytes);
            let mut batch = Batch::new();
            for (index, document) in source.documents().enumerate() {
                if ctx.cancel.is_cancelled() {
                    let _ = sender.send(Err(Error::Cancelled));
                    return;
                }
                match document {
                    Ok(text) => {
                        let split = chooser.choose(text.len());
                        if split == Split::Train {
                            batch.train_nats = batch
                                .train_nats
                                .zip(source.document_nats(index))
                                .map(|(a, b)| a + b);
                        }
                        batch.splits.push(split);
                        batch.bytes += text.len() as u64;
                        batch.texts.push(text);
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error));
                        return;
                    }
                }
                if batch.bytes as usize >= BATCH_BYTES || batch.texts.len() >= BATCH_DOCUMENTS {
                    let full = std::mem::replace(&mut batch, Batch::new());
                    if sender.send(Ok(full)).is_err() {
                        return; // the encoder stopped: nothing more to do
                    }
                }
            }
            if !batch.texts.is_empty() {
                let _ = sender.send(Ok(batch));
            }
        });
        let mut done_bytes = 0;
        let mut nats = Some(0.0);
        for batch in receiver {
            let batch = batch?;
            nats = nats.zip(batch.train_nats).map(|(a, b)| a + b);
            ctx.check_cancelled()?;
            let encoded = tokenizer.encode_batch(&batch.texts)?;
            for (ids, split) in encoded.iter().zip(&batch.splits) {
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
                    return Err(Error::msg(format!(
                        "tokenizer {} produced id {bad}, outside its vocabulary of {vocab_size}",
                        tokenizer.name()
                    )));
                }
                let writer = match split {
                    Split::Train => &mut *train,
                    Split::Val => &mut *val,
                };
                writer.write(ids)?;
                if let Some(eot) = end_of_text {
                    writer.write(&[eot])?;
                }
            }
            done_bytes += batch.bytes;
            ctx.progress(&label, done_bytes, total_bytes, String::new());
        }
        Ok(nats)
    });
    ctx.progress.finish(&label);
    result
}

#[cfg(test)]
mod tests {
    use llmlab_plugin_api::TokenData;

    use super::*;
    use crate::data::token_dataset::split_file;

    /// A byte tokenizer: id = byte value, plus `<eot>` = 256; `extra` pads the vocabulary (to
    /// force `u32` files) and `salt` changes its `tokenizer.json` (a "different" tokenizer).
    #[derive(Clone)]
    struct Bytes {
        extra: usize,
        salt: u32,
    }

    impl Tokenizer for Bytes {
        fn name(&self) -> &str {
            "bytes"
        }
        fn config(&self) -> llmlab_plugin_api::serde_json::Value {
            llmlab_plugin_api::serde_json::Value::Null
        }
        fn train(&mut self, _: &dyn TextSource, _: &Context) -> Result<()> {
            Ok(())
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            let bytes: Vec<u8> = ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect();
            Ok(String::from_utf8_lossy(&bytes).into())
        }
        fn vocab_size(&self) -> usize {
            257 + self.extra
        }
        fn token_to_id(&self, token: &str) -> Option<u32> {
            (token == "<eot>").then_some(256)
        }
        fn id_to_token(&self, id: u32) -> Option<String> {
            (id == 256).then(|| "<eot>".into())
        }
        fn special_token(&self, role: SpecialToken) -> Option<u32> {
            (role == SpecialToken::EndOfText).then_some(256)
        }
        fn to_json(&self) -> Result<String> {
            Ok(format!(
                "{{\"bytes\": {}, \"salt\": {}}}",
                self.extra, self.salt
            ))
        }
        fn clone_box(&self) -> Box<dyn Tokenizer> {
            Box::new(self.clone())
        }
    }

    const BYTES: Bytes = Bytes { extra: 0, salt: 0 };

    struct Docs {
        docs: Vec<String>,
        fail_at: Option<usize>,
        /// `-ln p` of every document, when known.
        nats: Option<f64>,
    }

    impl TextSource for Docs {
        fn name(&self) -> String {
            "docs".into()
        }
        fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
            Box::new(self.docs.iter().enumerate().map(|(i, d)| {
                if Some(i) == self.fail_at {
                    Err(Error::Data("docs: broken at document 3".into()))
                } else {
                    Ok(d.clone())
                }
            }))
        }
        fn approx_bytes(&self) -> Option<u64> {
            Some(self.docs.iter().map(|d| d.len() as u64).sum())
        }
        fn document_nats(&self, _: usize) -> Option<f64> {
            self.nats
        }
    }

    fn docs(n: usize) -> Docs {
        Docs {
            docs: (0..n).map(|i| format!("doc {i}")).collect(),
            fail_at: None,
            nats: None,
        }
    }

    fn options(dir: &Path, separate_documents: bool) -> EncodeOptions {
        EncodeOptions {
            out: dir.join("data"),
            val_fraction: 0.1,
            separate_documents,
        }
    }

    fn all(ds: &TokenDataset, split: Split) -> Vec<u32> {
        let mut ids = vec![0; ds.len(split)];
        ds.read(split, 0, &mut ids).unwrap();
        ids
    }

    #[test]
    fn writes_nanogpt_u16_files_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let ds = encode_to_dataset(
            &BYTES,
            &docs(20),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        let header = ds.header().clone();
        assert_eq!(header.dtype, Dtype::U16);
        assert_eq!(header.vocab_size, 257);
        assert_eq!(header.end_of_text, Some(256));
        assert_eq!(header.tokenizer_hash, tokenizer_hash(&BYTES).unwrap());
        // Every 10th document (indices 9 and 19) is validation; each ends with <eot>.
        let expected_val: Vec<u32> = ["doc 9", "doc 19"]
            .iter()
            .flat_map(|d| d.bytes().map(u32::from).chain([256]))
            .collect();
        assert_eq!(all(&ds, Split::Val), expected_val);
        let train = all(&ds, Split::Train);
        assert_eq!(train.iter().filter(|&&i| i == 256).count(), 18);
        assert_eq!(&train[..6], &[100, 111, 99, 32, 48, 256]); // "doc 0" <eot>
                                                               // The raw file is little-endian u16, as np.memmap(dtype=np.uint16) reads it.
        let raw = std::fs::read(dir.path().join("data").join(split_file(Split::Train))).unwrap();
        assert_eq!(raw.len(), train.len() * 2);
        assert_eq!(&raw[..4], &[100, 0, 111, 0]);
        let json: llmlab_plugin_api::serde_json::Value = llmlab_plugin_api::serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("data").join(HEADER_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(json["dtype"], "u16");
        assert_eq!(json["train_tokens"], train.len());
    }

    #[test]
    fn known_document_probabilities_give_the_entropy_floor() {
        let dir = tempfile::tempdir().unwrap();
        let ds = encode_to_dataset(
            &BYTES,
            &docs(20),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        assert_eq!(ds.entropy_floor_nats_per_token(), None);
        let known = Docs {
            nats: Some(3.0),
            ..docs(20)
        };
        let ds =
            encode_to_dataset(&BYTES, &known, &options(dir.path(), true), &Context::cpu()).unwrap();
        // 18 training documents of 3 nats each over the training tokens.
        let expected = 18.0 * 3.0 / ds.len(Split::Train) as f64;
        assert!((ds.entropy_floor_nats_per_token().unwrap() - expected).abs() < 1e-12);
        let reopened = TokenDataset::open(&dir.path().join("data")).unwrap();
        assert_eq!(
            reopened.entropy_floor_nats_per_token(),
            ds.entropy_floor_nats_per_token()
        );
    }

    #[test]
    fn large_vocabularies_are_stored_as_u32() {
        let dir = tempfile::tempdir().unwrap();
        let tok = Bytes {
            extra: 70_000,
            salt: 0,
        };
        let ds = encode_to_dataset(&tok, &docs(10), &options(dir.path(), true), &Context::cpu())
            .unwrap();
        assert_eq!(ds.header().dtype, Dtype::U32);
        let raw = std::fs::read(dir.path().join("data/train.bin")).unwrap();
        assert_eq!(raw.len(), ds.len(Split::Train) * 4);
        assert_eq!(&all(&ds, Split::Train)[..5], &[100, 111, 99, 32, 48]);
    }

    #[test]
    fn running_text_keeps_its_tail_for_validation_without_separators() {
        let dir = tempfile::tempdir().unwrap();
        let pieces = Docs {
            docs: (0..100).map(|i| format!("line {i:02}\n")).collect(),
            ..docs(0)
        };
        let ds = encode_to_dataset(
            &BYTES,
            &pieces,
            &options(dir.path(), false),
            &Context::cpu(),
        )
        .unwrap();
        assert_eq!(ds.header().end_of_text, None);
        let text =
            |ids: Vec<u32>| String::from_utf8(ids.iter().map(|&i| i as u8).collect()).unwrap();
        let val = text(all(&ds, Split::Val));
        assert!(
            val.starts_with("line 90\n") && val.ends_with("line 99\n"),
            "{val}"
        );
        assert!(text(all(&ds, Split::Train)).ends_with("line 89\n"));
    }

    #[test]
    fn streams_corpora_larger_than_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let many = docs(BATCH_DOCUMENTS * 2 + 5);
        let ds =
            encode_to_dataset(&BYTES, &many, &options(dir.path(), true), &Context::cpu()).unwrap();
        let expected: usize = many.docs.iter().map(|d| d.len() + 1).sum();
        assert_eq!(ds.len(Split::Train) + ds.len(Split::Val), expected);
        let val_documents = all(&ds, Split::Val).iter().filter(|&&i| i == 256).count();
        assert!(
            val_documents.abs_diff(many.docs.len() / 10) <= 1,
            "{val_documents}"
        );
    }

    #[test]
    fn windows_are_in_bounds_and_deterministic_under_a_seed() {
        let dir = tempfile::tempdir().unwrap();
        let ds = encode_to_dataset(
            &BYTES,
            &docs(200),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        let train = all(&ds, Split::Train);
        let a = ds.sample_windows(Split::Train, 64, 16, 7).unwrap();
        assert_eq!(a, ds.sample_windows(Split::Train, 64, 16, 7).unwrap());
        assert_ne!(a, ds.sample_windows(Split::Train, 64, 16, 8).unwrap());
        for window in &a {
            assert_eq!(window.len(), 17);
            // Each window is a contiguous slice of the split.
            assert!(train.windows(17).any(|w| w == window.as_slice()));
        }
        // A window as long as the split always starts at 0.
        let whole = ds
            .sample_windows(Split::Val, 3, ds.len(Split::Val) - 1, 1)
            .unwrap();
        assert!(whole.iter().all(|w| *w == all(&ds, Split::Val)));
        let error = ds
            .sample_windows(Split::Val, 1, ds.len(Split::Val), 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("fewer than ctx + 1"), "{error}");
        let mut out = [0; 4];
        let error = ds
            .read(Split::Train, train.len() - 2, &mut out)
            .unwrap_err()
            .to_string();
        assert!(error.contains("past the end of the train split"), "{error}");
    }

    #[test]
    fn reopening_checks_the_tokenizer_and_the_file_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data");
        encode_to_dataset(
            &BYTES,
            &docs(30),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        assert!(TokenDataset::open_for(&out, &BYTES).is_ok());
        let other = Bytes { extra: 0, salt: 1 };
        let error = TokenDataset::open_for(&out, &other)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("dataset.json: made by tokenizer bytes"),
            "{error}"
        );
        assert!(error.contains("encode the corpus again"), "{error}");
        // A truncated split file is refused, naming it.
        let train = out.join("train.bin");
        let len = std::fs::metadata(&train).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&train)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let error = TokenDataset::open(&out).err().unwrap().to_string();
        assert!(
            error.contains("train.bin") && error.contains("promises"),
            "{error}"
        );
        // A header that is not one.
        std::fs::write(out.join(HEADER_FILE), "{\"format\": 1}").unwrap();
        let error = TokenDataset::open(&out).err().unwrap().to_string();
        assert!(error.contains("not a token dataset header"), "{error}");
        let error = TokenDataset::open(&dir.path().join("nowhere"))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("nowhere"), "{error}");
    }

    #[test]
    fn failures_leave_no_dataset_behind() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data");
        encode_to_dataset(
            &BYTES,
            &docs(30),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        let broken = Docs {
            fail_at: Some(3),
            ..docs(30)
        };
        let error = encode_to_dataset(&BYTES, &broken, &options(dir.path(), true), &Context::cpu())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(error, "docs: broken at document 3");
        assert!(TokenDataset::open(&out).is_err(), "the old header is gone");
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let ctx = Context::cpu();
        ctx.cancel.cancel();
        let error = encode_to_dataset(&BYTES, &docs(30), &options(dir.path(), true), &ctx)
            .err()
            .unwrap();
        assert!(matches!(error, Error::Cancelled), "{error}");
        let error = encode_to_dataset(
            &BYTES,
            &docs(0),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("docs produced no training tokens"),
            "{error}"
        );
        let bad = EncodeOptions {
            val_fraction: 1.0,
            ..options(dir.path(), true)
        };
        let error = encode_to_dataset(&BYTES, &docs(3), &bad, &Context::cpu())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("val_fraction 1"), "{error}");
    }
}
