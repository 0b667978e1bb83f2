//! Plugin call overhead and session start-up (`cargo bench -p llmlab --bench plugin_call`).
//!
//! * `direct`: a no-op method on a type the compiler sees (static dispatch, inlinable);
//! * `plugin_dyn`: the same kind of no-op (`vocab_size()`) on a tokenizer made by a loaded plugin
//!   through the registry, i.e. a vtable call into another library;
//! * `plugin_script`: that call from a Rhai script, as researchers make it;
//! * `session_start`: discovering and loading every plugin next to the binary plus building the
//!   Rhai engine (the REPL's start-up minus process start).
//!
//! Needs `cargo build --release --workspace` first (the plugins next to the binary).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use llmlab::registry::Registry;
use llmlab::script::{Overrides, Session};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Context, Instance, Kind};

fn plugin_dir() -> PathBuf {
    // target/release/deps/plugin_call-<hash> -> target/release
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

struct Direct {
    size: usize,
}

impl Direct {
    #[inline(never)]
    fn vocab_size(&self) -> usize {
        self.size
    }
}

fn calls(c: &mut Criterion) {
    let direct = Direct { size: 256 };
    c.bench_function("direct", |b| b.iter(|| black_box(&direct).vocab_size()));

    let registry = Registry::discover(&[plugin_dir()]);
    let Ok(entry) = registry.find(Kind::Tokenizer, "bpe") else {
        eprintln!("no `bpe` tokenizer next to the binary: run cargo build --release --workspace");
        return;
    };
    let Ok(Instance::Tokenizer(tokenizer)) = entry.factory.create(&json!({}), &Context::cpu())
    else {
        panic!("bpe with default config");
    };
    c.bench_function("plugin_dyn", |b| {
        b.iter(|| black_box(&tokenizer).vocab_size())
    });

    let mut session = Session::new(
        Registry::discover(&[plugin_dir()]),
        Context::cpu(),
        Overrides::default(),
    );
    let _ = session.eval("let tok = tokenizer(\"bpe\");").unwrap();
    c.bench_function("plugin_script", |b| {
        b.iter(|| session.eval("tok.vocab_size()").unwrap())
    });
}

fn start_up(c: &mut Criterion) {
    let dir = plugin_dir();
    c.bench_function("session_start", |b| {
        b.iter(|| {
            Session::new(
                Registry::discover(std::slice::from_ref(&dir)),
                Context::cpu(),
                Overrides::default(),
            )
        })
    });
}

criterion_group!(benches, calls, start_up);
criterion_main!(benches);
