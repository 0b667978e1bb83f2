//! The kernel's one Rhai session, on its own thread: cells run here one at a time, as REPL lines
//! do (same engine, plugins and `ans`), while the sockets stay served by the async side — so an
//! interrupt arriving on the control channel reaches a running cell.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::CancelFlag;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::capture::Capture;
use super::display::bundle;
use super::wire::Message;
use crate::panics::panic_message;
use crate::repl::{was_streamed, Completions};
use crate::script::{help_text, Session};

/// A request for the session; `done` receives the reply's content.
pub struct Job {
    pub request: Message,
    pub done: oneshot::Sender<Value>,
}

/// The message whose cell is running: stream output is attributed to it.
pub type Parent = Arc<Mutex<Option<Message>>>;

pub struct Worker {
    pub session: Session,
    pub iopub: UnboundedSender<Message>,
    pub parent: Parent,
    pub capture: Arc<Capture>,
    pub cancel: CancelFlag,
    pub execution_count: u64,
}

impl Worker {
    pub fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let content = match job.request.msg_type() {
                "execute_request" => self.execute(&job.request),
                "complete_request" => self.complete(&job.request.content),
                "inspect_request" => self.inspect(&job.request.content),
                "is_complete_request" => self.is_complete(&job.request.content),
                other => {
                    json!({ "status": "error", "ename": "UnknownRequest", "evalue": other, "traceback": [] })
                }
            };
            let _ = job.done.send(content);
        }
    }

    fn publish(&self, message: Message) {
        let _ = self.iopub.send(message);
    }

    fn execute(&mut self, request: &Message) -> Value {
        let code = request.content["code"].as_str().unwrap_or("").to_string();
        let silent = request.content["silent"].as_bool().unwrap_or(false);
        let store = request.content["store_history"]
            .as_bool()
            .unwrap_or(!silent);
        if store && !silent {
            self.execution_count += 1;
        }
        let count = self.execution_count;
        *self.parent.lock().unwrap_or_else(|p| p.into_inner()) = Some(request.clone());
        if !silent {
            self.publish(request.broadcast(
                "execute_input",
                json!({ "code": code, "execution_count": count }),
            ));
        }
        was_streamed(&rhai::Dynamic::UNIT); // forget text streamed by an earlier cell
        let result = catch_unwind(AssertUnwindSafe(|| {
            if code.trim().is_empty() {
                Ok(rhai::Dynamic::UNIT)
            } else {
                self.session.eval(&code)
            }
        }));
        // The cell's output goes out before its result and before `idle`.
        self.capture.flush();
        let error = match result {
            Ok(Ok(value)) => {
                if was_streamed(&value) {
                    let _ = self.session.display(value);
                } else if !value.is_unit() && !silent {
                    let data = bundle(&mut self.session, value);
                    self.publish(request.broadcast(
                        "execute_result",
                        json!({ "execution_count": count, "data": data, "metadata": {} }),
                    ));
                }
                None
            }
            Ok(Err(error)) => Some(error.to_string()),
            Err(panic) => Some(format!("panic in the kernel: {}", panic_message(&*panic))),
        };
        match error {
            None => json!({
                "status": "ok",
                "execution_count": count,
                "user_expressions": {},
                "payload": [],
            }),
            Some(text) => {
                let ename = if self.cancel.is_cancelled() {
                    "Interrupted"
                } else {
                    "Error"
                };
                let error = json!({
                    "ename": ename,
                    "evalue": text,
                    "traceback": [format!("\x1b[0;31merror\x1b[0m: {text}")],
                });
                self.publish(request.broadcast("error", error.clone()));
                let mut reply = error;
                reply["status"] = json!("error");
                reply["execution_count"] = json!(count);
                reply
            }
        }
    }

    /// Completion at `cursor_pos` (counted in characters, as the protocol does).
    fn complete(&self, content: &Value) -> Value {
        let code = content["code"].as_str().unwrap_or("");
        let (byte, cursor) = cursor_byte(code, content["cursor_pos"].as_u64());
        let line_start = code[..byte].rfind('\n').map_or(0, |i| i + 1);
        let (start, matches) =
            Completions::of(&self.session).complete(&code[line_start..], byte - line_start);
        json!({
            "status": "ok",
            "matches": matches,
            "cursor_start": code[..line_start + start].chars().count(),
            "cursor_end": cursor,
            "metadata": {},
        })
    }

    /// Inspection (Shift-Tab): a component's config keys (its `help`), a function's signatures,
    /// or a variable's value.
    fn inspect(&mut self, content: &Value) -> Value {
        let code = content["code"].as_str().unwrap_or("");
        let (byte, _) = cursor_byte(code, content["cursor_pos"].as_u64());
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        let start = code[..byte].rfind(|c| !is_word(c)).map_or(0, |i| i + 1);
        let end = code[byte..]
            .find(|c| !is_word(c))
            .map_or(code.len(), |i| byte + i);
        let word = &code[start..end];
        let mut text = String::new();
        if !word.is_empty() {
            let registry = self.session.host().registry();
            if registry.get(word).is_some() {
                text.push_str(&help_text(&registry, Some(word)));
            }
            drop(registry);
            let prefix = format!("{word}(");
            let mut signatures: Vec<String> = self
                .session
                .engine()
                .gen_fn_signatures(false)
                .into_iter()
                .filter(|s| s.trim_start_matches("fn ").starts_with(&prefix))
                .collect();
            signatures.sort();
            signatures.dedup();
            for signature in signatures {
                text.push_str(&signature);
                text.push('\n');
            }
            if let Some(value) = self.session.scope().get_value::<rhai::Dynamic>(word) {
                let type_name = self
                    .session
                    .engine()
                    .map_type_name(value.type_name())
                    .to_string();
                let shown = self.session.display(value);
                text.push_str(&format!("{word}: {type_name} = {shown}\n"));
            }
        }
        let found = !text.is_empty();
        json!({
            "status": "ok",
            "found": found,
            "data": if found { json!({ "text/plain": text }) } else { json!({}) },
            "metadata": {},
        })
    }

    fn is_complete(&self, content: &Value) -> Value {
        let code = content["code"].as_str().unwrap_or("");
        // As the REPL asks: with the newline the user's Enter would add.
        if self.session.is_incomplete(&format!("{code}\n")) {
            json!({ "status": "incomplete", "indent": "" })
        } else {
            json!({ "status": "complete" })
        }
    }
}

/// The byte offset of character `cursor` in `code` (the end when absent or past it), and the
/// cursor in characters.
fn cursor_byte(code: &str, cursor: Option<u64>) -> (usize, usize) {
    let chars = code.chars().count();
    let cursor = cursor.map_or(chars, |c| (c as usize).min(chars));
    let byte = code
        .char_indices()
        .nth(cursor)
        .map_or(code.len(), |(i, _)| i);
    (byte, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_positions_count_characters() {
        assert_eq!(cursor_byte("tok.voc", Some(7)), (7, 7));
        assert_eq!(cursor_byte("é.v", Some(3)), (4, 3));
        assert_eq!(cursor_byte("abc", None), (3, 3));
        assert_eq!(cursor_byte("abc", Some(99)), (3, 3));
    }
}
