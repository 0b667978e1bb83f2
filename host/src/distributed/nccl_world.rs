//! The NCCL backend of the collective contract (docs/distributed.md, "NCCL"): one process per
//! GPU, started by `mpirun`/`srun` like the MPI backend, whose [`MpiWorld`] it wraps. The
//! tensor forms (`all_reduce`, `broadcast`, `all_gather`, `reduce_scatter`) of tensors on a
//! CUDA device run as NCCL collectives on the tensors' device memory, on candle's stream of that
//! device (so they are ordered with the kernels that produced and consume them, and nothing is
//! copied to the host); the byte and f32 forms, the tensor `gather` (checkpoints only) and CPU
//! tensors go through MPI as before.
//!
//! The communicator is made at the first collective of a CUDA tensor, on that tensor's device:
//! the host joins the job before it opens the device (`--device`), and every rank reaches that
//! first collective at the same point. Rank 0 makes the `ncclUniqueId`, MPI broadcasts its 128
//! bytes, every rank calls `ncclCommInitRank`. Before that the ranks all-gather where they run
//! (host and GPU) and whether libnccl loads, so two ranks on one GPU or a rank without NCCL are
//! refused by name instead of failing inside NCCL.
//!
//! Faults: an NCCL collective cannot be cancelled and waits for ever for a rank that is gone,
//! so each one starts with the MPI backend's arrival check (a rank that died or hangs before it
//! is named within `LLMLAB_COLLECTIVE_TIMEOUT_S` and the job ended), and each one is waited for
//! with the same timeout afterwards (a rank lost during it): on expiry, or when NCCL returns an
//! error, the communicator is aborted (`ncclCommAbort`) and the job ended naming this rank and
//! the collective.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmlab_plugin_api::candle::cuda_backend::cudarc::nccl::{self, Comm, Id};
use llmlab_plugin_api::candle::{
    self, CpuStorage, CudaStorage, CustomOp1, DType, Device, DeviceLocation, Layout, Shape, Tensor,
};
use llmlab_plugin_api::collective::{check_root, Collective, ReduceOp};
use llmlab_plugin_api::{Error, Result};

use super::mpi_world::{self, MpiWorld};

pub struct NcclWorld {
    mpi: MpiWorld,
    /// Made at the first collective of a CUDA tensor; `None` before and after an abort.
    comm: Mutex<Option<DeviceComm>>,
}

/// A communicator and the GPU it was made on.
struct DeviceComm {
    comm: Comm,
    gpu: usize,
}

// SAFETY: an NCCL communicator may be used from any thread as long as its calls do not overlap;
// it only ever sits behind `NcclWorld::comm`'s mutex, which serialises them.
unsafe impl Send for DeviceComm {}

/// One NCCL collective over a contiguous f32 buffer.
#[derive(Debug, Clone, Copy)]
enum Kind {
    AllReduce(ReduceOp),
    Broadcast(usize),
    AllGather,
    ReduceScatter(ReduceOp),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AllReduce(_) => "all_reduce (NCCL)",
            Kind::Broadcast(_) => "broadcast (NCCL)",
            Kind::AllGather => "all_gather (NCCL)",
            Kind::ReduceScatter(_) => "reduce_scatter (NCCL)",
        }
    }
}

fn nccl_op(op: ReduceOp) -> nccl::ReduceOp {
    match op {
        ReduceOp::Sum => nccl::ReduceOp::Sum,
        // ncclAvg (NCCL >= 2.10) divides on the GPU, as the MPI backend does on the host.
        ReduceOp::Mean => nccl::ReduceOp::Avg,
    }
}

impl NcclWorld {
    pub fn new(mpi: MpiWorld) -> NcclWorld {
        NcclWorld {
            mpi,
            comm: Mutex::new(None),
        }
    }

    /// The tensor's collective on its GPU (`Some`), or `None` for a tensor elsewhere, which the
    /// caller sends through MPI.
    fn on_gpu(&self, tensor: &Tensor, kind: Kind) -> Result<Option<Tensor>> {
        let Some(gpu) = gpu_of(tensor.device()) else {
            return Ok(None);
        };
        let dtype = tensor.dtype();
        // NCCL runs on f32 here (the contract's values are f32); other dtypes are converted on
        // the GPU, never through the host.
        let values = tensor.flatten_all()?.to_dtype(DType::F32)?.contiguous()?;
        let n = values.elem_count();
        let size = self.mpi.size();
        if matches!(kind, Kind::ReduceScatter(_)) && !n.is_multiple_of(size) {
            return Err(Error::msg(format!(
                "reduce_scatter: {n} values do not split evenly over {size} ranks"
            )));
        }
        let mut slot = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(self.connect(tensor.device(), gpu)?);
        }
        let on = slot.as_ref().expect("connected above");
        if on.gpu != gpu {
            return Err(Error::msg(format!(
                "a tensor on cuda:{gpu} reached the NCCL communicator of cuda:{}: one process \
                 trains on one GPU",
                on.gpu
            )));
        }
        let op = OnComm {
            comm: &on.comm,
            kind,
            size,
        };
        let outcome = self.mpi.checked(kind.name(), || -> Result<Tensor> {
            let out = values.apply_op1_no_bwd(&op)?;
            self.wait(&on.comm, kind)?;
            Ok(out)
        });
        match outcome {
            Ok(out) => {
                let out = match kind {
                    Kind::AllReduce(_) | Kind::Broadcast(_) => out.reshape(tensor.dims())?,
                    Kind::AllGather | Kind::ReduceScatter(_) => out,
                };
                Ok(Some(out.to_dtype(dtype)?))
            }
            Err(error) => {
                let message = format!("{} failed: {error}; aborting the communicator", kind.name());
                abort(slot.take());
                Err(Error::msg(message))
            }
        }
    }

    /// Makes this rank's communicator on `device` (GPU `gpu`). Every rank calls it at the same
    /// collective; it refuses, on every rank alike, ranks sharing a GPU or lacking libnccl.
    fn connect(&self, device: &Device, gpu: usize) -> Result<DeviceComm> {
        let rank = self.mpi.rank();
        // SAFETY: dlopen of NCCL by cudarc's candidate names; nothing is called in it.
        let present = unsafe { nccl::sys::is_culib_present() };
        let mine = format!("{}/cuda:{gpu}\n{}", hostname(), u8::from(present));
        let all: Vec<String> = self
            .mpi
            .all_gather_bytes(mine.as_bytes())?
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let places: Vec<String> = all
            .iter()
            .map(|s| s.split('\n').next().unwrap_or("").to_string())
            .collect();
        if let Some((a, b)) = super::shared_gpu(&places) {
            return Err(Error::msg(super::shared_gpu_message(a, b, &places[a])));
        }
        let without: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(_, s)| s.ends_with("\n0"))
            .map(|(r, _)| r.to_string())
            .collect();
        if !without.is_empty() {
            return Err(Error::msg(format!(
                "rank {} could not load NCCL (libnccl.so): install NCCL 2 (pip \
                 nvidia-nccl-cu13, or the distribution's libnccl2) and put a directory holding \
                 libnccl.so on LD_LIBRARY_PATH (the pip wheel ships only libnccl.so.2: `ln -s \
                 .../nvidia/nccl/lib/libnccl.so.2 DIR/libnccl.so`), or set \
                 LLMLAB_COLLECTIVE=mpi (docs/distributed.md)",
                without.join(", rank ")
            )));
        }
        let nccl_error =
            |what: &str, e: nccl::result::NcclError| Error::msg(format!("NCCL {what}: {:?}", e.0));
        let mut id = if rank == 0 {
            let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
            id.internal().iter().map(|c| *c as u8).collect()
        } else {
            Vec::new()
        };
        self.mpi.broadcast_bytes(&mut id, 0)?;
        let internal: [std::ffi::c_char; 128] = id
            .iter()
            .map(|b| *b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                Error::msg(format!(
                    "rank 0's ncclUniqueId has {} bytes, not 128",
                    id.len()
                ))
            })?;
        let stream = device.as_cuda_device()?.cuda_stream();
        // ncclCommInitRank makes the communicator on the calling thread's current device.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| Error::msg(format!("binding cuda:{gpu}: {e:?}")))?;
        let comm = Comm::from_rank(stream, rank, self.mpi.size(), Id::uninit(internal))
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        llmlab_plugin_api::tracing::info!(
            "rank {rank}: NCCL communicator of {} ranks on cuda:{gpu}",
            self.mpi.size()
        );
        Ok(DeviceComm { comm, gpu })
    }

    /// Waits for the collective just enqueued on `comm`'s stream, at most the collective
    /// timeout: a peer lost during it would otherwise hang this rank at its next use of the
    /// GPU, past every arrival check.
    fn wait(&self, comm: &Comm, kind: Kind) -> Result<()> {
        let stream = comm.stream();
        let done = stream
            .record_event(None)
            .map_err(|e| Error::msg(format!("recording an event: {e:?}")))?;
        let deadline = Instant::now() + self.mpi.timeout();
        let mut polls = 0u32;
        loop {
            match done.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(Error::msg(format!("CUDA error: {e:?}"))),
            }
            if Instant::now() > deadline {
                return Err(Error::msg(format!(
                    "{} did not complete within {:.0} s although every rank had arrived: a \
                     rank died or its GPU hangs",
                    kind.name(),
                    self.mpi.timeout().as_secs_f64()
                )));
            }
            polls += 1;
            if polls < 2000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// Aborts a communicator (`ncclCommAbort`, which cudarc's `Comm` calls when dropped); a failure
/// to abort is reported, not raised: the job is ending anyway.
fn abort(comm: Option<DeviceComm>) {
    if let Some(comm) = comm {
        if catch_unwind(AssertUnwindSafe(move || drop(comm))).is_err() {
            eprintln!("warning: ncclCommAbort failed; the job ends regardless");
        }
    }
}

/// The CUDA ordinal of `device`, or `None` for a device NCCL does not serve.
fn gpu_of(device: &Device) -> Option<usize> {
    match device.location() {
        DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
        _ => None,
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    }
}

/// The collective as a candle op: reads the input's device memory, writes a new buffer of the
/// output's length on the same device.
struct OnComm<'a> {
    comm: &'a Comm,
    kind: Kind,
    size: usize,
}

impl CustomOp1 for OnComm<'_> {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        candle::bail!(
            "{}: a CPU tensor reached the NCCL backend",
            self.kind.name()
        )
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle::Error::msg("NCCL needs a contiguous tensor"))?;
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let n = end - start;
        let len = match self.kind {
            Kind::AllReduce(_) | Kind::Broadcast(_) => n,
            Kind::AllGather => n * self.size,
            Kind::ReduceScatter(_) => n / self.size,
        };
        let device = &storage.device;
        // SAFETY: NCCL writes every element of the output before anything reads it.
        let mut dst = unsafe { device.alloc::<f32>(len)? };
        let status = match self.kind {
            Kind::AllReduce(op) => self.comm.all_reduce(&src, &mut dst, &nccl_op(op)),
            Kind::Broadcast(root) => self.comm.broadcast(Some(&src), &mut dst, root as i32),
            Kind::AllGather => self.comm.all_gather(&src, &mut dst),
            Kind::ReduceScatter(op) => self.comm.reduce_scatter(&src, &mut dst, &nccl_op(op)),
        };
        status.map_err(|e| candle::Error::msg(format!("{:?}", e.0)))?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, device.clone()),
            Shape::from(len),
        ))
    }
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn size(&self) -> usize {
        self.mpi.size()
    }
    fn backend(&self) -> &str {
        "nccl"
    }

    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        self.mpi.all_reduce_f32(buf, op)
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        self.mpi.broadcast_bytes(buf, root)
    }
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.mpi.all_gather_f32(send, recv)
    }
    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.mpi.all_gather_bytes(send)
    }
    fn gather_bytes(&self, send: &[u8], root: usize) -> Result<Vec<Vec<u8>>> {
        self.mpi.gather_bytes(send, root)
    }
    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<()> {
        self.mpi.reduce_scatter_f32(send, recv, op)
    }
    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        match self.on_gpu(tensor, Kind::AllReduce(op)).map_err(fatal)? {
            Some(out) => Ok(out),
            None => self.mpi.all_reduce(tensor, op),
        }
    }
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, self.size())?;
        match self.on_gpu(tensor, Kind::Broadcast(root)).map_err(fatal)? {
            Some(out) => Ok(out),
            None => self.mpi.broadcast(tensor, root),
        }
    }
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        match self.on_gpu(tensor, Kind::AllGather).map_err(fatal)? {
            Some(out) => Ok(out),
            None => self.mpi.all_gather(tensor),
        }
    }
    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        match self
            .on_gpu(tensor, Kind::ReduceScatter(op))
            .map_err(fatal)?
        {
            Some(out) => Ok(out),
            None => self.mpi.reduce_scatter(tensor, op),
        }
    }
}

/// An NCCL failure leaves the other ranks inside (or before) a collective this rank will not
/// finish: end the job now, naming this rank, rather than let them wait for the timeout.
fn fatal(error: Error) -> Error {
    mpi_world::fail(&error.to_string())
}
