//! The plugin declaration: the one `#[no_mangle]` static a plugin exports, and the fingerprint in it.
//!
//! Rust has no stable ABI, so the host must know *before calling any plugin code* whether a
//! library was built by the same compiler against the same runtime. The declaration is therefore
//! plain bytes the host can read straight out of the file (no relocation, no constructor): a
//! `key=value` text naming the declaration format, the plugin-API version, rustc, candle's version
//! and feature set, and a hash of this crate's source plus the locked versions of every crate whose
//! types cross the boundary. Only the `register` pointer in front of it is ever called, and only
//! after the host accepted the text.

use std::fmt;

use crate::component::Registrar;

/// Name of the exported static every plugin defines through [`declare_plugin!`](crate::declare_plugin).
pub const DECLARATION_SYMBOL: &str = "LLMLAB_PLUGIN_DECLARATION";
/// Version of the declaration layout itself (the struct below and the text keys).
pub const DECLARATION_FORMAT: &str = "1";
/// `llmlab-plugin-api`'s semver.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
/// `rustc --version` of the compiler that built this crate.
pub const RUSTC_VERSION: &str = env!("LLMLAB_RUSTC_VERSION");
/// candle-core's version from the build's Cargo.lock.
pub const CANDLE_VERSION: &str = env!("LLMLAB_CANDLE_VERSION");
/// candle's feature set that matters for the ABI.
#[cfg(feature = "cuda")]
pub const CANDLE_FEATURES: &str = "cuda";
#[cfg(not(feature = "cuda"))]
pub const CANDLE_FEATURES: &str = "cpu";
/// Hash of this crate's source and the crossing crates' locked versions.
pub const API_HASH: &str = env!("LLMLAB_API_HASH");
/// The source files [`API_HASH`] covers (repository paths, comma-separated): this crate's
/// `src/` alone; the building blocks (`nn/`, `train/`) are not in it (plugin-api/build.rs).
pub const API_HASH_INPUTS: &str = env!("LLMLAB_API_HASH_INPUTS");

macro_rules! fingerprint_text {
    ($features:literal) => {
        concat!(
            "format=1\napi=",
            env!("CARGO_PKG_VERSION"),
            "\nrustc=",
            env!("LLMLAB_RUSTC_VERSION"),
            "\ncandle=",
            env!("LLMLAB_CANDLE_VERSION"),
            "\ncandle_features=",
            $features,
            "\napi_hash=",
            env!("LLMLAB_API_HASH"),
        )
    };
}

/// The fingerprint text of this build of the runtime; the host compares every plugin's with it.
#[cfg(feature = "cuda")]
pub const FINGERPRINT: &str = fingerprint_text!("cuda");
#[cfg(not(feature = "cuda"))]
pub const FINGERPRINT: &str = fingerprint_text!("cpu");

/// The fingerprint of the runtime library actually loaded in this process. [`FINGERPRINT`] is a
/// constant, copied into each binary at *its* compile time; this function runs inside
/// `libllmlab_plugin_api.so`, so a host comparing the two finds out when the runtime next to it
/// was rebuilt from another plugin-api or Cargo.lock (the file name has no hash, so such a build
/// silently replaces it).
#[inline(never)]
pub fn runtime_fingerprint() -> &'static str {
    FINGERPRINT
}

/// The function a plugin exports to hand its components to the host.
pub type RegisterFn = fn(&mut dyn Registrar);

/// The exported static. `repr(C)` so the host can read `text` out of the file at a fixed offset.
#[repr(C)]
pub struct Declaration<const N: usize> {
    pub register: RegisterFn,
    pub text_len: u64,
    pub text: [u8; N],
}

/// The fixed-size front of every [`Declaration`], whatever its text length.
#[repr(C)]
pub struct DeclarationHeader {
    pub register: RegisterFn,
    pub text_len: u64,
}

/// Offset of `text` inside a declaration: pointer plus length, on every 64- and 32-bit target.
pub const fn text_offset(pointer_bytes: usize) -> usize {
    pointer_bytes + 8
}

/// Total length of `parts`; used to size the declaration at compile time.
pub const fn text_len(parts: &[&str]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

/// `parts` concatenated into a fixed-size array at compile time.
pub const fn text_bytes<const N: usize>(parts: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut k = 0;
    let mut i = 0;
    while i < parts.len() {
        let bytes = parts[i].as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            out[k] = bytes[j];
            k += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Declares this crate an llmlab plugin named `$name`: exports the declaration static and a
/// `register` function that hands the host every component this crate submitted with
/// [`submit_component!`](crate::submit_component). Call it once, at the end of `lib.rs`.
#[macro_export]
macro_rules! declare_plugin {
    ($name:expr) => {
        $crate::declare_plugin!(@fingerprint $name, [$crate::declaration::FINGERPRINT]);
    };
    // Loader tests build deliberately mismatched plugins with a hand-written fingerprint.
    (@fingerprint $name:expr, [$($part:expr),* $(,)?]) => {
        const __LLMLAB_DECLARATION_PARTS: &[&str] = &[
            $($part,)*
            "\nplugin=",
            $name,
            "\nplugin_version=",
            env!("CARGO_PKG_VERSION"),
            "\n",
        ];
        const __LLMLAB_DECLARATION_LEN: usize =
            $crate::declaration::text_len(__LLMLAB_DECLARATION_PARTS);

        #[unsafe(no_mangle)]
        #[used]
        pub static LLMLAB_PLUGIN_DECLARATION: $crate::declaration::Declaration<
            __LLMLAB_DECLARATION_LEN,
        > = $crate::declaration::Declaration {
            register: __llmlab_register,
            text_len: __LLMLAB_DECLARATION_LEN as u64,
            text: $crate::declaration::text_bytes(__LLMLAB_DECLARATION_PARTS),
        };

        fn __llmlab_register(registrar: &mut dyn $crate::Registrar) {
            $crate::component::register_crate(env!("CARGO_CRATE_NAME"), registrar);
        }
    };
}

/// A parsed declaration text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub format: String,
    pub api: String,
    pub rustc: String,
    pub candle: String,
    pub candle_features: String,
    pub api_hash: String,
    /// Set in plugin declarations, absent in the host's own.
    pub plugin: Option<String>,
    pub plugin_version: Option<String>,
}

impl Fingerprint {
    /// The fingerprint of the runtime this code was compiled against.
    pub fn current() -> Fingerprint {
        Fingerprint::parse(FINGERPRINT).expect("the built-in fingerprint parses")
    }

    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let mut fields = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("malformed declaration line {line:?}"))?;
            fields.insert(key, value.to_string());
        }
        let mut take = |key: &str| fields.remove(key);
        let format = take("format").ok_or("declaration has no `format`")?;
        if format != DECLARATION_FORMAT {
            return Err(format!(
                "declaration format {format} is not the format {DECLARATION_FORMAT} this host reads"
            ));
        }
        let mut required =
            |key: &str| take(key).ok_or_else(|| format!("declaration has no `{key}`"));
        Ok(Fingerprint {
            format,
            api: required("api")?,
            rustc: required("rustc")?,
            candle: required("candle")?,
            candle_features: required("candle_features")?,
            api_hash: required("api_hash")?,
            plugin: take("plugin"),
            plugin_version: take("plugin_version"),
        })
    }

    /// Whether a plugin with this fingerprint may be loaded into a `host`; the error says why not.
    pub fn check_compatible(&self, host: &Fingerprint) -> Result<(), Mismatch> {
        let (p_major, p_minor) = major_minor(&self.api);
        let (h_major, h_minor) = major_minor(&host.api);
        let pair = |plugin: &str, host: &str| (plugin.to_string(), host.to_string());
        if self.rustc != host.rustc {
            return Err(Mismatch::Rustc(pair(&self.rustc, &host.rustc)));
        }
        if p_major != h_major {
            return Err(Mismatch::ApiMajor(pair(&self.api, &host.api)));
        }
        if p_minor > h_minor {
            return Err(Mismatch::ApiNewer(pair(&self.api, &host.api)));
        }
        if self.candle_features != host.candle_features {
            return Err(Mismatch::CandleFeatures(pair(
                &self.candle_features,
                &host.candle_features,
            )));
        }
        if self.candle != host.candle {
            return Err(Mismatch::CandleVersion(pair(&self.candle, &host.candle)));
        }
        if self.api == host.api && self.api_hash != host.api_hash {
            return Err(Mismatch::ApiSource(pair(&self.api_hash, &host.api_hash)));
        }
        Ok(())
    }
}

fn major_minor(version: &str) -> (String, String) {
    let mut it = version.split('.');
    (
        it.next().unwrap_or("").to_string(),
        it.next().unwrap_or("").to_string(),
    )
}

/// Why a plugin was refused; each names the plugin's side first, then the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Rustc((String, String)),
    ApiMajor((String, String)),
    ApiNewer((String, String)),
    CandleFeatures((String, String)),
    CandleVersion((String, String)),
    ApiSource((String, String)),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Rustc((p, h)) => write!(
                f,
                "compiler mismatch: plugin built with `{p}`, host with `{h}` (Rust has no stable ABI); \
                 rebuild the plugin with the toolchain pinned in the host's rust-toolchain.toml"
            ),
            Mismatch::ApiMajor((p, h)) => write!(
                f,
                "plugin API major version mismatch: plugin built for llmlab-plugin-api {p}, host has {h}; \
                 rebuild the plugin against this host's plugin-api: cargo build --release"
            ),
            Mismatch::ApiNewer((p, h)) => write!(
                f,
                "plugin API too new: plugin built for llmlab-plugin-api {p}, host has only {h}; \
                 update the host or rebuild the plugin against its plugin-api"
            ),
            Mismatch::CandleFeatures((p, h)) => write!(
                f,
                "candle feature mismatch: plugin built with candle features [{p}], host with [{h}]; \
                 rebuild both the same way: `cargo build --release --workspace` for cpu, \
                 scripts/build-cuda.sh for cuda (docs/cuda.md)"
            ),
            Mismatch::CandleVersion((p, h)) => write!(
                f,
                "candle version mismatch: plugin built with candle {p}, host with candle {h}; \
                 rebuild the plugin with the host's Cargo.lock"
            ),
            Mismatch::ApiSource((p, h)) => write!(
                f,
                "plugin-api source mismatch: same version but plugin-api hash {p} vs host {h}; \
                 rebuild the plugin against this host's plugin-api and Cargo.lock"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: &str, value: &str) -> Fingerprint {
        let text: String = FINGERPRINT
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key}=")) {
                    format!("{key}={value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        Fingerprint::parse(&text).unwrap()
    }

    #[test]
    fn own_fingerprint_is_compatible() {
        let host = Fingerprint::current();
        assert_eq!(host.check_compatible(&host), Ok(()));
        assert_eq!(host.api, API_VERSION);
    }

    #[test]
    fn older_minor_passes_the_version_check() {
        let host = with("api", "1.4.0");
        let plugin = with("api", "1.2.7");
        assert_eq!(plugin.check_compatible(&host), Ok(()));
    }

    #[test]
    fn each_mismatch_names_both_sides() {
        let host = Fingerprint::current();
        let cases = [
            (with("rustc", "rustc 1.0.0"), "compiler mismatch"),
            (with("api", "999.0.0"), "major version mismatch"),
            (
                with("candle_features", "cuda-xyz"),
                "candle feature mismatch",
            ),
            (with("candle", "0.0.1"), "candle version mismatch"),
            (with("api_hash", "0000"), "source mismatch"),
        ];
        for (plugin, expected) in cases {
            let message = plugin.check_compatible(&host).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("rebuild"), "{message}");
        }
        let message = with("api", "999.0.0")
            .check_compatible(&host)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("999.0.0") && message.contains(API_VERSION),
            "{message}"
        );
    }

    #[test]
    fn parse_rejects_unknown_format_and_missing_keys() {
        assert!(Fingerprint::parse("format=2\n")
            .unwrap_err()
            .contains("format 2"));
        assert!(Fingerprint::parse("format=1\napi=1.0.0\n")
            .unwrap_err()
            .contains("rustc"));
        assert!(Fingerprint::parse("garbage").is_err());
    }

    #[test]
    fn text_helpers_concatenate_at_compile_time() {
        const PARTS: &[&str] = &["ab", "", "cde"];
        const BYTES: [u8; text_len(PARTS)] = text_bytes(PARTS);
        assert_eq!(&BYTES, b"abcde");
    }
}
