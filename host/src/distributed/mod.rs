//! The process's place in a distributed job (docs/distributed.md): at start-up the host finds
//! out whether a launcher (`mpirun`, Slurm's `srun` with PMI) started it as one of several ranks,
//! and if so installs the MPI backend as the runtime's collective world
//! (`llmlab_plugin_api::collective`), so trainers with `data_parallel: true` reach their peers.
//!
//! MPI is an optional feature (`--features llmlab/mpi`; Open MPI's headers and libclang at build
//! time). A build without it still runs alone, and refuses to run as one of several ranks,
//! saying how to enable it, rather than train N unrelated copies into one run directory.

#[cfg(mpi_backend)]
mod mpi_world;

use std::path::PathBuf;
use std::time::Duration;

use llmlab_plugin_api::collective;

/// How to get a build that can join a job.
pub const HOW_TO_ENABLE: &str = "install Open MPI (apt-get install openmpi-bin libopenmpi-dev \
    libclang-dev) and build with `cargo build --release --workspace --features llmlab/mpi`";

/// Whether this binary was built with the MPI backend.
pub const MPI_BUILT: bool = cfg!(mpi_backend);

/// The environment variables launchers set to the world size: Open MPI, PMIx, MPICH/Slurm PMI.
const SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"];

/// How long a rank waits for the others at a collective before it names the missing ranks and
/// ends the job (`LLMLAB_COLLECTIVE_TIMEOUT_S`, seconds; default 300).
pub fn collective_timeout() -> Result<Duration, String> {
    match std::env::var("LLMLAB_COLLECTIVE_TIMEOUT_S") {
        Err(_) => Ok(Duration::from_secs(300)),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(format!(
                "LLMLAB_COLLECTIVE_TIMEOUT_S={text:?}: expected a positive number of seconds"
            )),
        },
    }
}

/// The world size a launcher announced in the environment, if any.
pub fn launcher_size() -> Option<(String, usize)> {
    SIZE_VARS.iter().find_map(|var| {
        let size = std::env::var(var).ok()?.trim().parse().ok()?;
        Some((var.to_string(), size))
    })
}

/// Keeps MPI initialised for the life of the process (finalised when dropped).
pub struct Launch {
    #[cfg(mpi_backend)]
    _universe: Option<mpi_world::Universe>,
}

impl Launch {
    /// Ends the whole job after this rank failed: the other ranks would otherwise wait for it
    /// until their timeout. A world of one just returns.
    pub fn fail(&self, code: i32) {
        let world = collective::world();
        if world.size() > 1 {
            eprintln!(
                "error: rank {} failed; ending the job (all {} ranks)",
                world.rank(),
                world.size()
            );
            #[cfg(mpi_backend)]
            mpi_world::abort(code);
        }
        let _ = code;
    }
}

/// Joins the job the launcher started this process in, if any; call once, first thing.
pub fn init() -> Result<Launch, String> {
    let Some((var, size)) = launcher_size().filter(|(_, size)| *size > 1) else {
        return Ok(Launch {
            #[cfg(mpi_backend)]
            _universe: None,
        });
    };
    #[cfg(mpi_backend)]
    {
        let _ = (var, size);
        let (universe, world) = mpi_world::MpiWorld::init(collective_timeout()?)?;
        collective::set_world(std::sync::Arc::new(world)).map_err(|e| e.to_string())?;
        Ok(Launch {
            _universe: Some(universe),
        })
    }
    #[cfg(not(mpi_backend))]
    Err(format!(
        "llmlab was started by an MPI launcher as one of {size} ranks ({var}={size}), but this \
         build has no MPI backend: {HOW_TO_ENABLE}"
    ))
}

/// Where this rank's run directory goes: rank 0 owns `root/name` (metrics, plots,
/// checkpoints); rank r > 0 keeps its own configs and log apart in `root/name/ranks/r`, so
/// the ranks never write the same file (nor take the same run lock). A world of one is
/// unchanged. The name is rank 0's, so a generated `<script>-<time>` name agrees on all ranks.
///
/// First the ranks compare the plugins they loaded (`plugins`: name and fingerprint), by an
/// all-gather: ranks that would run different code are refused before anything is written.
pub fn rank_run_dir(
    root: PathBuf,
    name: String,
    plugins: &[(String, String)],
) -> llmlab_plugin_api::Result<(PathBuf, String)> {
    let world = collective::world();
    if world.size() == 1 {
        return Ok((root, name));
    }
    check_same_everywhere(
        "plugins (name and fingerprint)",
        &format!("{plugins:?} host {}", llmlab_plugin_api::FINGERPRINT),
    )?;
    let mut bytes = name.into_bytes();
    world.broadcast_bytes(&mut bytes, 0)?;
    let name = String::from_utf8(bytes)
        .map_err(|_| llmlab_plugin_api::Error::msg("rank 0's run name is not UTF-8"))?;
    match world.rank() {
        0 => Ok((root, name)),
        rank => Ok((root.join(name).join("ranks"), rank.to_string())),
    }
}

/// Refuses to go on unless every rank holds the same `value` (an all-gather), naming the
/// first rank that differs from rank 0 and both values.
pub fn check_same_everywhere(what: &str, value: &str) -> llmlab_plugin_api::Result<()> {
    let all = collective::world().all_gather_bytes(value.as_bytes())?;
    if let Some((rank, other)) = all.iter().enumerate().find(|(_, v)| **v != all[0]) {
        return Err(llmlab_plugin_api::Error::msg(format!(
            "rank {rank}'s {what} differ from rank 0's: the ranks must run the same build and              plugins. rank 0: {}; rank {rank}: {}",
            String::from_utf8_lossy(&all[0]),
            String::from_utf8_lossy(other)
        )));
    }
    Ok(())
}
