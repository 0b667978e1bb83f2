//! Chat templates: turning a conversation (`messages`, each a role and its content) into the one
//! string a language model is trained on and generates from, the way Hugging Face tokenizer
//! configs do it (a Jinja template in `chat_template`).
//!
//! * [`ChatTemplate::chatml`] is the default (`<|im_start|>role\ncontent<|im_end|>\n`);
//!   [`ChatTemplate::from_source`] / [`ChatTemplate::from_file`] take any Jinja template string,
//!   rendered by `minijinja` with Python-style string methods (`.strip()`, `.startswith()`),
//!   `raise_exception(msg)`, and the variables HF templates read: `messages`,
//!   `add_generation_prompt`, `bos_token`, `eos_token`.
//! * [`ChatTemplate::render`] gives the text, with the assistant header appended when
//!   `add_generation_prompt` (what generation continues from).
//! * [`ChatTemplate::render_segments`] gives the same text cut into [`Segment`]s, `trainable`
//!   exactly on what the assistant says (its content and the template's end-of-turn marker), so
//!   chat SFT masks everything else.
//!
//! * [`ChatExamples`]: `messages` JSONL conversations rendered once, as chat SFT data.
//!
//! A template feature this renderer does not support (an unknown filter, function or tag such as
//! HF's `{% generation %}`, a template whose output for a conversation does not extend its output
//! for the conversation's start) is an error naming the feature, never a silent mis-render.

mod conversations;
mod message;
mod segments;
mod template;
mod tokenizer_template;
#[cfg(test)]
mod transformers_fixture;

pub use conversations::ChatExamples;
pub use message::{Message, ASSISTANT};
pub use segments::Segment;
pub use template::ChatTemplate;
pub use tokenizer_template::from_tokenizer;
