//! The interactive REPL: rustyline at a terminal (tab completion, multi-line input while a
//! statement is unfinished, history per project directory with Ctrl-R reverse search), plain line
//! reading when stdin is a pipe (an undecodable line is reported with its number and skipped),
//! `:` commands, and Ctrl-C that stops the running call (the session and its variables live on).
//!
//! What the REPL adds around each evaluation lives here too: progress bars are cleared when a
//! call ends, text that `generate` already streamed is not printed again as the value, and the
//! statements that succeeded are kept for `:save`.

mod commands;
mod complete;
mod history;
mod plot;

use std::io::{BufRead, IsTerminal};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rhai::Dynamic;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::{Config, Context as LineContext, Editor, Helper, Highlighter, Hinter, Validator};

pub use complete::{Completions, COMMANDS};

use crate::progress::Bars;
use crate::script::Session;

const PROMPT: &str = "llmlab> ";
const CONTINUATION: &str = "   ...> ";

/// The text `generate` last streamed to stdout as it was produced (see [`note_streamed`]).
static STREAMED: Mutex<Option<String>> = Mutex::new(None);

/// Called by `generate` after printing `text` token by token: the value it returns is the same
/// text, which the REPL and the notebook then do not show a second time.
pub fn note_streamed(text: &str) {
    *STREAMED.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.to_string());
}

/// Whether `value` is exactly the text streamed during the last evaluation; forgets it.
pub fn was_streamed(value: &Dynamic) -> bool {
    let streamed = STREAMED.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (streamed, value.read_lock::<rhai::ImmutableString>()) {
        (Some(text), Some(value)) => text == value.as_str(),
        _ => false,
    }
}

fn forget_streamed() {
    STREAMED.lock().unwrap_or_else(|p| p.into_inner()).take();
}

#[derive(Helper, Hinter, Highlighter, Validator)]
struct ReplHelper {
    completions: Completions,
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &LineContext<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = self.completions.complete(line, pos);
        let pairs = words
            .into_iter()
            .map(|w| Pair {
                display: w.clone(),
                replacement: w,
            })
            .collect();
        Ok((start, pairs))
    }
}

/// Result of one REPL line.
enum Outcome {
    Continue,
    Quit,
}

/// The REPL's state around the session.
struct Repl<'a> {
    session: &'a mut Session,
    plugins_report: &'a str,
    bars: Option<Arc<Bars>>,
    timing: bool,
    /// Lines of an unfinished statement.
    buffer: String,
    /// Inputs that evaluated without error, in order: what `:save` writes.
    journal: Vec<String>,
}

/// Runs the REPL until Ctrl-D, end of input or `:quit`. `bars` (drawn on stderr) are cleared
/// after every call.
pub fn run(
    session: &mut Session,
    plugins_report: &str,
    bars: Option<Arc<Bars>>,
) -> Result<(), String> {
    let mut repl = Repl {
        session,
        plugins_report,
        bars,
        timing: false,
        buffer: String::new(),
        journal: Vec::new(),
    };
    if std::io::stdin().is_terminal() {
        repl.terminal().map_err(|e| e.to_string())
    } else {
        repl.piped();
        Ok(())
    }
}

impl Repl<'_> {
    /// Interactive: rustyline with completion and per-project history.
    fn terminal(&mut self) -> rustyline::Result<()> {
        let config = Config::builder()
            .max_history_size(10_000)?
            .history_ignore_dups(true)?
            .auto_add_history(false)
            .build();
        let mut editor: Editor<ReplHelper, _> = Editor::with_config(config)?;
        editor.set_helper(Some(ReplHelper {
            completions: Completions::of(self.session),
        }));
        let history = history::path();
        if let Some(path) = &history {
            if let Err(error) = history::prepare(path) {
                eprintln!("warning: history not kept: {error}");
            }
            let _ = editor.load_history(path);
        }
        println!(
            "llmlab {} — help() lists components, :help for commands, Ctrl-R searches history, Ctrl-D quits",
            env!("CARGO_PKG_VERSION")
        );
        loop {
            let prompt = if self.buffer.is_empty() {
                PROMPT
            } else {
                CONTINUATION
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    let outcome = self.line(&line, &mut |entry| {
                        let _ = editor.add_history_entry(entry);
                        // Appended at once, so a killed session keeps what was typed.
                        if let Some(path) = &history {
                            let _ = editor.append_history(path);
                        }
                    });
                    if let Some(helper) = editor.helper_mut() {
                        helper.completions = Completions::of(self.session);
                    }
                    if let Outcome::Quit = outcome {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    self.buffer.clear();
                    println!("(Ctrl-C: input cleared; Ctrl-D quits)");
                }
                Err(ReadlineError::Eof) => break,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Statements from a pipe or file: no prompts; a line that is not UTF-8 is reported with its
    /// number and skipped, and the session goes on.
    fn piped(&mut self) {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut bytes = Vec::new();
        let mut number = 0usize;
        loop {
            bytes.clear();
            match input.read_until(b'\n', &mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    eprintln!("error: reading stdin: {error}");
                    break;
                }
            }
            number += 1;
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            let line = match std::str::from_utf8(&bytes) {
                Ok(line) => line,
                Err(error) => {
                    let pending = if self.buffer.is_empty() {
                        String::new()
                    } else {
                        self.buffer.clear();
                        "; the unfinished statement before it was dropped".to_string()
                    };
                    eprintln!(
                        "error: input line {number} is not valid UTF-8 (byte {} of the line); line skipped{pending}",
                        error.valid_up_to() + 1
                    );
                    continue;
                }
            };
            if let Outcome::Quit = self.line(line, &mut |_| {}) {
                break;
            }
        }
        let code = std::mem::take(&mut self.buffer);
        if !code.trim().is_empty() {
            self.evaluate(&code);
        }
    }

    /// One line of input; `history` receives each complete entry.
    fn line(&mut self, line: &str, history: &mut dyn FnMut(&str)) -> Outcome {
        if self.buffer.is_empty() && line.trim_start().starts_with(':') {
            history(line.trim());
            return self.command(line.trim());
        }
        let blank = line.trim().is_empty();
        self.buffer.push_str(line);
        self.buffer.push('\n');
        // A blank line ends a continuation even if unfinished, so the error shows.
        if !blank && self.session.is_incomplete(&self.buffer) {
            return Outcome::Continue;
        }
        let code = std::mem::take(&mut self.buffer);
        if code.trim().is_empty() {
            return Outcome::Continue;
        }
        history(code.trim_end());
        self.evaluate(&code);
        Outcome::Continue
    }

    fn evaluate(&mut self, code: &str) {
        let start = Instant::now();
        forget_streamed();
        let result = self.session.eval(code);
        self.clear_bars();
        match result {
            Ok(value) => {
                self.journal.push(code.trim_end().to_string());
                self.show(value);
            }
            Err(error) => eprintln!("error: {error}"),
        }
        if self.timing {
            println!("({:.3} s)", start.elapsed().as_secs_f64());
        }
    }

    /// Prints a value unless it is unit or the text `generate` just streamed (which stays in
    /// `ans`, with a dimmed note at a terminal).
    fn show(&mut self, value: Dynamic) {
        if value.is_unit() {
            return;
        }
        if was_streamed(&value) {
            let chars = value
                .read_lock::<rhai::ImmutableString>()
                .map_or(0, |s| s.chars().count());
            let _ = self.session.display(value);
            if std::io::stdout().is_terminal() {
                println!("\x1b[2m(the text above, {chars} characters, is in `ans`)\x1b[0m");
            }
            return;
        }
        println!("{}", self.session.display(value));
    }

    fn clear_bars(&self) {
        if let Some(bars) = &self.bars {
            bars.clear();
        }
    }
}
