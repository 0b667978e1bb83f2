//! Finds plugin libraries, checks each one's declaration *before running any of its code*, loads
//! the accepted ones and collects their components. Libraries are never unloaded: vtables of
//! the components they registered point into them.
//!
//! The declaration is read straight out of the file (the `LLMLAB_PLUGIN_DECLARATION` symbol's
//! bytes, located with `object`), so a mismatched plugin is refused without `dlopen`, i.e. without
//! its constructors ever running. Accepted libraries are opened with `RTLD_NOW` so a runtime built
//! differently shows up as a load error, not as a crash on first call.
//!
//! Only regular files are read, and at most [`MAX_LIBRARY_BYTES`] of them: a FIFO named `x.so`
//! must not block the scan, `/dev/zero` must not be read whole. Entries that look like libraries
//! but are not regular files (a directory `dir.so`, a dangling symlink, a symlink loop) are
//! reported as refused, not skipped silently. Every library read is hashed (SHA-256): the hash
//! is checked against `--trusted-plugins` (see [`crate::trust`]) before `dlopen`, and recorded
//! in the run directory's `plugins.json`.

use std::ffi::OsStr;
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::declaration::{
    text_offset, DeclarationHeader, Mismatch, DECLARATION_SYMBOL,
};
use llmlab_plugin_api::tracing;
use llmlab_plugin_api::{Fingerprint, Registrar, Registration};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::panics::panic_message;
use crate::trust::{sha256_hex, TrustedPlugins};

/// Environment variable with extra plugin directories, `:`-separated like `PATH`.
pub const PLUGIN_PATH_ENV: &str = "LLMLAB_PLUGIN_PATH";

/// The largest file read as a plugin library. The cuda runtime, the largest library llmlab
/// builds, is ~75 MB; anything past this is not a plugin and is not read.
pub const MAX_LIBRARY_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "not a regular file: {path} is {what}; only regular files are read as plugin libraries"
    )]
    NotRegularFile { path: PathBuf, what: String },
    #[error("{path} is {bytes} bytes, more than any plugin library (the limit is {MAX_LIBRARY_BYTES} bytes); not read")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error(
        "refused {path}: its sha256 {sha256} is not in the allow-list {list} (--trusted-plugins); \
         add the line `{sha256}  {file}` to it if you trust this library"
    )]
    Untrusted {
        path: PathBuf,
        file: String,
        sha256: String,
        list: PathBuf,
    },
    #[error(
        "refused {path}: plugin `{plugin}` is already loaded from {first}; the same plugin crate \
         in two files would register its components twice (remove one of the files)"
    )]
    Duplicate {
        path: PathBuf,
        plugin: String,
        first: PathBuf,
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
    /// SHA-256 of the library file as it was read and checked, lowercase hex.
    pub sha256: String,
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

/// Shared libraries in `dir` that may be plugins (not the runtime or libstd themselves), sorted:
/// regular files as `Ok`, entries with a library's name that are not regular files (`dir.so`, a
/// dangling symlink, a symlink loop, a FIFO) as the refusal saying what they are. Nothing is
/// opened here (`stat` never blocks on a FIFO).
pub fn candidate_files(dir: &Path) -> Vec<Result<PathBuf, LoadError>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension() == Some(OsStr::new(std::env::consts::DLL_EXTENSION)))
        .filter(|p| {
            let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
            !(name.starts_with("libllmlab_plugin_api") || name.starts_with("libstd-"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| match not_regular(&path) {
            None => Ok(path),
            Some(what) => Err(LoadError::NotRegularFile { path, what }),
        })
        .collect()
}

/// What `path` is when it is not a regular file (following symlinks), `None` when it is one.
fn not_regular(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(meta) => Some(file_kind(&meta.file_type())),
        Err(error) => Some(unreadable(path, &error)),
    }
}

/// Why `path` could not be stat'ed, in words (dangling links and loops named as such).
fn unreadable(path: &Path, error: &std::io::Error) -> String {
    let link = std::fs::read_link(path).ok();
    match (error.kind(), link) {
        (std::io::ErrorKind::NotFound, Some(target)) => {
            format!("a dangling symlink (to {})", target.display())
        }
        (_, Some(_)) if error.raw_os_error() == Some(libc::ELOOP) => {
            "a symlink loop (too many levels of symbolic links)".to_string()
        }
        _ => format!("unreadable ({error})"),
    }
}

fn file_kind(kind: &std::fs::FileType) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)".into();
        }
        if kind.is_socket() {
            return "a socket".into();
        }
        if kind.is_char_device() {
            return "a character device".into();
        }
        if kind.is_block_device() {
            return "a block device".into();
        }
    }
    if kind.is_dir() {
        return "a directory".into();
    }
    "not a regular file".into()
}

/// The bytes of the library at `path`: a regular file, read whole but never past
/// [`MAX_LIBRARY_BYTES`]. The file is opened without blocking (a FIFO would otherwise wait for
/// a writer) and checked on the open handle, so a swap between check and read cannot slip a
/// FIFO or device in.
pub fn read_library(path: &Path) -> Result<Vec<u8>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.into(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|error| {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            LoadError::NotRegularFile {
                path: path.into(),
                what: unreadable(path, &error),
            }
        } else {
            read_error(error)
        }
    })?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(LoadError::NotRegularFile {
            path: path.into(),
            what: file_kind(&meta.file_type()),
        });
    }
    if meta.len() > MAX_LIBRARY_BYTES {
        return Err(LoadError::TooLarge {
            path: path.into(),
            bytes: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_LIBRARY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_LIBRARY_BYTES {
        return Err(LoadError::TooLarge {
            path: path.into(),
            bytes: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Reads and parses the declaration of the library at `path` without loading it.
pub fn read_declaration(path: &Path) -> Result<Fingerprint, LoadError> {
    parse_declaration(path, &read_library(path)?)
}

/// Parses the declaration out of `bytes`, the contents of the library at `path`.
pub fn parse_declaration(path: &Path, bytes: &[u8]) -> Result<Fingerprint, LoadError> {
    let file = object::File::parse(bytes).map_err(|e| LoadError::NotSharedLibrary {
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

/// A library that passed every check made without running its code.
pub struct Checked {
    pub fingerprint: Fingerprint,
    pub sha256: String,
}

/// Checks the library at `path` against this host; `Ok` carries its fingerprint.
pub fn check(path: &Path) -> Result<Fingerprint, LoadError> {
    check_trusted(path, None).map(|c| c.fingerprint)
}

/// Checks the library at `path` against this host and, when given, the allow-list `trusted`:
/// everything that can be decided from the file's bytes, before any of its code runs.
pub fn check_trusted(path: &Path, trusted: Option<&TrustedPlugins>) -> Result<Checked, LoadError> {
    let bytes = read_library(path)?;
    let sha256 = sha256_hex(&bytes);
    if let Some(list) = trusted {
        if !list.contains(&sha256) {
            return Err(LoadError::Untrusted {
                path: path.into(),
                file: path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                sha256,
                list: list.path().to_path_buf(),
            });
        }
    }
    let fingerprint = parse_declaration(path, &bytes)?;
    fingerprint
        .check_compatible(&Fingerprint::current())
        .map_err(|mismatch| LoadError::Mismatch {
            path: path.into(),
            plugin: fingerprint.plugin.clone().unwrap_or_else(|| "?".into()),
            mismatch,
        })?;
    Ok(Checked {
        fingerprint,
        sha256,
    })
}

struct Collect(Vec<&'static Registration>);

impl Registrar for Collect {
    fn register(&mut self, registration: &'static Registration) {
        self.0.push(registration);
    }
}

/// Checks, loads and registers the plugin at `path`. The library stays loaded for the process.
pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
    load_checked(path, check_trusted(path, None)?)
}

/// Loads and registers the plugin at `path` that passed [`check_trusted`].
pub fn load_checked(path: &Path, checked: Checked) -> Result<LoadedPlugin, LoadError> {
    let Checked {
        fingerprint,
        sha256,
    } = checked;
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
    // `register` selects the process-wide inventory by crate name; another library whose crate
    // has the same name (two authors' `charlstm`) would hand over those entries too. Keep only
    // the registrations that live in this library's own image.
    let own = own_registrations(header as *const DeclarationHeader as *const u8, collect.0);
    Ok(LoadedPlugin {
        path: path.into(),
        fingerprint,
        sha256,
        registrations: own,
    })
}

/// The registrations whose statics lie in the same loaded object as `anchor` (an address inside
/// it: its declaration, or a function of the host for built-ins).
pub fn own_registrations(
    anchor: *const u8,
    registrations: Vec<&'static Registration>,
) -> Vec<&'static Registration> {
    let Some(home) = object_base(anchor) else {
        return registrations;
    };
    registrations
        .into_iter()
        .filter(|r| object_base(*r as *const Registration as *const u8) == Some(home))
        .collect()
}

/// Base address of the loaded object (executable or shared library) that contains `address`.
#[cfg(unix)]
fn object_base(address: *const u8) -> Option<usize> {
    // SAFETY: dladdr only reads the dynamic linker's tables; `info` is plain data.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        (libc::dladdr(address.cast(), &mut info) != 0).then_some(info.dli_fbase as usize)
    }
}

#[cfg(not(unix))]
fn object_base(_: *const u8) -> Option<usize> {
    None
}

/// The file of the loaded object that contains `address`.
#[cfg(unix)]
fn object_path(address: *const u8) -> Option<PathBuf> {
    // SAFETY: as in `object_base`; `dli_fname` is a NUL-terminated string owned by the loader.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(address.cast(), &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy();
        Some(PathBuf::from(name.into_owned()))
    }
}

#[cfg(not(unix))]
fn object_path(_: *const u8) -> Option<PathBuf> {
    None
}

/// Whether the runtime library this process loaded (`libllmlab_plugin_api.so`) is the one the
/// host was built against. Its file name has no hash, so a build of another plugin-api (another
/// checkout, Cargo.lock or feature set) into the same directory silently replaces it; the host
/// then runs on code it was not compiled for. `None` when they match, else what is wrong.
pub fn runtime_problem() -> Option<String> {
    let host = llmlab_plugin_api::FINGERPRINT;
    let runtime = llmlab_plugin_api::declaration::runtime_fingerprint();
    if host == runtime {
        return None;
    }
    let path = object_path(llmlab_plugin_api::declaration::runtime_fingerprint as *const u8)
        .map_or_else(|| "the runtime".to_string(), |p| p.display().to_string());
    let (host_fp, runtime_fp) = (Fingerprint::parse(host), Fingerprint::parse(runtime));
    let differences = match (host_fp, runtime_fp) {
        (Ok(h), Ok(r)) => fingerprint_rows(&r, Some(&h))
            .into_iter()
            .filter(|row| row.host.is_some())
            .map(|row| {
                format!(
                    "{} {} (host built against {})",
                    row.label,
                    row.value,
                    row.host.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => format!("runtime declares {runtime:?}"),
    };
    Some(format!(
        "stale or foreign runtime: {path} is not the build of libllmlab_plugin_api this host was \
         compiled against ({differences}); it was replaced by another build (another plugin-api \
         source, Cargo.lock or feature set). Rebuild host and plugins together: \
         cargo build --release --workspace (out-of-tree plugins: llmlab plugin build)"
    ))
}

/// One line of a readable fingerprint: what, the value, and the host's value when it differs.
pub struct FingerprintRow {
    pub label: &'static str,
    pub value: String,
    /// The host's value, only where it differs from `value`.
    pub host: Option<String>,
}

/// The fields of `fingerprint` in reading order, each compared with `host` when given.
pub fn fingerprint_rows(
    fingerprint: &Fingerprint,
    host: Option<&Fingerprint>,
) -> Vec<FingerprintRow> {
    let row = |label, value: &str, host_value: Option<&str>| FingerprintRow {
        label,
        value: value.to_string(),
        host: host_value.filter(|h| *h != value).map(str::to_string),
    };
    let mut rows = Vec::new();
    if let Some(plugin) = &fingerprint.plugin {
        let version = fingerprint.plugin_version.as_deref().unwrap_or("?");
        rows.push(row("plugin", &format!("{plugin} {version}"), None));
    }
    rows.extend([
        row("plugin API", &fingerprint.api, host.map(|h| h.api.as_str())),
        row(
            "plugin-api hash",
            &fingerprint.api_hash,
            host.map(|h| h.api_hash.as_str()),
        ),
        row("rustc", &fingerprint.rustc, host.map(|h| h.rustc.as_str())),
        row(
            "candle",
            &fingerprint.candle,
            host.map(|h| h.candle.as_str()),
        ),
        row(
            "candle features",
            &fingerprint.candle_features,
            host.map(|h| h.candle_features.as_str()),
        ),
        row(
            "declaration format",
            &fingerprint.format,
            host.map(|h| h.format.as_str()),
        ),
    ]);
    rows
}

/// `fingerprint` as aligned lines for people (`llmlab plugin check`): each field, and next to
/// any that differs from this host's, the host's value.
pub fn describe_fingerprint(fingerprint: &Fingerprint) -> String {
    let host = Fingerprint::current();
    fingerprint_rows(fingerprint, Some(&host))
        .into_iter()
        .map(|row| match row.host {
            None => format!("  {:<19} {}\n", row.label, row.value),
            Some(host) => format!(
                "  {:<19} {}   <- differs: this host has {host}\n",
                row.label, row.value
            ),
        })
        .collect()
}

/// `path` as dlopen must see it to open that file: a bare file name (`libx.so`) would make
/// dlopen search the library path and load another library of that name, or none.
fn as_file_path(path: &Path) -> std::borrow::Cow<'_, Path> {
    let bare = path.parent().is_some_and(|p| p.as_os_str().is_empty());
    if bare {
        std::borrow::Cow::Owned(Path::new(".").join(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

#[cfg(unix)]
fn open_now(path: &Path) -> Result<libloading::Library, LoadError> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: the declaration check passed; constructors of this library are inventory
    // registrations built against the same runtime.
    unsafe { Library::open(Some(as_file_path(path).as_ref()), RTLD_NOW | RTLD_LOCAL) }
        .map(Into::into)
        .map_err(|e| LoadError::Open {
            path: path.into(),
            detail: error_chain(&e),
        })
}

#[cfg(not(unix))]
fn open_now(path: &Path) -> Result<libloading::Library, LoadError> {
    unsafe { libloading::Library::new(as_file_path(path).as_ref()) }.map_err(|e| LoadError::Open {
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

/// Loads every plugin in `dirs`; a refusal never stops the others. With `trusted`, only
/// libraries on the allow-list are opened. A second file of a plugin already loaded (the same
/// crate copied or built twice) is refused before it is opened: its constructors would add the
/// components a second time to the one shared inventory.
pub fn scan(dirs: &[PathBuf], trusted: Option<&TrustedPlugins>) -> Scan {
    let mut scan = Scan::default();
    for dir in dirs {
        for candidate in candidate_files(dir) {
            let result = candidate.and_then(|path| {
                let checked = check_trusted(&path, trusted)?;
                if let Some(first) = scan
                    .loaded
                    .iter()
                    .find(|p| p.fingerprint.plugin == checked.fingerprint.plugin)
                {
                    return Err(LoadError::Duplicate {
                        path,
                        plugin: first.name().to_string(),
                        first: first.path.clone(),
                    });
                }
                load_checked(&path, checked)
            });
            match result {
                Ok(plugin) => {
                    tracing::debug!(path = %plugin.path.display(), plugin = plugin.name(), "loaded plugin");
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

#[cfg(test)]
mod tests {
    use super::as_file_path;
    use std::path::Path;

    #[test]
    fn a_bare_library_name_is_opened_as_a_file_in_the_working_directory() {
        assert_eq!(as_file_path(Path::new("libx.so")), Path::new("./libx.so"));
        assert_eq!(as_file_path(Path::new("d/libx.so")), Path::new("d/libx.so"));
        assert_eq!(
            as_file_path(Path::new("/d/libx.so")),
            Path::new("/d/libx.so")
        );
    }
}
