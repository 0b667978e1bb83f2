//! The tokenizer's script surface: `tokenizer("bpe", #{..})`, `tok.encode(text)`,
//! `tok.decode(ids)`, `tok.vocab_size()`, `tok.token_to_id(s)`, `tok.id_to_token(i)`,
//! `tok.save(path)`, `tokenizer_load(path)`.

use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use llmlab_plugin_api::{Instance, Kind, Tokenizer};
use rhai::{Array, Dynamic, Engine, INT};

use super::{plugin_call, script_error, Host, ScriptResult};

/// A tokenizer in scripts; clones share the tokenizer (training one trains all).
#[derive(Clone)]
pub struct TokenizerHandle(Arc<RwLock<Box<dyn Tokenizer>>>);

impl TokenizerHandle {
    pub fn new(tokenizer: Box<dyn Tokenizer>) -> Self {
        TokenizerHandle(Arc::new(RwLock::new(tokenizer)))
    }
    pub fn read(&self) -> RwLockReadGuard<'_, Box<dyn Tokenizer>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, Box<dyn Tokenizer>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Token ids from a script array.
pub fn ids_from_array(ids: &Array) -> ScriptResult<Vec<u32>> {
    ids.iter()
        .map(|d| {
            d.as_int()
                .ok()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    script_error(format!(
                        "token ids must be non-negative integers, found {d}"
                    ))
                })
        })
        .collect()
}

pub fn ids_to_array(ids: &[u32]) -> Array {
    ids.iter().map(|&i| Dynamic::from(i as INT)).collect()
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    engine.register_type_with_name::<TokenizerHandle>("Tokenizer");
    engine.register_fn("to_string", |t: &mut TokenizerHandle| {
        let t = t.read();
        format!("tokenizer {} (vocab {})", t.name(), t.vocab_size())
    });
    engine.register_fn("encode", |t: &mut TokenizerHandle, text: &str| {
        let t = t.read();
        plugin_call(t.name(), || t.encode(text)).map(|ids| ids_to_array(&ids))
    });
    engine.register_fn("decode", |t: &mut TokenizerHandle, ids: Array| {
        let ids = ids_from_array(&ids)?;
        let t = t.read();
        plugin_call(t.name(), || t.decode(&ids))
    });
    engine.register_fn("vocab_size", |t: &mut TokenizerHandle| {
        t.read().vocab_size() as INT
    });
    engine.register_fn("token_to_id", |t: &mut TokenizerHandle, token: &str| {
        t.read()
            .token_to_id(token)
            .map_or(Dynamic::UNIT, |id| Dynamic::from(id as INT))
    });
    engine.register_fn("id_to_token", |t: &mut TokenizerHandle, id: INT| {
        u32::try_from(id)
            .ok()
            .and_then(|id| t.read().id_to_token(id))
            .map_or(Dynamic::UNIT, Dynamic::from)
    });
    engine.register_fn("save", |t: &mut TokenizerHandle, path: &str| {
        let t = t.read();
        plugin_call(t.name(), || t.save(Path::new(path)))
    });
    let h = host.clone();
    engine.register_fn(
        "tokenizer_load",
        move |path: &str| -> ScriptResult<TokenizerHandle> {
            match h.load(Kind::Tokenizer, path)? {
                Instance::Tokenizer(t) => Ok(TokenizerHandle::new(t)),
                other => Err(script_error(format!(
                    "{path} loaded as a {}, not a tokenizer",
                    other.kind()
                ))),
            }
        },
    );
}
