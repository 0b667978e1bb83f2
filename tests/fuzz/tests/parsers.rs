//! The bounded, stable-toolchain run of every fuzz target (CI runs it; the coverage-guided
//! cargo-fuzz runs are in `libfuzzer/`, docs/reliability.md has their totals).
//!
//! Per target: its seeds are accepted (so the entry exercises the real path, not only an early
//! refusal), every kept regression input returns, and proptest mutations of the seeds (byte
//! flips, interesting values, insertions, deletions, truncations, splices) and arbitrary bytes all
//! return without a panic. `PROPTEST_CASES` raises the count for a longer local run.

use llmlab_fuzz::{entry, seeds, Entry, TARGETS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        value: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// A copy of another region of the input: the mutation that makes lengths and offsets lie.
    Splice {
        from: usize,
        to: usize,
        len: usize,
    },
}

/// Values that sit on the edges of integer parsers and length fields.
const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'[', b'9', b'-', b'\n',
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>();
    prop_oneof![
        (at.clone(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip {
            at: at.index(usize::MAX),
            bit
        }),
        (at.clone(), prop::sample::select(INTERESTING)).prop_map(|(at, value)| Mutation::Set {
            at: at.index(usize::MAX),
            value
        }),
        (at.clone(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| {
            Mutation::Insert {
                at: at.index(usize::MAX),
                bytes,
            }
        }),
        (at.clone(), 1usize..64).prop_map(|(at, len)| Mutation::Delete {
            at: at.index(usize::MAX),
            len
        }),
        at.clone().prop_map(|at| Mutation::Truncate {
            at: at.index(usize::MAX)
        }),
        (at.clone(), at, 1usize..32).prop_map(|(from, to, len)| Mutation::Splice {
            from: from.index(usize::MAX),
            to: to.index(usize::MAX),
            len
        }),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for edit in edits {
        let n = data.len();
        let pos = |at: usize| if n == 0 { 0 } else { at % n };
        match edit {
            Mutation::Flip { at, bit } if n > 0 => data[pos(*at)] ^= 1 << bit,
            Mutation::Set { at, value } if n > 0 => data[pos(*at)] = *value,
            Mutation::Insert { at, bytes } => {
                let at = pos(*at);
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len } if n > 0 => {
                let at = pos(*at);
                data.drain(at..(at + len).min(n));
            }
            Mutation::Truncate { at } => data.truncate(pos(*at)),
            Mutation::Splice { from, to, len } if n > 0 => {
                let (from, to) = (pos(*from), pos(*to));
                let piece: Vec<u8> = data[from..(from + len).min(n)].to_vec();
                let end = (to + piece.len()).min(n);
                data.splice(to..end, piece);
            }
            _ => {}
        }
    }
    data
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mutated seeds and arbitrary bytes through `run`; any panic fails the test with the input.
fn fuzz(name: &str, default_cases: u32) {
    let run: Entry = entry(name).expect("a known target");
    let seeds = seeds(name, None);
    assert!(!seeds.is_empty(), "{name}: no seeds");
    for (i, seed) in seeds.iter().enumerate() {
        assert!(
            run(seed),
            "{name}: seed {i} is refused, so the fuzzing would only test refusals"
        );
    }
    let mut runner = TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop_oneof![
        4 => (
            prop::sample::select(seeds),
            prop::collection::vec(mutation(), 1..8)
        )
            .prop_map(|(seed, edits)| apply(seed, &edits)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ];
    runner
        .run(&strategy, |input| {
            run(&input);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Every input kept in `regressions/<target>/` (crashes the fuzzers found, now fixed) returns.
#[test]
fn regression_inputs_return() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut count = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for file in entries.flatten() {
            let bytes = std::fs::read(file.path()).expect("read a regression input");
            run(&bytes);
            count += 1;
        }
    }
    eprintln!("{count} regression inputs returned");
}

#[test]
fn targets_are_all_tested_here() {
    let source = include_str!("parsers.rs");
    for (name, _) in TARGETS {
        assert!(
            source.contains(&format!("fuzz(\"{name}\"")),
            "target {name} has no bounded run in tests/parsers.rs"
        );
    }
}

#[test]
fn declaration() {
    fuzz("declaration", 300);
}

#[test]
fn dataset_header() {
    fuzz("dataset_header", 300);
}

#[test]
fn checkpoint_manifest() {
    fuzz("checkpoint_manifest", 150);
}

#[test]
fn tokenizer_json() {
    fuzz("tokenizer_json", 150);
}

#[test]
fn gguf() {
    fuzz("gguf", 150);
}

#[test]
fn safetensors_config() {
    fuzz("safetensors_config", 150);
}

#[test]
fn jsonl() {
    fuzz("jsonl", 300);
}

#[test]
fn rhai_config() {
    fuzz("rhai_config", 300);
}
