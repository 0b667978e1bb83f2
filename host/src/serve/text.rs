//! One choice's text as its tokens arrive: decoded incrementally, cut before the first `stop`
//! string, and released to the client only once certain — not half of a multi-byte character
//! (which decodes as U+FFFD until its last byte comes) and not a tail that may still grow into a
//! stop string (which must never be sent).

use llmlab_plugin_api::Tokenizer;

pub struct TextStream {
    ids: Vec<u32>,
    text: String,
    /// Bytes of `text` already released.
    released: usize,
    /// Where the first stop string begins, once one appeared.
    cut: Option<usize>,
    stop: Vec<String>,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> TextStream {
        TextStream {
            ids: Vec::new(),
            text: String::new(),
            released: 0,
            cut: None,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Adds `token`; `false` once a stop string has appeared (the choice is over).
    pub fn push(&mut self, tok: &dyn Tokenizer, token: u32) -> bool {
        self.ids.push(token);
        if let Ok(text) = tok.decode(&self.ids) {
            self.text = text;
        }
        // Only the new tail can hold a stop string that was not there before.
        self.cut = self
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        self.cut.is_none()
    }

    /// Text that became certain since the last call; with `done`, all of it up to the cut.
    pub fn take_ready(&mut self, done: bool) -> String {
        let end = self.ready_end(done);
        if end <= self.released || !self.text.is_char_boundary(end) {
            return String::new();
        }
        let out = self.text[self.released..end].to_string();
        self.released = end;
        out
    }

    /// The whole text so far, cut before the stop string.
    pub fn finished(&self) -> &str {
        &self.text[..self.cut.unwrap_or(self.text.len())]
    }

    fn ready_end(&self, done: bool) -> usize {
        if let Some(cut) = self.cut {
            return cut;
        }
        if done {
            return self.text.len();
        }
        let end = self.text.trim_end_matches('\u{FFFD}').len();
        let held = self
            .stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n))
                    .find(|&n| self.text[..end].ends_with(&s[..n]))
            })
            .max()
            .unwrap_or(0);
        end - held
    }
}
