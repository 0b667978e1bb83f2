//! The REPL and `llmlab run` driven as a user would: statements over several lines, `:` commands,
//! an error followed by more work, settings from `--set`; `:save` and `:plot`, `help()` in scripts,
//! streamed text shown once, a line of invalid UTF-8 on a pipe; and at a real (pseudo-)terminal,
//! history per project with Ctrl-R and progress bars cleared when a call is cancelled.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use llmlab_e2e::*;

#[test]
fn repl_reads_multi_line_input_and_recovers_from_errors() {
    let input = "let double = |x| {\n  x * 2\n};\nfn add(a,\n       b) { a + b }\nno_such_function(1)\nprint(add(double.call(20), 2));\n:plugins\n:help\n:bogus\n";
    let output = llmlab(&[], input);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("Function not found: no_such_function"),
        "{err}"
    );
    assert!(out.contains("42"), "{out}");
    assert!(out.contains(":load FILE"), ":help lists commands:\n{out}");
    assert!(err.contains("unknown command :bogus"), "{err}");
}

#[test]
fn repl_keeps_variables_and_prints_values() {
    let output = llmlab(
        &[],
        "let t = tensor([[1, 2], [3, 4]]);\nt.sum()\nt.shape()\n",
    );
    let out = stdout(&output);
    assert!(out.contains("10.0"), "{out}");
    assert!(out.contains("[2, 2]"), "{out}");
}

#[test]
fn run_reads_settings_and_reports_script_errors_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("exp.rhai");
    std::fs::write(
        &script,
        "let steps = setting(\"steps\", 500);\nprint(`steps=${steps}`);\n",
    )
    .unwrap();
    let output = llmlab(&["run", script.to_str().unwrap(), "--set", "steps=20"], "");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "steps=20\n");

    std::fs::write(&script, "let x = 1;\nx.nope();\n").unwrap();
    let output = llmlab(&["run", script.to_str().unwrap()], "");
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("exp.rhai") && err.contains("nope"), "{err}");
}

#[test]
fn version_prints_the_fingerprint() {
    let output = llmlab(&["--version"], "");
    let out = stdout(&output);
    assert!(
        out.contains("candle_features=") && out.contains("rustc="),
        "{out}"
    );
}

/// A tokenizer and an untrained one-layer model, small enough for CI.
const TINY: &str = r#"let data = corpus("stories", #{ bytes: 30000, seed: 1 });
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(data);
let m = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32, ctx: 32 });
"#;

#[test]
fn an_invalid_utf8_line_is_reported_with_its_number_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = b"let x = 41;\n".to_vec();
    input.extend_from_slice(b"print(\"caf\xe9\");\n");
    input.extend_from_slice(b"print(x + 1);\n");
    let output = llmlab_in(dir.path(), &[], &input);
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("input line 2 is not valid UTF-8") && err.contains("skipped"),
        "{err}"
    );
    assert_eq!(out.trim(), "42", "the variable survived:\n{out}");
}

#[test]
fn help_prints_in_scripts_and_once_at_the_repl() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("h.rhai");
    std::fs::write(&script, "help(\"gpt\");\nhelp();\n").unwrap();
    let output = llmlab_in(dir.path(), &["run", script.to_str().unwrap()], b"");
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        out.contains("n_layer") && out.contains("model(\"gpt\")"),
        "{out}"
    );

    let output = llmlab_in(dir.path(), &[], b"help(\"gpt\")\n");
    let out = stdout(&output);
    assert_eq!(out.matches("n_layer").count(), 1, "printed once:\n{out}");
}

#[test]
fn save_writes_the_statements_that_succeeded_as_a_runnable_script() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("session.rhai");
    let input = format!(
        "let a = 20;\nbogus(1);\nfn twice(x) {{\n  x * 2\n}}\nlet b = twice(a) + 2;\nb\nprint(`b=${{b}}`);\n:save {}\n",
        saved.display()
    );
    let output = llmlab_in(dir.path(), &[], input.as_bytes());
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    assert!(out.contains("saved 5 statements"), "{out}");
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(!text.contains("bogus"), "errors are left out:\n{text}");
    let positions: Vec<usize> = [
        "let a = 20;",
        "fn twice(x) {\n  x * 2\n}",
        "let b",
        "print(",
    ]
    .iter()
    .map(|s| {
        text.find(s)
            .unwrap_or_else(|| panic!("{s:?} missing:\n{text}"))
    })
    .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order:\n{text}"
    );

    let output = llmlab_in(dir.path(), &["run", saved.to_str().unwrap()], b"");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "b=42\n");
}

#[test]
fn streamed_generated_text_is_not_printed_again_as_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let input = format!(
        "{TINY}m.generate(tok, \"Once\", #{{ max_tokens: 24, temperature: 1.0, seed: 3, stream: true }})\nprint(\"ANS<\" + ans + \">\");\n"
    );
    let output = llmlab_in(dir.path(), &[], input.as_bytes());
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    let start = out.find("ANS<").expect("ans printed") + 4;
    let end = out.rfind('>').unwrap();
    let text = &out[start..end];
    assert!(text.trim().len() >= 5, "generated something: {text:?}");
    // Once as it streamed, once in the ANS line: not a third time as the call's value.
    assert_eq!(out.matches(text).count(), 2, "{out}");
}

#[test]
fn plot_draws_the_sessions_run_with_the_entropy_floor_in_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let input = format!(
        "{TINY}let ds = tok.encode(data, #{{ val_fraction: 0.1 }});\ntrainer(\"lm\", #{{ steps: 8, batch_size: 4, eval_every: 4, eval_batches: 2 }}).fit(m, ds);\n:plot\n:plot no-such-run\n"
    );
    let output = llmlab_in(dir.path(), &[], input.as_bytes());
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{err}");
    assert!(out.contains("loss (nats/token)"), "{out}");
    let braille = out
        .chars()
        .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
        .count();
    assert!(braille > 20, "a braille curve:\n{out}");
    assert!(
        out.contains("train loss (last")
            && out.contains("val loss (last")
            && out.contains("entropy floor"),
        "{out}"
    );
    assert!(
        err.contains("no run `no-such-run`") && err.contains("repl-"),
        "names the runs there:\n{err}"
    );
}

#[test]
fn history_is_kept_per_project_and_ctrl_r_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let state = dir.path().join("state");
    let mut first = Pty::spawn(&a, &state, &[]);
    first.wait_for("llmlab> ", 1);
    first.send("print(40 + 2);\r");
    first.wait_for_after("42\r\n", "llmlab> ");
    first.send("\x04");
    first.finish();

    // A new session in the same directory: Ctrl-R, part of the line, Enter runs it again.
    let mut again = Pty::spawn(&a, &state, &[]);
    again.wait_for("llmlab> ", 1);
    again.send("\x1240 +");
    again.wait_for("print(40 + 2)", 1);
    again.send("\r");
    again.wait_for_after("42\r\n", "llmlab> ");
    again.send("\x04");
    again.finish();

    // Another project directory has its own history.
    let mut other = Pty::spawn(&b, &state, &[]);
    other.wait_for("llmlab> ", 1);
    other.send("print(6 * 7 + 1);\r");
    other.wait_for_after("43\r\n", "llmlab> ");
    other.send("\x1240 +");
    other.wait_for("failed", 1);
    // Ctrl-G leaves the search with the line empty; Ctrl-D ends the session.
    other.send("\x07");
    std::thread::sleep(std::time::Duration::from_millis(300));
    other.send("\x04");
    let out = other.finish();
    assert!(!out.contains("42\r\n"), "{out}");
}

#[test]
fn progress_bars_show_at_the_repl_and_are_cleared_when_a_call_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut repl = Pty::spawn(dir.path(), &state, &[]);
    repl.wait_for("llmlab> ", 1);
    let setup: String = TINY.lines().collect::<Vec<_>>().join(" ");
    repl.send(&format!(
        "{setup} let ds = tok.encode(data, #{{ val_fraction: 0.1 }}); trainer(\"lm\", #{{ steps: 1000000, batch_size: 4, eval_every: 0 }}).fit(m, ds);\r"
    ));
    repl.wait_for("train [", 1);
    repl.send("\x03");
    repl.wait_for("cancelled by Ctrl-C", 1);
    repl.wait_for_after("cancelled by Ctrl-C", "llmlab> ");
    repl.send("print(\"after\");\r");
    repl.wait_for("after\r\n", 1);
    repl.wait_for_after("after\r\n", "llmlab> ");
    repl.send("\x04");
    let out = repl.finish();
    let last_bar = out.rfind("train [").unwrap();
    let rest = &out[last_bar..];
    let after = rest.find("after\r\n").unwrap();
    assert!(
        rest[..after].contains("\x1b[2K"),
        "the bar's line is erased before the next output:\n{rest:?}"
    );
}

/// `llmlab` on a pseudo-terminal, as a person at a terminal runs it: rustyline's editing,
/// history and Ctrl-R, and progress bars on stderr.
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Pty {
    fn spawn(cwd: &Path, state: &Path, args: &[&str]) -> Pty {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fresh descriptors we then own.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let slave = unsafe { std::fs::File::from_raw_fd(slave) };
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        let mut command = Command::new(llmlab_binary());
        command
            .args(args)
            .current_dir(cwd)
            .env("TERM", "xterm")
            .env("XDG_STATE_HOME", state)
            .env("HOME", state)
            .env_remove("LLMLAB_HISTORY")
            .env_remove("LLMLAB_PLUGIN_PATH")
            .env_remove("RUST_LOG")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap());
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; the terminal becomes the child's
        // controlling terminal, so Ctrl-C reaches it as SIGINT.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn llmlab on a pty");
        drop(slave);
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = output.clone();
        let mut reader = master.try_clone().unwrap();
        let _ = master.as_raw_fd();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            child,
            output,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn send(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Waits until `needle` has appeared `times` times in the output.
    fn wait_for(&self, needle: &str, times: usize) {
        let start = std::time::Instant::now();
        while self.text().matches(needle).count() < times {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(120),
                "waited for {needle:?} x{times}; output so far:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits until `needle` appears after the last `marker`: a prompt drawn after an output
    /// means rustyline is in raw mode again, so a key sent now is not lost in the switch from
    /// the cooked mode a call runs in.
    fn wait_for_after(&self, marker: &str, needle: &str) {
        let start = std::time::Instant::now();
        loop {
            let text = self.text();
            if let Some(at) = text.rfind(marker) {
                if text[at + marker.len()..].contains(needle) {
                    return;
                }
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(120),
                "waited for {needle:?} after {marker:?}; output so far:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits for the process to end; returns everything it wrote.
    fn finish(mut self) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}:\n{}", self.text());
                break;
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("did not exit:\n{}", self.text());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.text()
    }
}
