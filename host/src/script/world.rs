//! `world()` in scripts: this process's place in a distributed job, `#{ rank, size, backend }`
//! (`#{ rank: 0, size: 1, backend: "single" }` when no launcher started it). A build without
//! the MPI backend adds `mpi: false` and `how_to_enable`, so a script can say why it runs alone.

use rhai::{Dynamic, Engine, Map, INT};

use crate::distributed::{HOW_TO_ENABLE, MPI_BUILT};

pub fn register(engine: &mut Engine) {
    engine.register_fn("world", world);
}

fn world() -> Map {
    let world = llmlab_plugin_api::world();
    let mut map = Map::new();
    map.insert("rank".into(), Dynamic::from(world.rank() as INT));
    map.insert("size".into(), Dynamic::from(world.size() as INT));
    map.insert("backend".into(), Dynamic::from(world.backend().to_string()));
    map.insert("mpi".into(), Dynamic::from(MPI_BUILT));
    if !MPI_BUILT {
        map.insert(
            "how_to_enable".into(),
            Dynamic::from(HOW_TO_ENABLE.to_string()),
        );
    }
    map
}
