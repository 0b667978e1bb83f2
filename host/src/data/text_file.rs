//! [`TextFile`]: a user's file as a [`TextSource`], read as a stream (never whole into memory).
//!
//! - **Text** (`.txt` and anything not JSONL): one running text, handed out in pieces that end
//!   at a newline (or at [`MAX_PIECE_BYTES`], cut on a character boundary). The pieces are parts
//!   of one text, not separate documents: a token dataset puts no end-of-text token between them.
//! - **JSONL** (`.jsonl`, `.ndjson`, or any file when `field` is given): one document per
//!   non-blank line, the string at `field` (default `"text"`). A line is read whole, up to
//!   [`MAX_JSONL_LINE_BYTES`]; a longer one is an error naming the file, line and limit.
//!
//! Invalid UTF-8 is an error naming the file, byte offset and line, unless `lossy` asks for
//! U+FFFD replacement characters instead.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use llmlab_plugin_api::serde_json::{self, Value};
use llmlab_plugin_api::{Error, Result, TextSource};

/// Longest piece of a text file handed out at once (a file without newlines still streams).
pub const MAX_PIECE_BYTES: usize = 1 << 20;

/// Longest JSONL line (one document, held in memory whole) read before refusing the file.
pub const MAX_JSONL_LINE_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Text,
    /// One JSON object per line; the document is the string at `field`.
    Jsonl {
        field: String,
    },
}

#[derive(Debug, Clone)]
pub struct TextFile {
    path: PathBuf,
    format: Format,
    lossy: bool,
    bytes: u64,
}

impl TextFile {
    /// Opens `path` (which must exist and be a regular file) in `format`.
    pub fn open(path: impl Into<PathBuf>, format: Format, lossy: bool) -> Result<TextFile> {
        let path = path.into();
        let metadata = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !metadata.is_file() {
            return Err(Error::Data(format!(
                "{}: not a regular file (a corpus is one text or JSONL file)",
                path.display()
            )));
        }
        Ok(TextFile {
            path,
            format,
            lossy,
            bytes: metadata.len(),
        })
    }

    /// The format a path implies by its extension: JSONL for `.jsonl`/`.ndjson`, text otherwise.
    pub fn format_for(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson") => Format::Jsonl {
                field: "text".into(),
            },
            _ => Format::Text,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> &Format {
        &self.format
    }
}

impl TextSource for TextFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        match File::open(&self.path) {
            Err(e) => Box::new(std::iter::once(Err(Error::io(&self.path, e)))),
            Ok(file) => Box::new(Pieces {
                file: self,
                reader: BufReader::with_capacity(1 << 20, file),
                offset: 0,
                line: 1,
                carry: Vec::new(),
                done: false,
            }),
        }
    }

    fn approx_bytes(&self) -> Option<u64> {
        Some(self.bytes)
    }
}

/// The reading state behind [`TextFile::documents`].
struct Pieces<'a> {
    file: &'a TextFile,
    reader: BufReader<File>,
    /// Byte offset of the next unread byte.
    offset: u64,
    /// 1-based line number of the next unread byte.
    line: u64,
    /// The start of a character cut off the end of the previous piece.
    carry: Vec<u8>,
    done: bool,
}

/// How many bytes at the end of `bytes` are an incomplete UTF-8 character (0 to 3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(4) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: keep looking for the lead
        }
        let width = match byte {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        return if width > back { back } else { 0 };
    }
    0
}

impl Pieces<'_> {
    /// The next raw line (with its newline). In a text file at most [`MAX_PIECE_BYTES`]: a
    /// longer line is cut and a character split by the cut is carried over whole to the next
    /// piece. In a JSONL file the whole line, refused past [`MAX_JSONL_LINE_BYTES`].
    fn next_raw(&mut self) -> Result<Option<Vec<u8>>> {
        let jsonl = matches!(self.file.format, Format::Jsonl { .. });
        let limit = if jsonl {
            MAX_JSONL_LINE_BYTES
        } else {
            MAX_PIECE_BYTES
        };
        let mut piece = std::mem::take(&mut self.carry);
        loop {
            let buffer = self
                .reader
                .fill_buf()
                .map_err(|e| Error::io(&self.file.path, e))?;
            if buffer.is_empty() {
                break;
            }
            let room = limit - piece.len();
            let window = &buffer[..buffer.len().min(room)];
            if let Some(newline) = window.iter().position(|&b| b == b'\n') {
                piece.extend_from_slice(&window[..=newline]);
                self.reader.consume(newline + 1);
                break;
            }
            let take = window.len();
            piece.extend_from_slice(window);
            self.reader.consume(take);
            if piece.len() == limit {
                if jsonl {
                    return Err(Error::Data(format!(
                        "{}: line {} (byte {}) is longer than {} MiB, the longest JSONL document \
                         read; split it or use a text file",
                        self.file.path.display(),
                        self.line,
                        self.offset,
                        MAX_JSONL_LINE_BYTES >> 20
                    )));
                }
                let keep = piece.len() - incomplete_tail(&piece);
                self.carry = piece.split_off(keep);
                break;
            }
        }
        Ok((!piece.is_empty()).then_some(piece))
    }

    fn utf8(&self, bytes: Vec<u8>) -> Result<String> {
        match String::from_utf8(bytes) {
            Ok(text) => Ok(text),
            Err(error) if self.file.lossy => Ok(String::from_utf8_lossy(error.as_bytes()).into()),
            Err(error) => {
                let at = error.utf8_error().valid_up_to();
                let bytes = error.as_bytes();
                let line = self.line + bytes[..at].iter().filter(|&&b| b == b'\n').count() as u64;
                Err(Error::Data(format!(
                    "{}: invalid UTF-8 at byte {} (line {line}); pass #{{ lossy: true }} to \
                     corpus() to replace invalid bytes with U+FFFD",
                    self.file.path.display(),
                    self.offset + at as u64
                )))
            }
        }
    }

    fn document(&self, raw: String, field: &str) -> Result<Option<String>> {
        if raw.trim().is_empty() {
            return Ok(None);
        }
        let at = || {
            format!(
                "{}: line {} (byte {})",
                self.file.path.display(),
                self.line,
                self.offset
            )
        };
        let value: Value = serde_json::from_str(&raw)
            .map_err(|e| Error::Data(format!("{}: not JSON: {e}", at())))?;
        match value.get(field) {
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(Error::Data(format!(
                "{}: field `{field}` is {}, not a string",
                at(),
                json_kind(other)
            ))),
            None => {
                let keys = value
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| format!("the line is a JSON {}", json_kind(&value)));
                Err(Error::Data(format!(
                    "{}: no field `{field}` (found: {keys}); pass #{{ field: \"...\" }} to corpus()",
                    at()
                )))
            }
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Iterator for Pieces<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        while !self.done {
            let raw = match self.next_raw() {
                Ok(Some(raw)) => raw,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            };
            let len = raw.len() as u64;
            let newlines = raw.iter().filter(|&&b| b == b'\n').count() as u64;
            let result = self.utf8(raw).and_then(|text| match &self.file.format {
                Format::Text => Ok(Some(text)),
                Format::Jsonl { field } => self.document(text, field),
            });
            self.offset += len;
            self.line += newlines;
            match result {
                Ok(Some(text)) => return Some(Ok(text)),
                Ok(None) => continue,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn all(file: &TextFile) -> Result<Vec<String>> {
        file.documents().collect()
    }

    #[test]
    fn text_pieces_concatenate_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "first line\nsecond ✓ 日本語\n\nlast without newline 🎉";
        let path = write(&dir, "a.txt", text.as_bytes());
        let file = TextFile::open(&path, Format::Text, false).unwrap();
        let pieces = all(&file).unwrap();
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.concat(), text);
        assert_eq!(file.approx_bytes(), Some(text.len() as u64));
    }

    #[test]
    fn long_lines_are_cut_on_character_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        // 3-byte characters so that MAX_PIECE_BYTES falls inside one.
        let text = "語".repeat(MAX_PIECE_BYTES / 3 + 10);
        let path = write(&dir, "long.txt", text.as_bytes());
        let pieces = all(&TextFile::open(&path, Format::Text, false).unwrap()).unwrap();
        assert!(pieces.len() >= 2);
        assert!(pieces.iter().all(|p| p.len() <= MAX_PIECE_BYTES));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn jsonl_lines_longer_than_a_text_piece_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let long = "abc ".repeat(MAX_PIECE_BYTES / 2);
        let text = format!("{{\"text\": \"{long}\"}}\n{{\"text\": \"short\"}}\n");
        let path = write(&dir, "long.jsonl", text.as_bytes());
        let format = Format::Jsonl {
            field: "text".into(),
        };
        let documents = all(&TextFile::open(&path, format, false).unwrap()).unwrap();
        assert_eq!(documents, vec![long, "short".to_string()]);
    }

    #[test]
    fn invalid_utf8_names_file_byte_offset_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bad.txt", b"ok line\nbad \xff here\n");
        let error = all(&TextFile::open(&path, Format::Text, false).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("bad.txt"), "{error}");
        assert!(error.contains("invalid UTF-8 at byte 12"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("lossy"), "{error}");
        let lossy = all(&TextFile::open(&path, Format::Text, true).unwrap()).unwrap();
        assert_eq!(lossy.concat(), "ok line\nbad \u{FFFD} here\n");
    }

    #[test]
    fn missing_file_and_directory_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.txt");
        let error = TextFile::open(&missing, Format::Text, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("nope.txt"), "{error}");
        let error = TextFile::open(dir.path(), Format::Text, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a regular file"), "{error}");
    }

    #[test]
    fn jsonl_documents_come_from_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "d.jsonl",
            b"{\"text\": \"one\", \"id\": 1}\n\n{\"text\": \"two\\nlines\"}\n",
        );
        assert_eq!(
            TextFile::format_for(&path),
            Format::Jsonl {
                field: "text".into()
            }
        );
        let file = TextFile::open(&path, TextFile::format_for(&path), false).unwrap();
        assert_eq!(all(&file).unwrap(), vec!["one", "two\nlines"]);
    }

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "d.jsonl", b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
        let error = all(&TextFile::open(&path, TextFile::format_for(&path), false).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("d.jsonl: line 2 (byte 15)"), "{error}");
        assert!(error.contains("no field `text` (found: body)"), "{error}");
        let path = write(&dir, "e.jsonl", b"{\"text\": 3}\nnot json\n");
        let error = all(&TextFile::open(&path, TextFile::format_for(&path), false).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 1") && error.contains("not a string"),
            "{error}"
        );
        let jsonl = Format::Jsonl {
            field: "text".into(),
        };
        let path = write(&dir, "f.jsonl", b"{\"text\": \"a\"}\nnot json\n");
        let error = all(&TextFile::open(&path, jsonl, false).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("not JSON"),
            "{error}"
        );
    }
}
