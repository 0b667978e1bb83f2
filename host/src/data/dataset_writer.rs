//! Encoding a corpus into a [`TokenDataset`] on disk, streaming: one thread reads documents in
//! batches of a few MB while the tokenizer encodes the previous batch in parallel over its
//! documents, and ids go straight to `train.bin` / `val.bin`. Memory stays at a few batches
//! whatever the corpus size.
//!
//! The new dataset is built whole in a hidden staging directory beside the target
//! (`.<name>.tmp-<pid>`) and swapped in at the end, so an interrupted or failed encode (an
//! error, Ctrl-C, a full disk) never leaves a half-written dataset that opens and never harms
//! the dataset already there: it still opens, unchanged. The swap is one atomic
//! `renameat2(RENAME_EXCHANGE)` on Linux when the target holds only a dataset's files. A target
//! that holds other files too, or sits on another filesystem than its parent (a mount point),
//! gets its staging directory inside it instead, and the three files are renamed in, header
//! last (the old header is removed first, so a crash in that instant leaves no dataset that
//! opens, never a mixed one). Staging directories and temp files of killed processes are removed
//! by the next encode into the same place.
//!
//! The validation split is chosen deterministically: for separate documents every
//! `1/val_fraction`-th document; for one running text (a text file) its last `val_fraction` of
//! tokens, moved from the end of `train.bin` once the whole text is encoded (as nanoGPT splits
//! its token array). Counting tokens, not pieces or bytes, keeps the share exact whatever the
//! line lengths (one long line is one piece) or the replacement characters of a lossy read.

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
use crate::runs::remove_stale_temps;

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

/// Decides the split of each document as it streams past. The pieces of a running text all go
/// to training; its validation tail is cut off afterwards ([`SplitWriter::move_tail_to`]).
struct SplitChooser {
    val_fraction: f64,
    running_text: bool,
    index: u64,
}

impl SplitChooser {
    fn new(options: &EncodeOptions) -> Self {
        SplitChooser {
            val_fraction: options.val_fraction,
            running_text: !options.separate_documents,
            index: 0,
        }
    }

    fn choose(&mut self) -> Split {
        let f = self.val_fraction;
        let i = self.index as f64;
        self.index += 1;
        if !self.running_text && ((i + 1.0) * f).floor() > (i * f).floor() {
            Split::Val
        } else {
            Split::Train
        }
    }
}

/// Tokens of a running text of `tokens` that go to validation: what is left after the first
/// `floor(tokens * (1 - val_fraction))`, as nanoGPT's `data[:int(n * 0.9)]` split leaves it.
fn running_text_val_tokens(tokens: u64, val_fraction: f64) -> u64 {
    if val_fraction <= 0.0 {
        return 0;
    }
    tokens - ((tokens as f64) * (1.0 - val_fraction)).floor() as u64
}

/// One split's `.bin` file being written inside the staging directory.
struct SplitWriter {
    path: PathBuf,
    file: BufWriter<File>,
    dtype: Dtype,
    tokens: u64,
    scratch: Vec<u8>,
}

impl SplitWriter {
    fn create(dir: &Path, split: Split, dtype: Dtype) -> Result<SplitWriter> {
        let path = dir.join(split_file(split));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(SplitWriter {
            path,
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
            .map_err(|e| Error::io(&self.path, e))?;
        self.tokens += ids.len() as u64;
        Ok(())
    }

    /// Moves the last `tokens` tokens of this file to the end of `other` (same dtype), in chunks,
    /// and truncates this file before them.
    fn move_tail_to(&mut self, other: &mut SplitWriter, tokens: u64) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let tokens = tokens.min(self.tokens);
        let width = self.dtype.width_bytes() as u64;
        let keep = (self.tokens - tokens) * width;
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        let mut reader = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        reader
            .seek(SeekFrom::Start(keep))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut chunk = vec![0u8; (1 << 20) - (1 << 20) % width as usize];
        let mut left = tokens * width;
        while left > 0 {
            let n = (chunk.len() as u64).min(left) as usize;
            reader
                .read_exact(&mut chunk[..n])
                .map_err(|e| Error::io(&self.path, e))?;
            other
                .file
                .write_all(&chunk[..n])
                .map_err(|e| Error::io(&other.path, e))?;
            left -= n as u64;
        }
        self.file
            .get_ref()
            .set_len(keep)
            .map_err(|e| Error::io(&self.path, e))?;
        self.tokens -= tokens;
        other.tokens += tokens;
        Ok(())
    }

    /// Flushes and syncs; returns the number of tokens written.
    fn finish(self) -> Result<u64> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.tokens)
    }
}

/// The files that make a dataset, header last: what a swap moves.
const DATASET_FILES: [&str; 3] = ["train.bin", "val.bin", HEADER_FILE];

/// Where a new dataset is built before it replaces `out`.
struct Staging {
    dir: PathBuf,
    /// Beside `out` (whole-directory swap) rather than inside it (file-by-file swap).
    beside: bool,
}

impl Staging {
    /// Chooses and creates the staging directory for `out`, first removing what killed
    /// processes left: their staging directories and the temp files of older versions.
    fn create(out: &Path) -> Result<Staging> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .ok_or_else(|| Error::msg(format!("{}: not a directory path", out.display())))?
            .to_string_lossy()
            .into_owned();
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        remove_stale_temps(parent, |base| base == name);
        if out.is_dir() {
            remove_stale_temps(out, |base| {
                base == INSIDE_STAGING || DATASET_FILES.contains(&base)
            });
        } else if out.exists() {
            return Err(Error::msg(format!(
                "{}: exists and is not a directory; a dataset is a directory",
                out.display()
            )));
        }
        let pid = std::process::id();
        let beside = parent.join(format!(".{name}.tmp-{pid}"));
        let inside = out.join(format!(".{INSIDE_STAGING}.tmp-{pid}"));
        // Other files in `out` must stay where they are, and a rename cannot cross filesystems.
        let in_place = out.exists() && (!only_dataset_files(out)? || !same_filesystem(parent, out));
        let candidates: Vec<(PathBuf, bool)> = if in_place {
            vec![(inside, false)]
        } else {
            // An unwritable parent (a dataset directory made for us in a read-only place)
            // still lets us stage inside the dataset directory.
            vec![(beside, true), (inside, false)]
        };
        let mut last_error = None;
        for (dir, beside) in candidates {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            if !beside {
                std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Staging { dir, beside }),
                Err(e) => last_error = Some(Error::io(&dir, e)),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::msg("no staging directory")))
    }

    /// Puts the finished dataset in place of `out` (see the module docs).
    fn install(self, out: &Path) -> Result<()> {
        sync_dir(&self.dir)?;
        if self.beside {
            let renamed = match std::fs::rename(&self.dir, out) {
                Ok(()) => true,
                // Another process installed a dataset here since `create` looked (parallel sweep
                // workers encoding the same cached corpus): replace it like any dataset there.
                Err(_) if out.is_dir() => false,
                Err(e) => return Err(Error::io(out, e)),
            };
            if !renamed {
                exchange_directories(&self.dir, out)?;
                // `self.dir` now holds the previous dataset.
                if let Err(error) = std::fs::remove_dir_all(&self.dir) {
                    llmlab_plugin_api::tracing::warn!(
                        %error,
                        "could not remove the previous dataset, moved aside to {}",
                        self.dir.display()
                    );
                }
            }
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        } else {
            let header = out.join(HEADER_FILE);
            match std::fs::remove_file(&header) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&header, e))
                }
                _ => {}
            }
            for file in DATASET_FILES {
                std::fs::rename(self.dir.join(file), out.join(file))
                    .map_err(|e| Error::io(out.join(file), e))?;
            }
            sync_dir(out)?;
            let _ = std::fs::remove_dir(&self.dir);
        }
        Ok(())
    }

    /// Removes the staging directory after a failure.
    fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `<name>` of the staging directory made inside a dataset directory: `.encode.tmp-<pid>`.
const INSIDE_STAGING: &str = "encode";

/// Whether `dir` holds nothing but a dataset's files (and temp files), so swapping the whole
/// directory moves nothing else with it.
fn only_dataset_files(dir: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let temp = name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-"));
        if !DATASET_FILES.contains(&name.as_ref()) && !temp {
            return Ok(false);
        }
    }
    Ok(true)
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Swaps the directories `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`); where the kernel
/// or filesystem cannot, moves `b` aside to `a`'s place through a third name (two renames).
fn exchange_directories(a: &Path, b: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::msg(format!("{}: path contains a NUL byte", p.display())))
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two valid NUL-terminated paths relative to the working directory.
        let result = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if result == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if !matches!(
            error.raw_os_error(),
            Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
        ) {
            return Err(Error::io(b, error));
        }
    }
    let name = b.file_name().unwrap_or_default().to_string_lossy();
    let aside = b.with_file_name(format!(".{name}.old-{}", std::process::id()));
    std::fs::rename(b, &aside).map_err(|e| Error::io(b, e))?;
    std::fs::rename(a, b).map_err(|e| Error::io(b, e))?;
    std::fs::rename(&aside, a).map_err(|e| Error::io(a, e))
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
    // A symlinked dataset directory is replaced where it points, not by a real directory.
    let out = std::fs::canonicalize(&options.out).unwrap_or_else(|_| options.out.clone());
    let staging = Staging::create(&out)?;
    let dir = &staging.dir;
    let result = (|| {
        let mut train = SplitWriter::create(dir, Split::Train, dtype)?;
        let mut val = SplitWriter::create(dir, Split::Val, dtype)?;
        let train_nats = stream(
            tokenizer,
            source,
            options,
            ctx,
            end_of_text,
            &mut train,
            &mut val,
        )?;
        if !options.separate_documents {
            let tail = running_text_val_tokens(train.tokens, options.val_fraction);
            train.move_tail_to(&mut val, tail)?;
        }
        let train_tokens = train.finish()?;
        let val_tokens = val.finish()?;
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
        write_atomic(&dir.join(HEADER_FILE), text.as_bytes())
    })();
    match result {
        Ok(()) => staging.install(&out)?,
        Err(error) => {
            staging.discard();
            return Err(error);
        }
    }
    TokenDataset::open(&out)
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
            let mut chooser = SplitChooser::new(options);
            let mut batch = Batch::new();
            for (index, document) in source.documents().enumerate() {
                if ctx.cancel.is_cancelled() {
                    let _ = sender.send(Err(Error::Cancelled));
                    return;
                }
                match document {
                    Ok(text) => {
                        let split = chooser.choose();
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
    fn a_running_text_of_one_piece_still_gets_its_validation_share() {
        // One line is one piece: a split by pieces (or bytes) gave it no validation tokens.
        let dir = tempfile::tempdir().unwrap();
        let one_piece = Docs {
            docs: vec!["ab".repeat(500)],
            ..docs(0)
        };
        let ds = encode_to_dataset(
            &BYTES,
            &one_piece,
            &options(dir.path(), false),
            &Context::cpu(),
        )
        .unwrap();
        assert_eq!(ds.header().train_tokens, 900);
        assert_eq!(ds.header().val_tokens, 100);
        assert_eq!(all(&ds, Split::Val).len(), 100);
        assert_eq!(running_text_val_tokens(10, 0.1), 1);
        assert_eq!(running_text_val_tokens(10, 0.0), 0);
        assert_eq!(running_text_val_tokens(3, 0.5), 2);
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

    fn temps_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp") || n.contains("old"))
            .collect()
    }

    #[test]
    fn a_failed_encode_keeps_the_previous_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data");
        let before = encode_to_dataset(
            &BYTES,
            &docs(30),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        let before_train = all(&before, Split::Train);
        let broken = Docs {
            fail_at: Some(3),
            ..docs(40)
        };
        let error = encode_to_dataset(&BYTES, &broken, &options(dir.path(), true), &Context::cpu())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(error, "docs: broken at document 3");
        let after = TokenDataset::open(&out).expect("the previous dataset still opens");
        assert_eq!(all(&after, Split::Train), before_train);
        // The mapping the script still holds reads the old ids too.
        assert_eq!(all(&before, Split::Train), before_train);
        assert!(temps_in(&out).is_empty(), "{:?}", temps_in(&out));
        assert!(
            temps_in(dir.path()).is_empty(),
            "{:?}",
            temps_in(dir.path())
        );
        // A successful encode replaces it whole, and the old mapping stays readable.
        let bigger = encode_to_dataset(
            &BYTES,
            &docs(40),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        assert!(bigger.len(Split::Train) > before_train.len());
        assert_eq!(all(&before, Split::Train), before_train);
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            3,
            "train.bin, val.bin, dataset.json"
        );
        assert!(temps_in(dir.path()).is_empty());
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
        // After every failure above, the first good dataset is still the one there.
        assert!(TokenDataset::open(&out).is_ok());
    }

    #[test]
    fn a_split_truncated_while_in_use_is_an_error_naming_it_not_sigbus() {
        let dir = tempfile::tempdir().unwrap();
        let ds = encode_to_dataset(
            &BYTES,
            &docs(2000),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        let len = ds.len(Split::Train);
        let train = dir.path().join("data/train.bin");
        // Another process cuts the file to a few bytes while training reads it; through a
        // memory mapping the next read of a lost page was SIGBUS.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&train)
            .unwrap()
            .set_len(10)
            .unwrap();
        let mut out = vec![0; 64];
        let error = ds
            .read(Split::Train, len - 64, &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("train.bin") && error.contains("truncated"),
            "{error}"
        );
        let error = ds
            .sample_windows(Split::Train, 4, 32, 1)
            .unwrap_err()
            .to_string();
        assert!(error.contains("train.bin"), "{error}");
        // What is still there reads.
        ds.read(Split::Train, 0, &mut out[..5]).unwrap();
        assert_eq!(&out[..5], &[100, 111, 99, 32, 48]);
    }

    #[test]
    fn a_directory_with_other_files_keeps_them_and_gets_the_new_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data");
        encode_to_dataset(
            &BYTES,
            &docs(10),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let broken = Docs {
            fail_at: Some(3),
            ..docs(30)
        };
        assert!(
            encode_to_dataset(&BYTES, &broken, &options(dir.path(), true), &Context::cpu())
                .is_err()
        );
        let kept = TokenDataset::open(&out).unwrap();
        assert_eq!(kept.len(Split::Train) + kept.len(Split::Val), 10 * 6);
        let ds = encode_to_dataset(
            &BYTES,
            &docs(20),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        assert!(ds.len(Split::Train) + ds.len(Split::Val) > 10 * 6);
        assert_eq!(
            std::fs::read_to_string(out.join("notes.txt")).unwrap(),
            "mine"
        );
        assert!(temps_in(&out).is_empty(), "{:?}", temps_in(&out));
    }

    #[test]
    fn a_dataset_installed_by_another_process_meanwhile_is_replaced_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data");
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (place, n) in [(&ours, 20), (&theirs, 10)] {
            encode_to_dataset(
                &BYTES,
                &docs(n),
                &options(place.path(), true),
                &Context::cpu(),
            )
            .unwrap();
        }
        let copy = |from: &Path, to: &Path| {
            for file in DATASET_FILES {
                std::fs::copy(from.join("data").join(file), to.join(file)).unwrap();
            }
        };
        // This encode stages beside an absent target; another process installs its dataset
        // there (a plain directory of the files, as its rename leaves it) before this one ends.
        let staging = Staging::create(&out).unwrap();
        assert!(staging.beside);
        copy(ours.path(), &staging.dir);
        std::fs::create_dir(&out).unwrap();
        copy(theirs.path(), &out);
        staging.install(&out).unwrap();
        let ds = TokenDataset::open(&out).unwrap();
        assert!(ds.len(Split::Train) + ds.len(Split::Val) > 10 * 6);
        assert!(
            temps_in(dir.path()).is_empty(),
            "{:?}",
            temps_in(dir.path())
        );
    }

    #[test]
    fn staging_left_by_a_killed_encode_is_removed_and_symlinks_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let stale = dir.path().join(format!(".real.tmp-{dead}"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("train.bin"), vec![0u8; 1000]).unwrap();
        let old_style = real.join(format!(".train.bin.tmp-{dead}"));
        std::fs::write(&old_style, b"ids").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("data")).unwrap();
        encode_to_dataset(
            &BYTES,
            &docs(10),
            &options(dir.path(), true),
            &Context::cpu(),
        )
        .unwrap();
        assert!(!stale.exists() && !old_style.exists());
        assert!(dir.path().join("data").is_symlink());
        assert!(TokenDataset::open(&real).is_ok());
    }
}
