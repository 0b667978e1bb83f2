//! What a shared or served setting needs to trust a script's plugins: the plugin allow-list
//! (`--trusted-plugins FILE`, SHA-256 sums in `sha256sum` format) and the hash every loaded
//! library is recorded with in the run directory's `plugins.json`, and the Rhai resource limits
//! settable from the command line (`--max-operations`, ...). docs/scripting.md ("What a script
//! can do") says what these do and do not protect against.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rhai::Engine;
use sha2::{Digest, Sha256};

/// SHA-256 of `bytes` as 64 lowercase hex digits (what `sha256sum` prints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The allow-list: SHA-256 sums of the libraries that may be loaded. Only these are opened.
#[derive(Debug, Clone)]
pub struct TrustedPlugins {
    path: PathBuf,
    sums: BTreeSet<String>,
}

impl TrustedPlugins {
    /// Reads `path` in `sha256sum` format: `<64 hex digits>  <file name>` per line (`*` before
    /// the name, as `sha256sum -b` writes, is accepted); blank lines and `#` comments are
    /// skipped. Only the sums matter: a listed library is trusted wherever it lies.
    pub fn load(path: &Path) -> Result<TrustedPlugins, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--trusted-plugins {}: {e}", path.display()))?;
        TrustedPlugins::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<TrustedPlugins, String> {
        let mut sums = BTreeSet::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sum = line.split_whitespace().next().unwrap_or("");
            if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "--trusted-plugins {} line {}: expected `<sha256 in 64 hex digits>  <file>` \
                     (the output of sha256sum), found {line:?}",
                    path.display(),
                    number + 1
                ));
            }
            sums.insert(sum.to_ascii_lowercase());
        }
        Ok(TrustedPlugins {
            path: path.to_path_buf(),
            sums,
        })
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.sums.contains(&sha256.to_ascii_lowercase())
    }

    /// The allow-list file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Limits on what one script evaluation may use, applied to the Rhai engine. `None` keeps
/// Rhai's default (no limit for sizes and operations; 256 for expression depth as before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Rhai operations per evaluation (each REPL line, each script run).
    pub max_operations: Option<u64>,
    /// Elements in one array.
    pub max_array_size: Option<usize>,
    /// Bytes in one string.
    pub max_string_size: Option<usize>,
    /// Entries in one object map.
    pub max_map_size: Option<usize>,
    /// Depth of nested function calls.
    pub max_call_depth: Option<usize>,
    /// Depth of nested expressions (and of statements in functions) the parser accepts.
    pub max_expr_depth: Option<usize>,
}

impl ScriptLimits {
    /// The default depth of expressions the parser accepts (statements and functions alike).
    pub const DEFAULT_EXPR_DEPTH: usize = 256;

    pub fn apply(&self, engine: &mut Engine) {
        if let Some(n) = self.max_operations {
            engine.set_max_operations(n);
        }
        if let Some(n) = self.max_array_size {
            engine.set_max_array_size(n);
        }
        if let Some(n) = self.max_string_size {
            engine.set_max_string_size(n);
        }
        if let Some(n) = self.max_map_size {
            engine.set_max_map_size(n);
        }
        if let Some(n) = self.max_call_depth {
            engine.set_max_call_levels(n);
        }
        let depth = self.max_expr_depth.unwrap_or(Self::DEFAULT_EXPR_DEPTH);
        engine.set_max_expr_depths(depth, depth);
    }
}

/// Adds each loaded library's SHA-256 and path to the run directory's `plugins.json` (written
/// by [`crate::runs::RunDir::open`] with the fingerprints): `"sha256": {plugin: hex}` and
/// `"libraries": {plugin: path}`, so a run records exactly which binaries ran in it.
pub fn record_library_hashes(
    run_dir: &Path,
    plugins: &[crate::loader::LoadedPlugin],
) -> llmlab_plugin_api::Result<()> {
    use llmlab_plugin_api::serde_json::{self, Map, Value};
    use llmlab_plugin_api::Error;
    let path = run_dir.join("plugins.json");
    let mut record: Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Object(Map::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let Some(object) = record.as_object_mut() else {
        return Err(Error::msg(format!("{}: not a JSON object", path.display())));
    };
    let sums: Map<String, Value> = plugins
        .iter()
        .map(|p| (p.name().to_string(), Value::from(p.sha256.clone())))
        .collect();
    let paths: Map<String, Value> = plugins
        .iter()
        .map(|p| {
            (
                p.name().to_string(),
                Value::from(p.path.display().to_string()),
            )
        })
        .collect();
    object.insert("sha256".into(), Value::Object(sums));
    object.insert("libraries".into(), Value::Object(paths));
    let text = serde_json::to_string_pretty(&record)?;
    llmlab_plugin_api::files::write_atomic(&path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn allow_list_reads_sha256sum_output_and_names_bad_lines() {
        let sum = sha256_hex(b"abc");
        let text = format!(
            "# trusted\n{sum}  libllmlab_gpt.so\n\n{}  *other.so\n",
            "A".repeat(64)
        );
        let list = TrustedPlugins::parse(Path::new("sums.txt"), &text).unwrap();
        assert!(list.contains(&sum));
        assert!(list.contains(&"a".repeat(64)));
        assert!(!list.contains(&sha256_hex(b"abd")));
        let error = TrustedPlugins::parse(Path::new("sums.txt"), "xyz  lib.so\n").unwrap_err();
        assert!(error.contains("sums.txt line 1"), "{error}");
    }

    #[test]
    fn limits_stop_a_runaway_script() {
        let mut engine = Engine::new();
        ScriptLimits {
            max_operations: Some(1_000),
            max_array_size: Some(10),
            max_string_size: Some(8),
            max_call_depth: Some(5),
            ..ScriptLimits::default()
        }
        .apply(&mut engine);
        let ops = engine
            .eval::<i64>("let x = 0; loop { x += 1; }")
            .unwrap_err();
        assert!(ops.to_string().contains("operations"), "{ops}");
        let array = engine
            .eval::<rhai::Array>("let a = []; for i in 0..20 { a.push(i); } a")
            .unwrap_err();
        assert!(array.to_string().contains("array"), "{array}");
        let string = engine.eval::<String>(r#""abcdefghijkl""#).unwrap_err();
        assert!(
            string.to_string().to_lowercase().contains("string"),
            "{string}"
        );
        let depth = engine.eval::<i64>("fn f(n) { f(n + 1) } f(0)").unwrap_err();
        assert!(depth.to_string().contains("Stack overflow"), "{depth}");
    }
}
