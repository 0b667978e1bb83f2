//! Data the host owns and hands to plugins through the `plugin-api` data traits: text sources
//! (user files, JSONL, built-in corpora) and memory-mapped token datasets.
