//! [`ChatTemplate`]: a compiled Jinja chat template and the variables HF templates expect.

use std::collections::BTreeMap;
use std::path::Path;

use llmlab_plugin_api::{Error, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value};

use super::message::Message;

const TEMPLATE_NAME: &str = "chat_template";

/// The ChatML template (OpenAI, Qwen, many small chat models): each turn is
/// `<|im_start|>{role}\n{content}<|im_end|>\n`; the generation prompt is the assistant header.
pub const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A chat template ready to render. Cheap to clone (the compiled template is shared).
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from, for error messages: `"chatml"`, `"template string"`, a file path.
    origin: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The default: [`CHATML`].
    pub fn chatml() -> ChatTemplate {
        Self::compile(CHATML.to_string(), "chatml".into()).expect("the ChatML template compiles")
    }

    /// A Jinja template string, as `chat_template` in an HF `tokenizer_config.json` carries it.
    /// A syntax error or an unsupported tag is an error naming it.
    pub fn from_source(source: &str) -> Result<ChatTemplate> {
        Self::compile(source.to_string(), "template string".into())
    }

    /// A Jinja template read from a file (`.jinja`); errors name the file.
    pub fn from_file(path: &Path) -> Result<ChatTemplate> {
        let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::compile(source, path.display().to_string())
    }

    /// Sets the `bos_token` / `eos_token` strings templates may print (HF templates such as
    /// Llama's start with `{{ bos_token }}`). Both default to the empty string.
    pub fn with_special_tokens(
        mut self,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> ChatTemplate {
        self.bos_token = bos_token.into();
        self.eos_token = eos_token.into();
        self
    }

    /// Where the template came from (`chatml`, `template string`, or the file path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The conversation as one string; with `add_generation_prompt`, followed by what starts the
    /// assistant's next turn (the text generation continues from).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.error(e))?;
        let context: BTreeMap<&str, Value> = BTreeMap::from([
            ("messages", messages_value(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.clone())),
            ("eos_token", Value::from(self.eos_token.clone())),
            // transformers always passes these (None without tools / RAG documents), so a
            // template's `tools is defined` is true there and must be here.
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ]);
        template.render(context).map_err(|e| self.error(e))
    }

    fn compile(source: String, origin: String) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        // HF renders with `trim_blocks` and `lstrip_blocks` (transformers' apply_chat_template).
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let template = ChatTemplate {
            env,
            origin,
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let mut env = template.env.clone();
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(&source))
            .map_err(|e| template.error(e))?;
        Ok(ChatTemplate { env, ..template })
    }

    /// A minijinja error as ours: what is unsupported, or what failed, and where.
    pub(super) fn error(&self, error: minijinja::Error) -> Error {
        let what = match error.kind() {
            ErrorKind::UnknownFilter => "unsupported filter",
            ErrorKind::UnknownFunction => "unsupported function",
            ErrorKind::UnknownTest => "unsupported test",
            ErrorKind::UnknownMethod => "unsupported method",
            ErrorKind::SyntaxError => "syntax error or unsupported tag",
            ErrorKind::InvalidOperation => "the template raised or did an invalid operation",
            _ => "render failed",
        };
        let line = error
            .line()
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        let detail = error
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string());
        Error::Data(format!(
            "chat template {}: {what}{line}: {detail}",
            self.origin
        ))
    }

    pub(super) fn unsupported(&self, feature: &str) -> Error {
        Error::Data(format!(
            "chat template {}: unsupported feature: {feature}",
            self.origin
        ))
    }
}

/// Removes HF's `{% generation %}` / `{% endgeneration %}` markers (transformers'
/// `return_assistant_tokens_mask`): [`ChatTemplate::render_segments`] finds the assistant text
/// itself, and minijinja has no such tag.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner =
            tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(tag);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn messages_value(messages: &[Message]) -> Value {
    Value::from(
        messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role", Value::from(m.role.clone()));
                map.insert("content", Value::from(m.content.clone()));
                Value::from(map)
            })
            .collect::<Vec<_>>(),
    )
}

/// `raise_exception(message)`: HF templates call it to refuse a conversation (e.g. roles out of
/// order); the message reaches the user.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}
