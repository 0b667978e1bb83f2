//! The MPI backend of the collective contract (rsmpi over Open MPI or MPICH).
//!
//! Every collective starts with an arrival check: each rank tells rank 0 which collective it
//! reached (point to point, non-blocking), and rank 0 answers once all have. A rank that has
//! died or hangs never arrives, so after the timeout rank 0 names it and ends the job with
//! `MPI_Abort` instead of blocking for ever inside the collective (the others, waiting for rank
//! 0's answer, name rank 0 if it is the one missing). Ranks that reach different collectives
//! (out of step: different scripts or configs) are named the same way. The check costs two
//! small messages per collective; trainers make a few collectives per step (bucketed
//! gradients), so it is small against a step (docs/distributed.md has the measurement).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmlab_plugin_api::collective::{check_root, Collective, ReduceOp};
use llmlab_plugin_api::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use mpi::Threading;

pub use mpi::environment::Universe;

const TAG_ARRIVE: i32 = 28_001;
const TAG_GO: i32 = 28_002;
/// Ranks other than 0 wait this much longer than rank 0 before naming rank 0, so that when
/// another rank is the one missing, rank 0's message (naming it) ends the job first.
const PEER_GRACE: Duration = Duration::from_secs(10);

pub struct MpiWorld {
    rank: usize,
    size: usize,
    timeout: Duration,
    /// Collectives started so far on this rank: what the arrival check compares.
    sequence: AtomicU64,
    /// One collective at a time from this process (they must be issued in the same order on
    /// every rank; the trainer calls them from one thread anyway).
    serial: Mutex<()>,
}

impl MpiWorld {
    pub fn init(timeout: Duration) -> std::result::Result<(Universe, MpiWorld), String> {
        // Multiple: `abort` may be called from whichever thread notices a failure.
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or("MPI was already initialised in this process")?;
        let comm = universe.world();
        let world = MpiWorld {
            rank: comm.rank() as usize,
            size: comm.size() as usize,
            timeout,
            sequence: AtomicU64::new(0),
            serial: Mutex::new(()),
        };
        Ok((universe, world))
    }

    /// Waits until every rank has reached collective number `seq` (named `what`), or ends the job
    /// naming the ranks that did not.
    fn arrive(&self, what: &str) {
        let seq = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        let comm = SimpleCommunicator::world();
        if self.rank == 0 {
            let mut reached = vec![0u64; self.size];
            let deadline = Instant::now() + self.timeout;
            mpi::request::scope(|scope| {
                let mut pending: Vec<_> = reached
                    .iter_mut()
                    .enumerate()
                    .skip(1)
                    .map(|(r, slot)| {
                        let request = comm
                            .process_at_rank(r as i32)
                            .immediate_receive_into_with_tag(scope, slot, TAG_ARRIVE);
                        (r, request)
                    })
                    .collect();
                let mut polls = 0u32;
                while !pending.is_empty() {
                    pending = pending
                        .into_iter()
                        .filter_map(|(r, request)| request.test().err().map(|req| (r, req)))
                        .collect();
                    if pending.is_empty() {
                        break;
                    }
                    if Instant::now() > deadline {
                        let missing: Vec<String> =
                            pending.iter().map(|(r, _)| r.to_string()).collect();
                        fail(&format!(
                            "rank {} did not reach collective #{seq} ({what}) within {:.0} s: it died or hangs; ending the job",
                            missing.join(", rank "),
                            self.timeout.as_secs_f64()
                        ));
                    }
                    back_off(&mut polls);
                }
            });
            if let Some((r, other)) = reached.iter().enumerate().skip(1).find(|(_, s)| **s != seq) {
                fail(&format!(
                    "rank {r} is at collective #{other} where rank 0 is at #{seq} ({what}): the ranks run different code or configs; ending the job"
                ));
            }
            for r in 1..self.size {
                comm.process_at_rank(r as i32).send_with_tag(&seq, TAG_GO);
            }
        } else {
            let root = comm.process_at_rank(0);
            root.send_with_tag(&seq, TAG_ARRIVE);
            let mut go = 0u64;
            let deadline = Instant::now() + self.timeout + PEER_GRACE;
            mpi::request::scope(|scope| {
                let mut request = root.immediate_receive_into_with_tag(scope, &mut go, TAG_GO);
                let mut polls = 0u32;
                loop {
                    match request.test() {
                        Ok(_) => break,
                        Err(still) => request = still,
                    }
                    if Instant::now() > deadline {
                        fail(&format!(
                            "rank 0 did not answer at collective #{seq} ({what}) within {:.0} s: it died or hangs; ending the job",
                            (self.timeout + PEER_GRACE).as_secs_f64()
                        ));
                    }
                    back_off(&mut polls);
                }
            });
        }
    }

    /// Runs `collective` (named `what`) once every rank has arrived at it, one collective at a
    /// time: how another backend (NCCL) whose collectives cannot time out borrows this one's
    /// fault detection.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub fn checked<T>(&self, what: &str, collective: impl FnOnce() -> T) -> T {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        self.arrive(what);
        collective()
    }

    /// How long a rank waits for the others (`LLMLAB_COLLECTIVE_TIMEOUT_S`).
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn rank_error(&self, message: String) -> Error {
        Error::msg(format!("rank {}: {message}", self.rank))
    }
}

/// Spins briefly (collectives on one machine answer in microseconds), then sleeps, so a rank
/// waiting for a slow peer does not take the CPU the peer needs.
fn back_off(polls: &mut u32) {
    *polls += 1;
    if *polls < 2000 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Reports `message` (this rank's stderr, where mpirun collects it) and ends every rank.
pub fn fail(message: &str) -> ! {
    let rank = SimpleCommunicator::world().rank();
    eprintln!("error: rank {rank}: {message}");
    llmlab_plugin_api::tracing::error!("rank {rank}: {message}");
    SimpleCommunicator::world().abort(3)
}

/// Ends the job from this rank (after it failed).
pub fn abort(code: i32) {
    SimpleCommunicator::world().abort(code)
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &str {
        "mpi"
    }

    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        self.arrive("all_reduce");
        let send = buf.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], buf, SystemOperation::sum());
        if op == ReduceOp::Mean {
            let inv = 1.0 / self.size as f32;
            buf.iter_mut().for_each(|v| *v *= inv);
        }
        Ok(())
    }

    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, self.size)?;
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        self.arrive("broadcast");
        let comm = SimpleCommunicator::world();
        let process = comm.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        process.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        process.broadcast_into(&mut buf[..]);
        Ok(())
    }

    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        if recv.len() != send.len() * self.size {
            return Err(self.rank_error(format!(
                "all_gather: room for {} values, {} ranks × {} expected",
                recv.len(),
                self.size,
                send.len()
            )));
        }
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        self.arrive("all_gather");
        SimpleCommunicator::world().all_gather_into(send, recv);
        Ok(())
    }

    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        self.arrive("all_gather_bytes");
        let comm = SimpleCommunicator::world();
        let mut lens = vec![0i32; self.size];
        let len = i32::try_from(send.len())
            .map_err(|_| self.rank_error("all_gather_bytes: over 2 GiB".into()))?;
        comm.all_gather_into(&len, &mut lens[..]);
        let displs = displacements(&lens);
        let mut all = vec![0u8; lens.iter().map(|n| *n as usize).sum()];
        {
            let mut partition = PartitionMut::new(&mut all[..], &lens[..], &displs[..]);
            comm.all_gather_varcount_into(send, &mut partition);
        }
        Ok(lens
            .iter()
            .zip(&displs)
            .map(|(n, at)| all[*at as usize..(*at + *n) as usize].to_vec())
            .collect())
    }

    fn gather_bytes(&self, send: &[u8], root: usize) -> Result<Vec<Vec<u8>>> {
        check_root(root, self.size)?;
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        self.arrive("gather_bytes");
        let comm = SimpleCommunicator::world();
        let process = comm.process_at_rank(root as i32);
        // MPI counts are i32: refuse before the collective rather than truncate. The root learns
        // every length first; a rank that refuses sends -1 so the root fails too instead of
        // waiting for bytes that never come.
        let len = i32::try_from(send.len()).unwrap_or(-1);
        if self.rank != root {
            process.gather_into(&len);
            if len < 0 {
                return Err(self.rank_error(format!(
                    "gather_bytes: {} bytes are over MPI's 2 GiB per rank",
                    send.len()
                )));
            }
            process.gather_varcount_into(send);
            return Ok(Vec::new());
        }
        let mut lens = vec![0i32; self.size];
        process.gather_into_root(&len, &mut lens[..]);
        if let Some(r) = lens.iter().position(|n| *n < 0) {
            return Err(self.rank_error(format!(
                "gather_bytes: rank {r} has over MPI's 2 GiB to send"
            )));
        }
        let displs = displacements(&lens);
        let total: usize = lens.iter().map(|n| *n as usize).sum();
        if total > i32::MAX as usize {
            return Err(self.rank_error(format!(
                "gather_bytes: {total} bytes in all are over MPI's 2 GiB per collective"
            )));
        }
        let mut all = vec![0u8; total];
        {
            let mut partition = PartitionMut::new(&mut all[..], &lens[..], &displs[..]);
            process.gather_varcount_into_root(send, &mut partition);
        }
        // Split from the back: the first rank with bytes keeps the buffer itself, so the root
        // copies only the later ranks' bytes (none when it sent nothing and one other rank did,
        // a checkpoint's moments on 2 ranks).
        let mut out = vec![Vec::new(); self.size];
        for r in (0..self.size).rev() {
            let at = displs[r] as usize;
            out[r] = if at == 0 {
                std::mem::take(&mut all)
            } else {
                let tail = all[at..].to_vec();
                all.truncate(at);
                tail
            };
        }
        Ok(out)
    }

    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<()> {
        if send.len() != recv.len() * self.size {
            return Err(self.rank_error(format!(
                "reduce_scatter: {} values sent, {} ranks × {} expected",
                send.len(),
                self.size,
                recv.len()
            )));
        }
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        self.arrive("reduce_scatter");
        SimpleCommunicator::world().reduce_scatter_block_into(send, recv, SystemOperation::sum());
        if op == ReduceOp::Mean {
            let inv = 1.0 / self.size as f32;
            recv.iter_mut().for_each(|v| *v *= inv);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        // The arrival check is itself a barrier (every rank reached it, and rank 0 said so).
        self.arrive("barrier");
        Ok(())
    }
}

/// Where each rank's part starts in a gathered buffer of parts `lens` long, in rank order
/// (saturating: a total over `i32::MAX` is refused by the caller, not wrapped).
fn displacements(lens: &[i32]) -> Vec<i32> {
    lens.iter()
        .scan(0i32, |at, n| {
            let here = *at;
            *at = at.saturating_add(*n);
            Some(here)
        })
        .collect()
}
