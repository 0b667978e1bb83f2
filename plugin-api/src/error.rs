//! The one error type that crosses the plugin boundary. The host turns it into a script error,
//! so every variant's message must stand on its own for a researcher reading it at the REPL.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config key the component does not accept.
    #[error("unknown config key `{key}` for {component}; accepted keys: {}", accepted.join(", "))]
    UnknownConfigKey {
        component: String,
        key: String,
        accepted: Vec<String>,
    },
    /// A config value of the wrong type or out of range.
    #[error("invalid config for {component}: {message}")]
    InvalidConfig { component: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The run was stopped by the user (Ctrl-C); partial work is kept where it is safe to.
    #[error("cancelled")]
    Cancelled,
    /// The component does not implement this operation.
    #[error("{component} does not support {operation}")]
    Unsupported {
        component: String,
        operation: String,
    },
    /// Bad data given by the user: names the file, line or offset where it can.
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn unsupported(component: impl Into<String>, operation: impl Into<String>) -> Self {
        Error::Unsupported {
            component: component.into(),
            operation: operation.into(),
        }
    }

    pub fn invalid_config(component: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            component: component.into(),
            message: message.into(),
        }
    }

    pub fn msg(message: impl Into<String>) -> Self {
        Error::Other(message.into())
    }
}

/// A candle error's message without the backtrace candle attaches when RUST_BACKTRACE is set:
/// the researcher needs the cause, not 30 frames of the runtime.
pub fn candle_message(error: &candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), candle_message(inner))
        }
        other => other.to_string(),
    }
}
