//! The process's place in a distributed job (docs/distributed.md): at start-up the host finds
//! out whether a launcher (`mpirun`, Slurm's `srun` with PMI) started it as one of several ranks,
//! and if so installs the MPI backend as the runtime's collective world
//! (`llmlab_plugin_api::collective`), so trainers with `data_parallel: true` reach their peers.
//!
//! MPI is an optional feature (`--features llmlab/mpi`; Open MPI's headers and libclang at build
//! time). A build without it still runs alone, and refuses to run as one of several ranks,
//! saying how to enable it, rather than train N unrelated copies into one run directory.
//!
//! A cuda build with `--features llmlab/nccl` installs the NCCL backend instead
//! (`nccl_world.rs`): MPI still starts the job and carries bytes, f32 buffers and CPU tensors,
//! NCCL carries the CUDA tensors. `LLMLAB_COLLECTIVE` chooses: unset or `auto` (NCCL where
//! built), `mpi` (host copies through MPI, the A/B and the way out), `nccl` (refused where not
//! built; also joins a job of one rank, the one-GPU smoke test).

#[cfg(mpi_backend)]
mod mpi_world;
#[cfg(feature = "nccl")]
mod nccl_world;

use std::path::PathBuf;
use std::time::Duration;

use llmlab_plugin_api::collective;

/// How to get a build that can join a job.
pub const HOW_TO_ENABLE: &str = "install Open MPI (apt-get install openmpi-bin libopenmpi-dev \
    libclang-dev) and build with `cargo build --release --workspace --features llmlab/mpi`";

/// Whether this binary was built with the MPI backend.
pub const MPI_BUILT: bool = cfg!(mpi_backend);

/// Whether this binary was built with the NCCL backend (a cuda build with `llmlab/nccl`).
pub const NCCL_BUILT: bool = cfg!(feature = "nccl");

/// How to get a build with the NCCL backend.
pub const HOW_TO_ENABLE_NCCL: &str = "build the cuda bundle with the NCCL backend: \
    scripts/build-cuda.sh's cargo command with `--features cuda,llmlab/nccl` (Open MPI and \
    libclang at build time; docs/distributed.md, \"NCCL\")";

/// What carries a job's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Everything through MPI; tensors on a GPU are copied to the host and back.
    Mpi,
    /// CUDA tensors through NCCL on the GPU; bytes, f32 buffers and CPU tensors through MPI.
    Nccl,
}

/// The backend `LLMLAB_COLLECTIVE` (`requested`: unset or `auto`, `mpi`, `nccl`) asks for in a
/// build that has NCCL (`nccl_built`) and CUDA (`cuda_built`) or not. Unset picks NCCL wherever
/// it is built: it is used only for CUDA tensors, so a CPU run of that build still goes
/// through MPI alone.
pub fn choose_backend(
    requested: Option<&str>,
    nccl_built: bool,
    cuda_built: bool,
) -> Result<Backend, String> {
    match requested.map(str::trim) {
        None | Some("") | Some("auto") => Ok(if nccl_built {
            Backend::Nccl
        } else {
            Backend::Mpi
        }),
        Some("mpi") => Ok(Backend::Mpi),
        Some("nccl") if nccl_built => Ok(Backend::Nccl),
        Some("nccl") if !cuda_built => Err(format!(
            "LLMLAB_COLLECTIVE=nccl: this is a CPU build of llmlab (runtime candle features: \
             {}), and NCCL runs between CUDA GPUs only; {HOW_TO_ENABLE_NCCL}, or unset \
             LLMLAB_COLLECTIVE to use MPI",
            llmlab_plugin_api::declaration::CANDLE_FEATURES
        )),
        Some("nccl") => Err(format!(
            "LLMLAB_COLLECTIVE=nccl: this cuda build has no NCCL backend; {HOW_TO_ENABLE_NCCL}, \
             or set LLMLAB_COLLECTIVE=mpi to copy tensors through the host"
        )),
        Some(other) => Err(format!(
            "LLMLAB_COLLECTIVE={other:?}: expected auto, mpi or nccl (docs/distributed.md)"
        )),
    }
}

/// Whether a process the launcher announced as one of `size` ranks (`None`: no launcher) joins
/// a job: always with several ranks; alone only when NCCL is asked for by name, so that one
/// GPU can run the NCCL path end to end (`mpirun -np 1`). Asking for NCCL without a launcher is
/// an error: its communicator is bootstrapped over MPI.
pub fn joins(
    size: Option<usize>,
    backend: Backend,
    requested: Option<&str>,
) -> Result<bool, String> {
    let forced_nccl = backend == Backend::Nccl && requested.map(str::trim) == Some("nccl");
    match size {
        Some(n) if n > 1 => Ok(true),
        Some(_) => Ok(forced_nccl),
        None if forced_nccl => Err(
            "LLMLAB_COLLECTIVE=nccl needs a launcher (`mpirun -np N llmlab ...`, also for one \
             rank): NCCL's communicator is set up over MPI"
                .into(),
        ),
        None => Ok(false),
    }
}

/// The environment variables launchers set to a rank's index among the ranks of its node, the
/// GPU it should use: llmlab's own override first, then Open MPI, Slurm, MPICH (Hydra).
const LOCAL_RANK_VARS: [&str; 4] = [
    "LLMLAB_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "SLURM_LOCALID",
    "MPI_LOCALRANKID",
];

/// This process's rank among the ranks of its node, if a launcher said (variable, value).
pub fn local_rank() -> Option<(String, usize)> {
    LOCAL_RANK_VARS.iter().find_map(|var| {
        let rank = std::env::var(var).ok()?.trim().parse().ok()?;
        Some((var.to_string(), rank))
    })
}

/// The GPU a bare `--device cuda` should mean for this process: its local rank in a job of
/// several ranks (one GPU per process), else 0.
pub fn default_cuda_ordinal() -> usize {
    match launcher_size() {
        Some((_, size)) if size > 1 => local_rank().map_or(0, |(_, r)| r),
        _ => 0,
    }
}

/// The first two ranks that would share a GPU, given each rank's `host/cuda:N`: NCCL refuses
/// such a communicator with an error that names neither rank.
pub fn shared_gpu(places: &[String]) -> Option<(usize, usize)> {
    places.iter().enumerate().find_map(|(b, place)| {
        places[..b]
            .iter()
            .position(|other| other == place)
            .map(|a| (a, b))
    })
}

/// The error for two ranks on one GPU, with the way to give each rank its own.
pub fn shared_gpu_message(a: usize, b: usize, place: &str) -> String {
    format!(
        "ranks {a} and {b} both run on {place}: NCCL needs one GPU per rank; start each rank on \
         its local rank's GPU (`mpirun -np N bash -c 'llmlab --device \
         cuda:$OMPI_COMM_WORLD_LOCAL_RANK ...'`, or SLURM_LOCALID under srun), or set \
         LLMLAB_COLLECTIVE=mpi to copy tensors through the host instead"
    )
}

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
    let requested = std::env::var("LLMLAB_COLLECTIVE").ok();
    let backend = choose_backend(
        requested.as_deref(),
        NCCL_BUILT,
        llmlab_plugin_api::candle::utils::cuda_is_available(),
    )?;
    let launched = launcher_size();
    if !joins(
        launched.as_ref().map(|(_, n)| *n),
        backend,
        requested.as_deref(),
    )? {
        return Ok(Launch {
            #[cfg(mpi_backend)]
            _universe: None,
        });
    }
    let (var, size) = launched.expect("joins() refuses a job without a launcher");
    #[cfg(mpi_backend)]
    {
        let _ = (var, size);
        let (universe, mpi) = mpi_world::MpiWorld::init(collective_timeout()?)?;
        let world: std::sync::Arc<dyn collective::Collective> = match backend {
            Backend::Mpi => std::sync::Arc::new(mpi),
            #[cfg(feature = "nccl")]
            Backend::Nccl => std::sync::Arc::new(nccl_world::NcclWorld::new(mpi)),
            #[cfg(not(feature = "nccl"))]
            Backend::Nccl => return Err(HOW_TO_ENABLE_NCCL.into()),
        };
        collective::set_world(world).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_auto_picks_nccl_only_where_it_is_built() {
        for requested in [None, Some(""), Some("auto"), Some(" auto ")] {
            assert_eq!(choose_backend(requested, true, true), Ok(Backend::Nccl));
            assert_eq!(choose_backend(requested, false, true), Ok(Backend::Mpi));
            assert_eq!(choose_backend(requested, false, false), Ok(Backend::Mpi));
        }
    }

    #[test]
    fn llmlab_collective_mpi_forces_host_copies_even_where_nccl_is_built() {
        assert_eq!(choose_backend(Some("mpi"), true, true), Ok(Backend::Mpi));
        assert_eq!(choose_backend(Some("mpi"), false, false), Ok(Backend::Mpi));
    }

    #[test]
    fn nccl_asked_for_where_it_is_not_built_says_what_is_missing_and_the_way_out() {
        let cpu = choose_backend(Some("nccl"), false, false).unwrap_err();
        for part in [
            "LLMLAB_COLLECTIVE=nccl",
            "CPU build",
            "runtime candle features",
            "--features cuda,llmlab/nccl",
            "unset LLMLAB_COLLECTIVE",
        ] {
            assert!(cpu.contains(part), "{part:?} missing from: {cpu}");
        }
        let cuda = choose_backend(Some("nccl"), false, true).unwrap_err();
        for part in [
            "cuda build has no NCCL backend",
            "--features cuda,llmlab/nccl",
            "LLMLAB_COLLECTIVE=mpi",
        ] {
            assert!(cuda.contains(part), "{part:?} missing from: {cuda}");
        }
        assert_eq!(choose_backend(Some("nccl"), true, true), Ok(Backend::Nccl));
        let typo = choose_backend(Some("nvlink"), true, true).unwrap_err();
        assert!(
            typo.contains("\"nvlink\"") && typo.contains("auto, mpi or nccl"),
            "{typo}"
        );
    }

    #[test]
    fn this_build_refuses_or_grants_nccl_as_it_was_built() {
        let cuda = llmlab_plugin_api::candle::utils::cuda_is_available();
        let chosen = choose_backend(Some("nccl"), NCCL_BUILT, cuda);
        assert_eq!(chosen.is_ok(), NCCL_BUILT, "{chosen:?}");
        match chosen {
            Ok(backend) => assert_eq!(backend, Backend::Nccl),
            Err(message) => assert_eq!(message.contains("CPU build"), !cuda, "{message}"),
        }
    }

    #[test]
    fn a_job_is_joined_with_several_ranks_or_one_rank_asking_for_nccl() {
        let (mpi, nccl) = (Backend::Mpi, Backend::Nccl);
        assert_eq!(joins(Some(2), mpi, None), Ok(true));
        assert_eq!(joins(Some(8), nccl, None), Ok(true));
        assert_eq!(joins(Some(1), mpi, None), Ok(false));
        // NCCL chosen by default, not by name: one rank runs alone as before.
        assert_eq!(joins(Some(1), nccl, None), Ok(false));
        assert_eq!(joins(Some(1), nccl, Some("nccl")), Ok(true));
        assert_eq!(joins(None, mpi, None), Ok(false));
        assert_eq!(joins(None, nccl, Some("auto")), Ok(false));
        let alone = joins(None, nccl, Some("nccl")).unwrap_err();
        assert!(
            alone.contains("needs a launcher") && alone.contains("mpirun -np"),
            "{alone}"
        );
    }

    #[test]
    fn ranks_sharing_a_gpu_are_named_with_the_fix() {
        let places = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shared_gpu(&places(&["a/cuda:0", "a/cuda:1", "b/cuda:0"])),
            None
        );
        assert_eq!(
            shared_gpu(&places(&["a/cuda:0", "a/cuda:1", "a/cuda:0"])),
            Some((0, 2))
        );
        assert_eq!(
            shared_gpu(&places(&["a/cuda:0", "a/cuda:1", "a/cuda:1", "a/cuda:0"])),
            Some((1, 2))
        );
        assert_eq!(shared_gpu(&[]), None);
        let message = shared_gpu_message(0, 2, "a/cuda:0");
        for part in [
            "ranks 0 and 2 both run on a/cuda:0",
            "cuda:$OMPI_COMM_WORLD_LOCAL_RANK",
            "LLMLAB_COLLECTIVE=mpi",
        ] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }
}
