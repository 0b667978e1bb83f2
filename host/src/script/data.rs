//! The script surface of data: corpora (`corpus(...)`), text files, token datasets.

use std::sync::Arc;

use rhai::Engine;

use super::Host;

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let _ = (engine, host);
}
