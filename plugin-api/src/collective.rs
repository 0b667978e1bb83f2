//! The collective-communication contract data-parallel training is written against: the rank
//! and world size of this process, and the collectives (`all_reduce` sum/mean, `broadcast`,
//! `all_gather`, `gather` to one rank, `reduce_scatter`, `barrier`) over f32 buffers, byte
//! strings and tensors.
//!
//! The host owns the backend (MPI between processes launched by `mpirun`, NCCL between GPUs in a
//! CUDA build; docs/distributed.md) and installs it once at start-up with [`set_world`]; trainers
//! reach it with [`world`]. A process nobody launched as part of a job is a world of one
//! ([`SingleProcess`]): every collective is then the identity, so code written for N ranks runs
//! unchanged on one. The world lives here, in the one shared runtime, because MPI's own world is
//! per process: a copy per plugin would be as wrong as a second `MPI_Init`.
//!
//! Every rank must call the same collectives in the same order with the same lengths; a backend
//! reports a rank that never arrives as an error naming it (it does not hang).

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// How values from all ranks are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size.
    Mean,
}

/// One process's view of the job it is part of.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks in the job.
    fn size(&self) -> usize;
    /// `single`, `mpi` or `nccl`.
    fn backend(&self) -> &str;

    /// Combines `buf` element-wise over all ranks, in place on every rank.
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()>;
    /// Rank `root`'s `buf` (any length) replaces every rank's.
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Every rank's `send` (the same length on all) concatenated in rank order into `recv`
    /// (`send.len() * size()` long).
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Every rank's byte string (lengths may differ), in rank order: how ranks compare their
    /// configs and plugin fingerprints before a job starts.
    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Every rank's byte string (lengths may differ), in rank order, on rank `root` only; the
    /// other ranks get an empty list. What a checkpoint needs from sharded state: only the rank
    /// that writes it ever holds the whole (an all-gather would put it on every rank at once).
    fn gather_bytes(&self, send: &[u8], root: usize) -> Result<Vec<Vec<u8>>>;
    /// `send` (`recv.len() * size()` long) combined over all ranks; rank r keeps chunk r.
    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// `all_reduce_f32` over a tensor of any shape and float dtype, on its device. A backend
    /// whose tensors live on an accelerator (NCCL) overrides the tensor forms to stay there.
    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let mut values = host_values(tensor)?;
        self.all_reduce_f32(&mut values, op)?;
        like(values, tensor, tensor.dims())
    }
    /// Rank `root`'s tensor on every rank (same shape and dtype on all).
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        let values = host_values(tensor)?;
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.broadcast_bytes(&mut bytes, root)?;
        if bytes.len() != values.len() * 4 {
            return Err(Error::msg(format!(
                "broadcast from rank {root}: {} values arrived, this rank's tensor has {}",
                bytes.len() / 4,
                values.len()
            )));
        }
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        like(values, tensor, tensor.dims())
    }
    /// Every rank's tensor flattened and concatenated in rank order (1-D, `size()` times as long).
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let values = host_values(tensor)?;
        let mut all = vec![0f32; values.len() * self.size()];
        self.all_gather_f32(&values, &mut all)?;
        let n = all.len();
        like(all, tensor, &[n])
    }
    /// Every rank's tensor flattened and concatenated in rank order (1-D; lengths may differ)
    /// on rank `root`; `None` on the others.
    fn gather(&self, tensor: &Tensor, root: usize) -> Result<Option<Tensor>> {
        let bytes: Vec<u8> = host_values(tensor)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let all = self.gather_bytes(&bytes, root)?;
        if self.rank() != root {
            return Ok(None);
        }
        let values: Vec<f32> = all
            .iter()
            .flat_map(|b| b.chunks_exact(4))
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n = values.len();
        like(values, tensor, &[n]).map(Some)
    }
    /// The tensor flattened (length divisible by `size()`), combined over ranks; this rank's
    /// chunk (1-D).
    fn reduce_scatter(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let values = host_values(tensor)?;
        let size = self.size();
        if !values.len().is_multiple_of(size) {
            return Err(Error::msg(format!(
                "reduce_scatter: {} values do not split evenly over {size} ranks",
                values.len()
            )));
        }
        let mut mine = vec![0f32; values.len() / size];
        self.reduce_scatter_f32(&values, &mut mine, op)?;
        let n = mine.len();
        like(mine, tensor, &[n])
    }
}

fn host_values(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?)
}

fn like(values: Vec<f32>, template: &Tensor, dims: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, dims, template.device())?.to_dtype(template.dtype())?)
}

/// The world of a process that was not launched as part of a job: rank 0 of 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn backend(&self) -> &str {
        "single"
    }
    fn all_reduce_f32(&self, _buf: &mut [f32], _op: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        copy_exact(send, recv, "all_gather")
    }
    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![send.to_vec()])
    }
    fn gather_bytes(&self, send: &[u8], root: usize) -> Result<Vec<Vec<u8>>> {
        check_root(root, 1)?;
        Ok(vec![send.to_vec()])
    }
    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], _op: ReduceOp) -> Result<()> {
        copy_exact(send, recv, "reduce_scatter")
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// An error unless `root` is a rank of a world of `size`.
pub fn check_root(root: usize, size: usize) -> Result<()> {
    if root >= size {
        return Err(Error::msg(format!(
            "root {root} (of a broadcast or gather) is not a rank of this world of {size}"
        )));
    }
    Ok(())
}

fn copy_exact(send: &[f32], recv: &mut [f32], what: &str) -> Result<()> {
    if send.len() != recv.len() {
        return Err(Error::msg(format!(
            "{what}: {} values sent, room for {} received in a world of 1",
            send.len(),
            recv.len()
        )));
    }
    recv.copy_from_slice(send);
    Ok(())
}

static WORLD: OnceLock<Arc<dyn Collective>> = OnceLock::new();

/// Installs this process's world; the host does so once, before any plugin runs. A second call
/// is refused (ranks cannot change under a running job).
pub fn set_world(world: Arc<dyn Collective>) -> Result<()> {
    WORLD
        .set(world)
        .map_err(|_| Error::msg("the collective world is already set for this process"))
}

/// This process's world: what the host installed, else a world of one.
pub fn world() -> Arc<dyn Collective> {
    WORLD
        .get()
        .cloned()
        .unwrap_or_else(|| Arc::new(SingleProcess))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_world_of_one_is_the_identity_for_every_collective() -> Result<()> {
        let w = SingleProcess;
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
        assert_eq!(
            w.all_reduce(&t, ReduceOp::Mean)?.to_vec2::<f32>()?,
            t.to_vec2::<f32>()?
        );
        assert_eq!(w.all_gather(&t)?.to_vec1::<f32>()?, vec![1f32, 2., 3., 4.]);
        assert_eq!(
            w.reduce_scatter(&t, ReduceOp::Sum)?.to_vec1::<f32>()?,
            vec![1f32, 2., 3., 4.]
        );
        assert_eq!(w.broadcast(&t, 0)?.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        assert!(w
            .broadcast(&t, 1)
            .unwrap_err()
            .to_string()
            .contains("root 1"));
        assert_eq!(w.all_gather_bytes(b"fp")?, vec![b"fp".to_vec()]);
        Ok(())
    }

    #[test]
    fn a_world_of_one_gathers_its_own_values_to_itself_and_refuses_another_root() -> Result<()> {
        let w = SingleProcess;
        assert_eq!(w.gather_bytes(b"moments", 0)?, vec![b"moments".to_vec()]);
        assert_eq!(w.gather_bytes(b"", 0)?, vec![Vec::<u8>::new()]);
        let t = Tensor::new(&[[1.5f32, -2.], [3., 4e-9]], &Device::Cpu)?;
        let gathered = w.gather(&t, 0)?.expect("the root receives");
        assert_eq!(gathered.dims(), &[4]);
        assert_eq!(gathered.to_vec1::<f32>()?, vec![1.5f32, -2., 3., 4e-9]);
        for err in [
            w.gather_bytes(b"x", 1).unwrap_err(),
            w.gather(&t, 2).unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("is not a rank of this world of 1"),
                "{err}"
            );
        }
        Ok(())
    }
}
