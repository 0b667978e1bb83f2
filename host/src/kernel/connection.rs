//! The connection file Jupyter hands a kernel: where to bind the five sockets and the key that
//! signs messages.

use std::path::Path;

use llmlab_plugin_api::serde_json::{self, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub ip: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    pub key: String,
}

impl Connection {
    pub fn read(path: &Path) -> Result<Connection, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read connection file {}: {e}", path.display()))?;
        Connection::parse(&text).map_err(|e| format!("connection file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Connection, String> {
        let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let text_field = |key: &str, default: &str| -> Result<String, String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!("`{key}` must be a string, got {other}")),
            }
        };
        let port = |key: &str| -> Result<u16, String> {
            json.get(key)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("`{key}` is missing or not a port number"))
        };
        let transport = text_field("transport", "tcp")?;
        if transport != "tcp" {
            return Err(format!(
                "transport `{transport}` is not supported (only tcp)"
            ));
        }
        let scheme = text_field("signature_scheme", "hmac-sha256")?;
        if scheme != "hmac-sha256" {
            return Err(format!(
                "signature scheme `{scheme}` is not supported (only hmac-sha256)"
            ));
        }
        Ok(Connection {
            ip: text_field("ip", "127.0.0.1")?,
            shell_port: port("shell_port")?,
            iopub_port: port("iopub_port")?,
            stdin_port: port("stdin_port")?,
            control_port: port("control_port")?,
            hb_port: port("hb_port")?,
            key: text_field("key", "")?,
        })
    }

    pub fn endpoint(&self, port: u16) -> String {
        format!("tcp://{}:{port}", self.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_jupyter_connection_file_and_names_bad_fields() {
        let c = Connection::parse(
            r#"{"shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003, "control_port": 5004,
                "hb_port": 5005, "ip": "127.0.0.1", "key": "abc", "transport": "tcp",
                "signature_scheme": "hmac-sha256", "kernel_name": "llmlab"}"#,
        )
        .unwrap();
        assert_eq!(c.shell_port, 5001);
        assert_eq!(c.key, "abc");
        assert_eq!(c.endpoint(c.hb_port), "tcp://127.0.0.1:5005");
        let err = Connection::parse(r#"{"shell_port": 1}"#).unwrap_err();
        assert!(err.contains("iopub_port"), "{err}");
        let err = Connection::parse(
            r#"{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5, "transport": "ipc"}"#,
        )
        .unwrap_err();
        assert!(err.contains("ipc"), "{err}");
    }
}
