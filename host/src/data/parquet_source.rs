//! Parquet corpora: Hugging Face datasets' files (`corpus("train.parquet", #{ field: "text" })`)
//! or a directory of shards (`corpus("data/", #{ field: "text" })`, every `*.parquet` below it,
//! in path order), as a [`TextSource`] of one document per row.
//!
//! Streaming: parquet's own record reader (no arrow) reads one row group at a time, and only
//! the projected column, so memory stays flat whatever the file size (docs/interop.md has the
//! measurement). A string column gives its text; a `messages` column (HF chat datasets: a list of
//! `{role, content}` structs) gives each conversation as the JSON array of its turns, the form
//! chat SFT and `apply_chat_template` take. Null rows are skipped; a column of another type, a
//! missing column (the error lists the file's columns) or invalid UTF-8 is an error naming the
//! file, column and row.

use std::fs::File;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Error, Result, TextSource};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use parquet::schema::types::Type;

/// One column of a set of Parquet files.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    /// What `path` named (a file or a directory), for messages.
    path: PathBuf,
    files: Vec<PathBuf>,
    column: String,
    bytes: u64,
}

/// Whether `path` names a Parquet file (by extension) or a directory holding some.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        || (path.is_dir() && !parquet_files(path).unwrap_or_default().is_empty())
}

/// Every `*.parquet` file under `dir`, sorted by path (HF's `train-00000-of-00003.parquet` order).
fn parquet_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn open_reader(path: &Path) -> Result<SerializedFileReader<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    SerializedFileReader::new(file).map_err(|e| {
        Error::Data(format!(
            "{}: not a readable Parquet file: {e}",
            path.display()
        ))
    })
}

/// The schema with only `column`, for the record reader's projection.
fn projection(reader: &SerializedFileReader<File>, column: &str, path: &Path) -> Result<Type> {
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let field = fields.iter().find(|f| f.name() == column).ok_or_else(|| {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        Error::Data(format!(
            "{}: no column `{column}`; its columns are {}",
            path.display(),
            names.join(", ")
        ))
    })?;
    Type::group_type_builder(schema.name())
        .with_fields(vec![field.clone()])
        .build()
        .map_err(|e| Error::Data(format!("{}: column `{column}`: {e}", path.display())))
}

impl ParquetSource {
    /// `path` is a `.parquet` file or a directory of them; every file must have `column`.
    pub fn open(path: &Path, column: &str) -> Result<ParquetSource> {
        let files = if path.is_dir() {
            parquet_files(path).map_err(|e| Error::io(path, e))?
        } else if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            return Err(Error::Data(format!(
                "{}: no such file or directory",
                path.display()
            )));
        };
        if files.is_empty() {
            return Err(Error::Data(format!(
                "{}: no .parquet files in this directory",
                path.display()
            )));
        }
        let mut bytes = 0;
        for file in &files {
            let reader = open_reader(file)?;
            projection(&reader, column, file)?;
            bytes += std::fs::metadata(file)
                .map_err(|e| Error::io(file, e))?
                .len();
        }
        Ok(ParquetSource {
            path: path.to_path_buf(),
            files,
            column: column.to_string(),
            bytes,
        })
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Rows of one file's column, row group by row group.
    fn rows(&self, file: &Path) -> Result<RowIter<'static>> {
        let reader = open_reader(file)?;
        let projection = projection(&reader, &self.column, file)?;
        RowIter::from_file_into(Box::new(reader))
            .project(Some(projection))
            .map_err(|e| Error::Data(format!("{}: {e}", file.display())))
    }
}

/// A row's document: the text of a string column, or a conversation as the JSON array of its
/// `{role, content}` turns; `None` for null.
fn document(field: &Field) -> std::result::Result<Option<String>, String> {
    match field {
        Field::Null => Ok(None),
        Field::Str(s) => Ok(Some(s.clone())),
        Field::Bytes(b) => std::str::from_utf8(b.data())
            .map(|s| Some(s.to_string()))
            .map_err(|e| format!("not UTF-8: {e}")),
        Field::ListInternal(turns) => {
            let turns = turns
                .elements()
                .iter()
                .enumerate()
                .map(|(i, turn)| turn_json(turn).map_err(|m| format!("turn {i}: {m}")))
                .collect::<std::result::Result<Vec<Value>, String>>()?;
            Ok(Some(Value::Array(turns).to_string()))
        }
        other => Err(format!(
            "holds {other:?}-like values; a corpus column is a string or a list of {{role, content}}"
        )),
    }
}

fn turn_json(turn: &Field) -> std::result::Result<Value, String> {
    let Field::Group(row) = turn else {
        return Err("a turn must be a {role, content} struct".into());
    };
    let mut role = None;
    let mut content = None;
    for (name, value) in row.get_column_iter() {
        let text = match value {
            Field::Str(s) => Some(s.clone()),
            Field::Null => None,
            _ => continue,
        };
        match name.as_str() {
            "role" => role = text,
            "content" => content = text,
            _ => {}
        }
    }
    match (role, content) {
        (Some(role), content) => {
            Ok(json!({ "role": role, "content": content.unwrap_or_default() }))
        }
        (None, _) => Err("a turn has no string `role`".into()),
    }
}

/// Documents of the files in turn.
struct Documents<'a> {
    source: &'a ParquetSource,
    next_file: usize,
    current: Option<(PathBuf, RowIter<'static>, u64)>,
    failed: bool,
}

impl Iterator for Documents<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        loop {
            if self.failed {
                return None;
            }
            if self.current.is_none() {
                let file = self.source.files.get(self.next_file)?.clone();
                self.next_file += 1;
                match self.source.rows(&file) {
                    Ok(rows) => self.current = Some((file, rows, 0)),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let (file, rows, index) = self.current.as_mut().expect("opened above");
            let column = &self.source.column;
            match rows.next() {
                None => self.current = None,
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(Error::Data(format!(
                        "{}: row {index}: {e}",
                        file.display()
                    ))));
                }
                Some(Ok(row)) => {
                    *index += 1;
                    let Some((_, field)) = row.get_column_iter().next() else {
                        continue;
                    };
                    match document(field) {
                        Ok(Some(text)) => return Some(Ok(text)),
                        Ok(None) => continue,
                        Err(m) => {
                            self.failed = true;
                            return Some(Err(Error::Data(format!(
                                "{}: row {}: column `{column}` {m}",
                                file.display(),
                                *index - 1
                            ))));
                        }
                    }
                }
            }
        }
    }
}

impl TextSource for ParquetSource {
    fn name(&self) -> String {
        format!("{} ({})", self.path.display(), self.column)
    }

    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new(Documents {
            source: self,
            next_file: 0,
            current: None,
            failed: false,
        })
    }

    fn approx_bytes(&self) -> Option<u64> {
        Some(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parquet")
    }

    fn expected_texts() -> Vec<String> {
        let text = std::fs::read_to_string(fixtures().join("stories.expected.json")).unwrap();
        let v: Value = llmlab_plugin_api::serde_json::from_str(&text).unwrap();
        v["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }

    fn documents(source: &ParquetSource) -> Vec<String> {
        source.documents().collect::<Result<_>>().unwrap()
    }

    #[test]
    fn a_pyarrow_file_streams_its_texts_across_row_groups_skipping_nulls() {
        let path = fixtures().join("stories.parquet");
        assert!(is_parquet(&path));
        let source = ParquetSource::open(&path, "text").unwrap();
        assert_eq!(documents(&source), expected_texts());
        // A second pass reads the same (a tokenizer trains, then the dataset is encoded).
        assert_eq!(documents(&source), expected_texts());
    }

    #[test]
    fn a_directory_of_shards_is_one_corpus_in_path_order() {
        let dir = fixtures().join("shards");
        assert!(is_parquet(&dir));
        let source = ParquetSource::open(&dir, "text").unwrap();
        assert_eq!(source.files().len(), 2);
        assert_eq!(documents(&source), expected_texts());
    }

    #[test]
    fn a_messages_column_gives_conversations_as_json() {
        let source = ParquetSource::open(&fixtures().join("chat.parquet"), "messages").unwrap();
        let docs = documents(&source);
        assert_eq!(docs.len(), 2);
        let first: Value = llmlab_plugin_api::serde_json::from_str(&docs[0]).unwrap();
        assert_eq!(
            first,
            json!([{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}])
        );
        let second: Value = llmlab_plugin_api::serde_json::from_str(&docs[1]).unwrap();
        assert_eq!(second[2]["content"], "Paris.");
    }

    #[test]
    fn a_missing_column_a_wrong_type_and_a_bad_file_are_named() {
        let path = fixtures().join("stories.parquet");
        let err = ParquetSource::open(&path, "content")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stories.parquet") && err.contains("`content`") && err.contains("text"),
            "{err}"
        );
        let source = ParquetSource::open(&path, "id").unwrap();
        let err = source.documents().next().unwrap().unwrap_err().to_string();
        assert!(err.contains("row 0") && err.contains("`id`"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, b"not parquet at all").unwrap();
        let err = ParquetSource::open(&bad, "text").unwrap_err().to_string();
        assert!(
            err.contains("bad.parquet") && err.contains("Parquet"),
            "{err}"
        );
        let err = ParquetSource::open(dir.path().join("none").as_path(), "text")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }
}
