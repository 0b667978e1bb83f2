//! [`TokenDataset`]: a tokenized corpus on disk, read in windows, as [`TokenData`].
//!
//! A dataset directory holds `train.bin` and `val.bin` (token ids as little-endian `u16` when the
//! vocabulary has at most 65,535 tokens, else `u32`: nanoGPT's format, readable with
//! `np.memmap(path, dtype=np.uint16)`) and `dataset.json`, the header: dtype, token counts,
//! vocabulary size and a hash of the tokenizer that made it. Opening checks the header against
//! the files' lengths, and against a tokenizer when one is given; reading copies only the window
//! asked for out of the file.
//!
//! Reads are positional (`pread`), not through a memory mapping: a mapped file that another
//! process truncates while training runs kills the process with SIGBUS on the next touch of a
//! lost page, where a read simply comes back short and becomes an error naming the file. The
//! page cache serves both the same way; a window is one system call.
//!
//! Writing lives in [`super::dataset_writer`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json;
use llmlab_plugin_api::{Error, Result, Split, TokenData, Tokenizer};

pub const HEADER_FILE: &str = "dataset.json";
pub const FORMAT: &str = "llmlab-tokens";
pub const FORMAT_VERSION: u32 = 1;

/// How ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum Dtype {
    U16,
    U32,
}

impl Dtype {
    /// `u16` when every id of a `vocab_size` vocabulary fits, else `u32`.
    pub fn for_vocab(vocab_size: usize) -> Dtype {
        if vocab_size <= u16::MAX as usize {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    /// `"u16"` / `"u32"`, as the header and numpy spell it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        }
    }

    pub fn width_bytes(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

/// `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub dtype: Dtype,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub vocab_size: usize,
    /// Component name of the tokenizer (`"bpe"`).
    pub tokenizer: String,
    /// [`tokenizer_hash`] of the tokenizer that wrote the ids.
    pub tokenizer_hash: String,
    /// The id put between documents, if any.
    pub end_of_text: Option<u32>,
    /// What was encoded (a file path, `stories(seed=7)`).
    pub source: String,
    pub val_fraction: f64,
    /// For corpora with a known distribution: the training split's `-ln p` per token, the
    /// best loss a model can reach on it.
    #[serde(default)]
    pub entropy_floor_nats_per_token: Option<f64>,
}

impl Header {
    pub fn tokens(&self, split: Split) -> u64 {
        match split {
            Split::Train => self.train_tokens,
            Split::Val => self.val_tokens,
        }
    }
}

pub fn split_file(split: Split) -> &'static str {
    match split {
        Split::Train => "train.bin",
        Split::Val => "val.bin",
    }
}

pub fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Val => "val",
    }
}

/// `"train"` / `"val"` to a [`Split`].
pub fn parse_split(name: &str) -> Result<Split> {
    match name {
        "train" => Ok(Split::Train),
        "val" | "validation" => Ok(Split::Val),
        other => Err(Error::msg(format!(
            "unknown split {other:?}: expected \"train\" or \"val\""
        ))),
    }
}

/// A stable hash of a tokenizer's `tokenizer.json`, `"fnv1a64:<16 hex digits>"`: FNV-1a 64 over
/// its canonical JSON, where key order and whitespace do not matter and floats count to 12
/// significant digits (serde_json may read a unigram score back one ulp off, and a saved and
/// reloaded tokenizer must keep its hash).
pub fn tokenizer_hash(tokenizer: &dyn Tokenizer) -> Result<String> {
    let json = tokenizer.to_json()?;
    let canonical = serde_json::from_str::<serde_json::Value>(&json)
        .map(|v| canonical_json(v).to_string())
        .unwrap_or(json);
    Ok(format!("fnv1a64:{:016x}", fnv1a64(canonical.as_bytes())))
}

fn canonical_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            Value::String(format!("{:.11e}", n.as_f64().unwrap_or(f64::NAN)))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, canonical_json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// FNV-1a, 64 bits: stable across platforms and Rust versions (unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One split's ids file, open for positional reads (an empty split opens nothing).
struct SplitFile {
    path: PathBuf,
    file: Option<File>,
}

impl SplitFile {
    fn open(path: &Path, expected_bytes: u64) -> Result<SplitFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let actual = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if actual != expected_bytes {
            return Err(Error::Data(format!(
                "{}: {actual} bytes, but {HEADER_FILE} promises {expected_bytes}; the dataset is \
                 incomplete or was changed: encode it again",
                path.display()
            )));
        }
        Ok(SplitFile {
            path: path.to_path_buf(),
            file: (actual > 0).then_some(file),
        })
    }

    /// Fills `buf` from byte `offset`; a file cut short since it was opened is an error naming it.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(file) = &self.file else {
            return Err(Error::Data(format!("{}: empty split", self.path.display())));
        };
        file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                let now = file.metadata().map(|m| m.len()).unwrap_or(0);
                Error::Data(format!(
                    "{}: the file is now {now} bytes, shorter than {HEADER_FILE} says \
                     (bytes {offset}..{} were asked for): it was truncated or rewritten while \
                     in use; encode the dataset again",
                    self.path.display(),
                    offset + buf.len() as u64
                ))
            } else {
                Error::io(&self.path, e)
            }
        })
    }
}

/// A token dataset on disk.
pub struct TokenDataset {
    dir: PathBuf,
    header: Header,
    train: SplitFile,
    val: SplitFile,
}

impl TokenDataset {
    /// Opens the dataset in `dir`, checking the header against the files.
    pub fn open(dir: &Path) -> Result<TokenDataset> {
        let header_path = dir.join(HEADER_FILE);
        let text = std::fs::read_to_string(&header_path).map_err(|e| Error::io(&header_path, e))?;
        let header: Header = serde_json::from_str(&text).map_err(|e| {
            Error::Data(format!(
                "{}: not a token dataset header: {e}",
                header_path.display()
            ))
        })?;
        if header.format != FORMAT || header.version != FORMAT_VERSION {
            return Err(Error::Data(format!(
                "{}: format {:?} version {}, this llmlab reads {FORMAT:?} version {FORMAT_VERSION}",
                header_path.display(),
                header.format,
                header.version
            )));
        }
        if header.dtype != Dtype::for_vocab(header.vocab_size) {
            return Err(Error::Data(format!(
                "{}: dtype {:?} does not match vocab_size {}",
                header_path.display(),
                header.dtype,
                header.vocab_size
            )));
        }
        let width = header.dtype.width_bytes() as u64;
        let train = SplitFile::open(
            &dir.join(split_file(Split::Train)),
            header.train_tokens * width,
        )?;
        let val = SplitFile::open(&dir.join(split_file(Split::Val)), header.val_tokens * width)?;
        Ok(TokenDataset {
            dir: dir.to_path_buf(),
            header,
            train,
            val,
        })
    }

    /// Opens the dataset in `dir` and refuses it unless `tokenizer` wrote it.
    pub fn open_for(dir: &Path, tokenizer: &dyn Tokenizer) -> Result<TokenDataset> {
        let dataset = TokenDataset::open(dir)?;
        dataset.check_tokenizer(tokenizer)?;
        Ok(dataset)
    }

    /// An error unless `tokenizer` is the one that wrote these ids.
    pub fn check_tokenizer(&self, tokenizer: &dyn Tokenizer) -> Result<()> {
        let hash = tokenizer_hash(tokenizer)?;
        if hash != self.header.tokenizer_hash {
            return Err(Error::Data(format!(
                "{}: made by tokenizer {} {}, not by this {} tokenizer ({hash}, vocab {}); \
                 encode the corpus again with this tokenizer",
                self.dir.join(HEADER_FILE).display(),
                self.header.tokenizer,
                self.header.tokenizer_hash,
                tokenizer.name(),
                tokenizer.vocab_size()
            )));
        }
        Ok(())
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn split_file(&self, split: Split) -> &SplitFile {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// `batch` windows of `ctx_len + 1` tokens from `split` at uniformly random starts drawn from
    /// `seed`: the same seed gives the same windows.
    pub fn sample_windows(
        &self,
        split: Split,
        batch: usize,
        ctx_len: usize,
        seed: u64,
    ) -> Result<Vec<Vec<u32>>> {
        let window = ctx_len + 1;
        let len = self.len(split);
        if len < window {
            return Err(Error::Data(format!(
                "{}: the {} split has {len} tokens, fewer than ctx + 1 = {window}",
                self.dir.display(),
                split_name(split)
            )));
        }
        let mut rng = SplitMix64::new(seed);
        let starts = len - window + 1;
        (0..batch)
            .map(|_| {
                let start = rng.below(starts);
                let mut ids = vec![0; window];
                self.read(split, start, &mut ids)?;
                Ok(ids)
            })
            .collect()
    }
}

impl TokenData for TokenDataset {
    fn len(&self, split: Split) -> usize {
        self.header.tokens(split) as usize
    }

    fn read(&self, split: Split, start: usize, out: &mut [u32]) -> Result<()> {
        let len = self.len(split);
        let end = start
            .checked_add(out.len())
            .filter(|&end| end <= len)
            .ok_or_else(|| {
                Error::Data(format!(
                    "{}: tokens {start}..{} are past the end of the {} split ({len} tokens)",
                    self.dir.display(),
                    start.saturating_add(out.len()),
                    split_name(split)
                ))
            })?;
        let width = self.header.dtype.width_bytes();
        let mut bytes = vec![0u8; (end - start) * width];
        self.split_file(split)
            .read_at(&mut bytes, (start * width) as u64)?;
        match self.header.dtype {
            Dtype::U16 => {
                for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *slot = u16::from_le_bytes([chunk[0], chunk[1]]) as u32;
                }
            }
            Dtype::U32 => {
                for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *slot = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
            }
        }
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.header.vocab_size
    }

    fn entropy_floor_nats_per_token(&self) -> Option<f64> {
        self.header.entropy_floor_nats_per_token
    }
}
