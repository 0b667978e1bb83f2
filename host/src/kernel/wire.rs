//! The Jupyter wire protocol (messaging spec 5.3): a message is the routing identities, the
//! `<IDS|MSG>` delimiter, an HMAC-SHA256 signature (hex) over the four JSON frames that follow —
//! header, parent header, metadata, content — and optional binary buffers.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use llmlab_plugin_api::serde_json::{self, json, Value};
use sha2::Sha256;
use zeromq::ZmqMessage;

pub const PROTOCOL_VERSION: &str = "5.3";
const DELIMITER: &[u8] = b"<IDS|MSG>";

/// Signs and checks messages with the connection file's key; an empty key disables signing
/// (the spec allows it, and the signature frame is then empty).
#[derive(Clone)]
pub struct Signer {
    key: Option<Hmac<Sha256>>,
}

impl Signer {
    pub fn new(key: &str) -> Signer {
        Signer {
            key: (!key.is_empty()).then(|| {
                Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key")
            }),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        let mut mac = self.key.clone()?;
        for part in parts {
            mac.update(part);
        }
        Some(mac)
    }

    pub fn sign(&self, parts: &[&[u8]]) -> String {
        self.mac(parts).map_or_else(String::new, |mac| {
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }

    /// Constant-time check of a hex `signature`.
    pub fn verify(&self, signature: &[u8], parts: &[&[u8]]) -> bool {
        let Some(mac) = self.mac(parts) else {
            return true;
        };
        let Some(bytes) = from_hex(signature) else {
            return false;
        };
        mac.verify_slice(&bytes).is_ok()
    }
}

fn from_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// One message, decoded.
#[derive(Clone, Debug)]
pub struct Message {
    /// Routing frames before the delimiter (the client's socket identity on ROUTER sockets).
    pub identities: Vec<Vec<u8>>,
    pub header: Value,
    pub parent_header: Value,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("no <IDS|MSG> delimiter in a message of {0} frames")]
    NoDelimiter(usize),
    #[error("message has {0} frames after the delimiter; at least 5 are needed")]
    TooShort(usize),
    #[error("bad signature")]
    BadSignature,
    #[error("frame {0} is not JSON: {1}")]
    Json(&'static str, serde_json::Error),
}

/// A fresh id: a per-process random prefix and a counter.
pub fn new_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let random = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt ^ u64::from(std::process::id()));
            h.finish()
        };
        format!("{:016x}{:016x}", random(1), random(2))
    });
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Now as ISO 8601 in UTC with microseconds, as the spec's `date` field wants.
pub fn now_iso8601() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let t = crate::runs::UtcTime::from_epoch_seconds(now.as_secs());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        now.subsec_micros()
    )
}

impl Message {
    /// Decodes frames received on a socket, checking the signature.
    pub fn decode(frames: Vec<Vec<u8>>, signer: &Signer) -> Result<Message, WireError> {
        let n = frames.len();
        let at = frames
            .iter()
            .position(|f| f == DELIMITER)
            .ok_or(WireError::NoDelimiter(n))?;
        let mut rest = frames.into_iter();
        let identities: Vec<Vec<u8>> = rest.by_ref().take(at).collect();
        rest.next(); // the delimiter
        let rest: Vec<Vec<u8>> = rest.collect();
        if rest.len() < 5 {
            return Err(WireError::TooShort(rest.len()));
        }
        let parts: Vec<&[u8]> = rest[1..5].iter().map(Vec::as_slice).collect();
        if !signer.verify(&rest[0], &parts) {
            return Err(WireError::BadSignature);
        }
        let json = |i: usize, name: &'static str| {
            serde_json::from_slice::<Value>(&rest[i]).map_err(|e| WireError::Json(name, e))
        };
        Ok(Message {
            identities,
            header: json(1, "header")?,
            parent_header: json(2, "parent_header")?,
            metadata: json(3, "metadata")?,
            content: json(4, "content")?,
            buffers: rest[5..].to_vec(),
        })
    }

    /// Frames to send: identities (or, on IOPub, the topic), delimiter, signature, JSON parts.
    pub fn encode(&self, signer: &Signer) -> ZmqMessage {
        let header = self.header.to_string().into_bytes();
        let parent = self.parent_header.to_string().into_bytes();
        let metadata = self.metadata.to_string().into_bytes();
        let content = self.content.to_string().into_bytes();
        let signature = signer.sign(&[&header, &parent, &metadata, &content]);
        let mut frames: Vec<Vec<u8>> = self.identities.clone();
        frames.push(DELIMITER.to_vec());
        frames.push(signature.into_bytes());
        frames.extend([header, parent, metadata, content]);
        frames.extend(self.buffers.iter().cloned());
        let mut frames = frames.into_iter();
        let mut message = ZmqMessage::from(frames.next().unwrap_or_default());
        for frame in frames {
            message.push_back(frame.into());
        }
        message
    }

    pub fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or("")
    }

    /// A new message of `msg_type` caused by this one: same session, this header as parent, the
    /// same identities (so a reply on a ROUTER socket reaches the sender).
    pub fn child(&self, msg_type: &str, content: Value) -> Message {
        Message {
            identities: self.identities.clone(),
            header: json!({
                "msg_id": new_id(),
                "session": self.header["session"].clone(),
                "username": self.header["username"].clone(),
                "date": now_iso8601(),
                "msg_type": msg_type,
                "version": PROTOCOL_VERSION,
            }),
            parent_header: self.header.clone(),
            metadata: json!({}),
            content,
            buffers: Vec::new(),
        }
    }

    /// The reply to a `*_request`: `*_reply`.
    pub fn reply(&self, content: Value) -> Message {
        let kind = self.msg_type();
        let reply = kind.strip_suffix("_request").unwrap_or(kind);
        self.child(&format!("{reply}_reply"), content)
    }

    /// A message for IOPub caused by this one; its topic is the message type.
    pub fn broadcast(&self, msg_type: &str, content: Value) -> Message {
        let mut message = self.child(msg_type, content);
        message.identities = vec![format!("kernel.{msg_type}").into_bytes()];
        message
    }

    /// An IOPub message with no parent (the `starting` status).
    pub fn orphan(session: &str, msg_type: &str, content: Value) -> Message {
        let parent = Message {
            identities: Vec::new(),
            header: json!({ "session": session, "username": "kernel" }),
            parent_header: json!({}),
            metadata: json!({}),
            content: json!({}),
            buffers: Vec::new(),
        };
        let mut message = parent.broadcast(msg_type, content);
        message.parent_header = json!({});
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex_of_the_four_parts() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let signer = Signer::new("Jefe");
        let sig = signer.sign(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(signer.verify(sig.as_bytes(), &[b"what do ya want for nothing?"]));
        assert!(!signer.verify(b"00", &[b"what do ya want for nothing?"]));
        assert!(Signer::new("").verify(b"", &[b"x"]));
    }

    #[test]
    fn a_message_round_trips_and_a_tampered_one_is_refused() {
        let signer = Signer::new("secret");
        let request = Message {
            identities: vec![b"client-1".to_vec()],
            header: json!({ "msg_id": "a", "session": "s", "username": "u", "msg_type": "execute_request", "version": "5.3", "date": "" }),
            parent_header: json!({}),
            metadata: json!({}),
            content: json!({ "code": "1 + 1" }),
            buffers: Vec::new(),
        };
        let reply = request.reply(json!({ "status": "ok" }));
        assert_eq!(reply.msg_type(), "execute_reply");
        assert_eq!(reply.parent_header["msg_id"], "a");
        assert_eq!(reply.header["session"], "s");
        let frames: Vec<Vec<u8>> = reply
            .encode(&signer)
            .into_vec()
            .into_iter()
            .map(|b| b.to_vec())
            .collect();
        assert_eq!(frames[0], b"client-1");
        let decoded = Message::decode(frames.clone(), &signer).unwrap();
        assert_eq!(decoded.content, json!({ "status": "ok" }));
        assert_eq!(decoded.identities, vec![b"client-1".to_vec()]);
        let mut tampered = frames;
        tampered[6] = br#"{"status":"error"}"#.to_vec();
        assert!(matches!(
            Message::decode(tampered, &signer),
            Err(WireError::BadSignature)
        ));
        assert!(now_iso8601().ends_with('Z'));
        assert_ne!(new_id(), new_id());
    }
}
