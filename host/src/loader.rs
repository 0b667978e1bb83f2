//! Finds plugin libraries, checks each one's declaration *before running any of its code*, loads
//! the accepted ones and collects their components. Libraries are never unloaded: vtables of
//! the components they registered point into them.
//!
//! The declaration is read straight out of the file (the `LLMLAB_PLUGIN_DECLARATION` symbol's
//! bytes, located with `object`), so a mismatched plugin is refused without `dlopen`, i.e. without
//! its constructors ever running. Accepted libraries are opened with `RTLD_NOW` so a runtime built
//! differently shows up as a load error, not as a crash on first call.

use std::ffi::OsStr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::declaration::{
    text_offset, DeclarationHeader, Mismatch, DECLARATION_SYMBOL,
};
use llmlab_plugin_api::tracing;
use llmlab_plugin_api::{Fingerprint, Registrar, Registration};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::panics::panic_message;

/// Environment variable with extra plugin directories, `:`-separated like `PATH`.
pub const PLUGIN_PATH_ENV: &str = "LLMLAB_PLUGIN_PATH";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a shared library: {path}: {detail}")]
    NotSharedLibrary { path: PathBuf, detail: String },
    #[error(
        "not an llmlab plugin: {path} has no {DECLARATION_SYMBOL} declaration \
         (a plugin's lib.rs ends with llmlab_plugin_api::declare_plugin!(\"name\"))"
    )]
    NoDeclaration { path: PathBuf },
    #[error("malformed plugin declaration in {path}: {detail}")]
    BadDeclaration { path: PathBuf, detail: String },
    #[error("refused {path} (plugin `{plugin}`): {mismatch}")]
    Mismatch {
        path: PathBuf,
        plugin: String,
        mismatch: Mismatch,
    },
    #[error(
        "cannot load {path}: {detail}\n  its declaration matches this host, so it was most likely \
         built against another build of libllmlab_plugin_api; rebuild it with this host's \
         Cargo.lock (cargo build --release)"
    )]
    Open { path: PathBuf, detail: String },
    #[error("plugin `{plugin}` ({path}) panicked while registering its components: {message}")]
    RegisterPanicked {
        path: PathBuf,
        plugin: String,
        message: String,
    },
}

/// A loaded plugin and the components it registered.
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
    pub registrations: Vec<&'static Registration>,
}

impl LoadedPlugin {
    pub fn name(&self) -> &str {
        self.fingerprint.plugin.as_deref().unwrap_or("?")
    }
    pub fn version(&self) -> &str {
        self.fingerprint.plugin_version.as_deref().unwrap_or("?")
    }
}

/// Directories to search, in order: `--plugin-dir` flags, `LLMLAB_PLUGIN_PATH`, the executable's
/// directory (so `target/release/` works right after `cargo build --release`).
pub fn search_dirs(flags: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = flags.to_vec();
    if let Some(paths) = std::env::var_os(PLUGIN_PATH_ENV) {
        dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir);
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        let fresh = !seen.contains(&key);
        seen.push(key);
        fresh
    });
    dirs
}

/// Shared libraries in `dir` that may be plugins (not the runtime or libstd themselves).
pub fn candidate_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && p.extension() == Some(OsStr::new(std::env::consts::DLL_EXTENSION))
        })
        .filter(|p| {
            let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
            !(name.starts_with("libllmlab_plugin_api") || name.starts_with("libstd-"))
        })
        .collect();
    files.sort();
    files
}

/// Reads and parses the declaration of the library at `path` without loading it.
pub fn read_declaration(path: &Path) -> Result<Fingerprint, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    let file = object::File::parse(&*bytes).map_err(|e| LoadError::NotSharedLibrary {
        path: path.into(),
        detail: e.to_string(),
    })?;
    if file.kind() != object::ObjectKind::Dynamic {
        return Err(LoadError::NotSharedLibrary {
            path: path.into(),
            detail: format!("it is a {:?} object file", file.kind()),
        });
    }
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| {
            s.name()
                .is_ok_and(|n| n.trim_start_matches('_') == DECLARATION_SYMBOL)
        })
        .ok_or_else(|| LoadError::NoDeclaration { path: path.into() })?;
    let bad = |detail: String| LoadError::BadDeclaration {
        path: path.into(),
        detail,
    };
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(|| bad("the declaration symbol is not in a section".into()))?;
    let pointer_bytes = if file.is_64() { 8 } else { 4 };
    let offset = text_offset(pointer_bytes) as u64;
    let header = section
        .data_range(symbol.address(), offset)
        .ok()
        .flatten()
        .ok_or_else(|| bad("declaration is truncated".into()))?;
    let len_bytes: [u8; 8] = header[pointer_bytes..]
        .try_into()
        .map_err(|_| bad("bad length".into()))?;
    let text_len = if file.is_little_endian() {
        u64::from_le_bytes(len_bytes)
    } else {
        u64::from_be_bytes(len_bytes)
    };
    if text_len > 64 * 1024 {
        return Err(bad(format!("declaration claims {text_len} bytes")));
    }
    let text = section
        .data_range(symbol.address() + offset, text_len)
        .ok()
        .flatten()
        .ok_or_else(|| bad("declaration text is truncated".into()))?;
    let text = std::str::from_utf8(text).map_err(|e| bad(e.to_string()))?;
    Fingerprint::parse(text).map_err(bad)
}

/// Checks the library at `path` against this host; `Ok` carries its fingerprint.
pub fn check(path: &Path) -> Result<Fingerprint, LoadError> {
    let fingerprint = read_declaration(path)?;
    fingerprint
        .check_compatible(&Fingerprint::current())
        .map_err(|mismatch| LoadError::Mismatch {
            path: path.into(),
            plugin: fingerprint.plugin.clone().unwrap_or_else(|| "?".into()),
            mismatch,
        })?;
    Ok(fingerprint)
}

struct Collect(Vec<&'static Registration>);

impl Registrar for Collect {
    fn register(&mut self, registration: &'static Registration) {
        self.0.push(registration);
    }
}

/// Checks, loads and registers the plugin at `path`. The library stays loaded for the process.
pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
    let fingerprint = check(path)?;
    let plugin = fingerprint.plugin.clone().unwrap_or_else(|| "?".into());
    let library = open_now(path)?;
    // Never unloaded (DESIGN.md §2): leaking keeps every vtable and thread-local valid.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the declaration was checked above: same compiler, same runtime, same layout.
    let header: &DeclarationHeader = unsafe {
        let symbol = library
            .get::<*const DeclarationHeader>(DECLARATION_SYMBOL.as_bytes())
            .map_err(|e| LoadError::Open {
                path: path.into(),
                detail: e.to_string(),
            })?;
        &**symbol
    };
    let mut collect = Collect(Vec::new());
    std::panic::catch_unwind(AssertUnwindSafe(|| (header.register)(&mut collect))).map_err(
        |payload| LoadError::RegisterPanicked {
            path: path.into(),
            plugin,
            message: panic_message(&*payload),
        },
    )?;
    Ok(LoadedPlugin {
        path: path.into(),
        fingerprint,
        registrations: collect.0,
    })
}

#[cfg(unix)]
fn open_now(path: &Path) -> Result<libloading::Library, LoadError> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: the declaration check passed; constructors of this library are inventory
    // registrations built against the same runtime.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map(Into::into)
        .map_err(|e| LoadError::Open {
            path: path.into(),
            detail: error_chain(&e),
        })
}

#[cfg(not(unix))]
fn open_now(path: &Path) -> Result<libloading::Library, LoadError> {
    unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
        path: path.into(),
        detail: error_chain(&e),
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What a scan of the search path found.
#[derive(Default)]
pub struct Scan {
    pub loaded: Vec<LoadedPlugin>,
    pub refused: Vec<LoadError>,
}

/// Loads every plugin in `dirs`; a refusal never stops the others.
pub fn scan(dirs: &[PathBuf]) -> Scan {
    let mut scan = Scan::default();
    for dir in dirs {
        for path in candidate_files(dir) {
            match load(&path) {
                Ok(plugin) => {
                    tracing::debug!(path = %path.display(), plugin = plugin.name(), "loaded plugin");
                    scan.loaded.push(plugin)
                }
                Err(error) => {
                    tracing::debug!(%error, "refused plugin");
                    scan.refused.push(error)
                }
            }
        }
    }
    scan
}
