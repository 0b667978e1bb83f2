//! The interactive REPL: rustyline with history, tab completion of functions, components and
//! config keys, multi-line input while a statement is unfinished, `:` commands, and Ctrl-C that
//! stops the running call (the session and its variables live on).

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Instant;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::{Context as LineContext, Editor, Helper, Highlighter, Hinter, Validator};

use crate::script::{help_text, Session};

const PROMPT: &str = "llmlab> ";
const CONTINUATION: &str = "   ...> ";

#[derive(Helper, Hinter, Highlighter, Validator)]
struct ReplHelper {
    words: Vec<String>,
}

const COMMANDS: &[&str] = &[":help", ":plugins", ":load", ":time", ":quit"];

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &LineContext<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        if prefix.is_empty() {
            return Ok((start, Vec::new()));
        }
        let pool: Box<dyn Iterator<Item = &str>> = if prefix.starts_with(':') {
            Box::new(COMMANDS.iter().copied())
        } else {
            Box::new(self.words.iter().map(String::as_str))
        };
        let matches = pool
            .filter(|w| w.starts_with(prefix))
            .map(|w| Pair {
                display: w.to_string(),
                replacement: w.to_string(),
            })
            .collect();
        Ok((start, matches))
    }
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("LLMLAB_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".llmlab_history")))
}

/// Result of one REPL line.
enum Outcome {
    Continue,
    Quit,
}

/// Runs the REPL until Ctrl-D or `:quit`.
pub fn run(session: &mut Session, plugins_report: &str) -> rustyline::Result<()> {
    let mut editor: Editor<ReplHelper, _> = Editor::new()?;
    editor.set_helper(Some(ReplHelper {
        words: session.completion_words(),
    }));
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "llmlab {} — help() lists components, :help for commands, Ctrl-D quits",
        env!("CARGO_PKG_VERSION")
    );
    let mut timing = false;
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            PROMPT
        } else {
            CONTINUATION
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with(':') {
                    let _ = editor.add_history_entry(line.as_str());
                    match command(session, line.trim(), &mut timing, plugins_report) {
                        Outcome::Quit => break,
                        Outcome::Continue => continue,
                    }
                }
                let blank = line.trim().is_empty();
                buffer.push_str(&line);
                buffer.push('\n');
                // A blank line ends a continuation even if unfinished, so the error shows.
                if !blank && session.is_incomplete(&buffer) {
                    continue;
                }
                let code = std::mem::take(&mut buffer);
                if code.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(code.trim_end());
                evaluate(session, &code, timing);
                if let Some(helper) = editor.helper_mut() {
                    helper.words = session.completion_words();
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                println!("(Ctrl-C: input cleared; Ctrl-D quits)");
            }
            Err(ReadlineError::Eof) => break,
            Err(error) => return Err(error),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

fn evaluate(session: &mut Session, code: &str, timing: bool) {
    let start = Instant::now();
    match session.eval(code) {
        Ok(value) if value.is_unit() => {}
        Ok(value) => println!("{}", session.display(value)),
        Err(error) => eprintln!("error: {error}"),
    }
    if timing {
        println!("({:.3} s)", start.elapsed().as_secs_f64());
    }
}

fn command(session: &mut Session, line: &str, timing: &mut bool, plugins_report: &str) -> Outcome {
    let (name, arg) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(n, a)| (n, a.trim()));
    match name {
        ":quit" | ":q" | ":exit" => return Outcome::Quit,
        ":help" | ":h" => {
            if arg.is_empty() {
                println!(
                    ":help [name]   this text, or a component's config keys\n\
                     :plugins       loaded and refused plugins\n\
                     :load FILE     run a script file in this session\n\
                     :time          toggle timing of each evaluation\n\
                     :quit          leave (or Ctrl-D)\n\
                     Statements may span lines; Ctrl-C stops a running call.\n"
                );
                print!("{}", help_text(&session.host().registry(), None));
            } else {
                print!(
                    "{}",
                    help_text(&session.host().registry(), Some(arg.trim_matches('"')))
                );
            }
        }
        ":plugins" => print!("{plugins_report}"),
        ":time" => {
            *timing = !*timing;
            println!("timing {}", if *timing { "on" } else { "off" });
        }
        ":load" if !arg.is_empty() => {
            let start = Instant::now();
            match session.run_file(std::path::Path::new(arg)) {
                Ok(value) if !value.is_unit() => println!("{}", session.display(value)),
                Ok(_) => {}
                Err(error) => eprintln!("error: {error}"),
            }
            if *timing {
                println!("({:.3} s)", start.elapsed().as_secs_f64());
            }
        }
        _ => eprintln!("unknown command {}; :help lists them", Cow::from(line)),
    }
    Outcome::Continue
}
