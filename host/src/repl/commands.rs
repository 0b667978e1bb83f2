//! The REPL's `:` commands: `:help`, `:plugins`, `:load FILE`, `:save FILE`, `:plot [run]`,
//! `:time`, `:quit`.

use std::path::Path;
use std::time::Instant;

use super::{Outcome, Repl};
use crate::script::help_text;

const HELP: &str = "\
:help [name]   this text, or a component's config keys
:plugins       loaded and refused plugins
:load FILE     run a script file in this session
:save FILE     write the statements that succeeded so far as a script
:plot [run]    loss and validation loss of this session's run, or of runs/<run> (or a run directory)
:time          toggle timing of each evaluation
:quit          leave (or Ctrl-D)
Statements may span lines; Tab completes; Ctrl-R searches the history (kept per project
directory); Ctrl-C stops a running call.
";

impl Repl<'_> {
    pub(super) fn command(&mut self, line: &str) -> Outcome {
        let (name, arg) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(n, a)| (n, a.trim()));
        match name {
            ":quit" | ":q" | ":exit" => return Outcome::Quit,
            ":help" | ":h" => {
                let registry = self.session.host().registry();
                if arg.is_empty() {
                    println!("{HELP}");
                    print!("{}", help_text(&registry, None));
                } else {
                    print!("{}", help_text(&registry, Some(arg.trim_matches('"'))));
                }
            }
            ":plugins" => print!("{}", self.plugins_report),
            ":time" => {
                self.timing = !self.timing;
                println!("timing {}", if self.timing { "on" } else { "off" });
            }
            ":load" if !arg.is_empty() => self.load(arg),
            ":save" if !arg.is_empty() => self.save(Path::new(arg)),
            ":plot" => self.plot(arg),
            ":load" | ":save" => eprintln!("{name} needs a file name: {name} FILE"),
            _ => eprintln!("unknown command {line}; :help lists them"),
        }
        Outcome::Continue
    }

    fn load(&mut self, file: &str) {
        let start = Instant::now();
        super::forget_streamed();
        let result = self.session.run_file(Path::new(file));
        self.clear_bars();
        match result {
            Ok(value) => {
                // The file's text, not the command: the saved script must not depend on a file
                // that may change later.
                if let Ok(text) = std::fs::read_to_string(file) {
                    self.journal
                        .push(format!("// :load {file}\n{}", text.trim_end()));
                }
                self.show(value);
            }
            Err(error) => eprintln!("error: {error}"),
        }
        if self.timing {
            println!("({:.3} s)", start.elapsed().as_secs_f64());
        }
    }

    /// Writes the journal as a script that `llmlab run` replays.
    fn save(&self, file: &Path) {
        let mut text = String::from(
            "// Saved from the llmlab REPL: the statements that succeeded, in the order they ran.\n",
        );
        for entry in &self.journal {
            text.push_str(entry);
            // An expression typed without `;` is a statement in a script only with one.
            if !entry.ends_with(';') && !entry.ends_with('}') {
                text.push(';');
            }
            text.push('\n');
        }
        match std::fs::write(file, text) {
            Ok(()) => println!(
                "saved {} statement{} to {} (run it with: llmlab run {})",
                self.journal.len(),
                if self.journal.len() == 1 { "" } else { "s" },
                file.display(),
                file.display()
            ),
            Err(error) => eprintln!("error: cannot write {}: {error}", file.display()),
        }
    }
}
