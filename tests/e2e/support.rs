//! Helpers for the end-to-end tests: where the built `llmlab` binary and its runtime are, running
//! it, and compiling small plugin libraries with the same rustc and runtime (as a third-party
//! author would) into temporary directories, so test libraries never land next to the binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `target/<profile>`: the directory holding `llmlab`, the runtime and the workspace's plugins.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// The built `llmlab` binary; the README's test command builds it before running the tests.
pub fn llmlab_binary() -> PathBuf {
    let path = target_dir().join("llmlab");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release --workspace` before the tests (the README's test command does)",
        path.display()
    );
    path
}

/// `llmlab` with `args`, `stdin` as input, plugins from `plugin_dirs` (the executable's directory
/// is always searched too). History goes to a temp file so tests never touch `~`.
pub fn llmlab(args: &[&str], stdin: &str) -> Output {
    let history = std::env::temp_dir().join(format!("llmlab-test-history-{}", std::process::id()));
    run_llmlab(&repo_root(), &history, args, stdin.as_bytes())
}

/// `llmlab` with raw bytes on stdin, in `cwd` (run directories land there, not in the
/// repository), history in `cwd/.history`.
pub fn llmlab_in(cwd: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run_llmlab(cwd, &cwd.join(".history"), args, stdin)
}

fn run_llmlab(cwd: &Path, history: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(llmlab_binary())
        .args(args)
        .current_dir(cwd)
        .env("LLMLAB_HISTORY", history)
        .env_remove("LLMLAB_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn llmlab");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write llmlab's stdin");
    child.wait_with_output().expect("llmlab runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `llmlab run SCRIPT --set key=value ... --set runs_dir=RUNS` (run directories land in `runs`, not
/// the repository): the output, succeeded or not, for tests that expect a failure.
pub fn run_script_output(script: &str, settings: &[(&str, &str)], runs: &Path) -> Output {
    let mut pairs: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.push(format!("runs_dir={}", runs.display()));
    let mut args = vec!["run", script];
    for pair in &pairs {
        args.extend(["--set", pair.as_str()]);
    }
    llmlab(&args, "")
}

/// As [`run_script_output`], asserting the run succeeded (the failure shows both streams);
/// returns stdout.
pub fn run_script(script: &str, settings: &[(&str, &str)], runs: &Path) -> String {
    let output = run_script_output(script, settings, runs);
    let out = stdout(&output);
    assert!(
        output.status.success(),
        "`llmlab run {script}` failed:\n{out}\n{}",
        stderr(&output)
    );
    out
}

/// Writes `source` to `dir/NAME.rhai` and runs it as [`run_script`] does; returns stdout.
pub fn run_inline_script(
    name: &str,
    source: &str,
    settings: &[(&str, &str)],
    dir: &Path,
) -> String {
    let path = dir.join(format!("{name}.rhai"));
    std::fs::write(&path, source).expect("write the test script");
    run_script(path.to_str().expect("UTF-8 temp path"), settings, dir)
}

/// Compiles `source` with this toolchain's rustc into `dir/lib<name>.so`.
/// `against_runtime` links it to the host's runtime as a real plugin (a Rust dylib);
/// otherwise it is a self-contained cdylib (for libraries that must be refused unloaded).
pub fn compile_library(
    dir: &Path,
    name: &str,
    source_file: &Path,
    against_runtime: bool,
) -> PathBuf {
    let out = dir.join(format!("lib{name}.{}", std::env::consts::DLL_EXTENSION));
    let deps = target_dir().join("deps");
    let mut rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
    rustc
        .current_dir(repo_root())
        .env("CARGO_PKG_VERSION", "0.1.0")
        .env("CARGO_CRATE_NAME", name)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            name,
            "-C",
            "opt-level=1",
            "-o",
        ])
        .arg(&out)
        .arg(source_file);
    if against_runtime {
        let runtime = deps.join(format!(
            "libllmlab_plugin_api.{}",
            std::env::consts::DLL_EXTENSION
        ));
        rustc
            .args(["--crate-type", "dylib", "-C", "prefer-dynamic", "-L"])
            .arg(format!("dependency={}", deps.display()))
            .arg("--extern")
            .arg(format!("llmlab_plugin_api={}", runtime.display()));
    } else {
        rustc.args(["--crate-type", "cdylib"]);
    }
    let output = rustc.output().expect("rustc runs");
    assert!(
        output.status.success(),
        "compiling {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Builds the example third-party plugin (docs/examples/hello-plugin) against the host's runtime.
pub fn build_hello_plugin(dir: &Path) -> PathBuf {
    let source = repo_root().join("docs/examples/hello-plugin/src/lib.rs");
    compile_library(dir, "hello_plugin", &source, true)
}

/// Source of a library exporting a declaration with `text`, and a constructor that writes
/// `marker` if it ever runs (it must not: refused libraries are never loaded).
pub fn declaration_source(text: &str, marker: &Path) -> String {
    format!(
        r#"
#[repr(C)]
pub struct Declaration {{ register: fn(&mut u8), text_len: u64, text: [u8; {len}] }}
fn register(_: &mut u8) {{ panic!("register of a refused plugin was called") }}
#[no_mangle]
pub static LLMLAB_PLUGIN_DECLARATION: Declaration =
    Declaration {{ register, text_len: {len}, text: *b{text:?} }};
extern "C" fn constructor() {{ let _ = std::fs::write({marker:?}, b"plugin code ran"); }}
#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;
"#,
        len = text.len(),
        text = text,
        marker = marker.display().to_string(),
    )
}

/// The host's fingerprint with `key`'s value replaced, as a plugin declaration text.
pub fn fingerprint_with(key: &str, value: &str) -> String {
    let mut text: String = llmlab_plugin_api::FINGERPRINT
        .lines()
        .map(|line| {
            if line.starts_with(&format!("{key}=")) {
                format!("{key}={value}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    text.push_str("plugin=fixture\nplugin_version=0.0.1\n");
    text
}
