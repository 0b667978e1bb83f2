//! Data-parallel training (`data_parallel: true`, docs/distributed.md) over the runtime's
//! collective world: every rank draws the same global batch (same seed, same cursor) and trains
//! on its own rows of it, so the union over ranks is exactly the single-process batch and the
//! RNG and cursor a checkpoint records do not depend on the world size (resume with any number
//! of ranks). Gradients are summed over ranks in buckets, so every rank takes the same optimizer
//! step; only rank 0 writes metrics and checkpoints.
//!
//! ZeRO (`zero: 1` or `2`) partitions the parameters over the ranks (whole tensors, balanced by
//! size, as PyTorch's `ZeroRedundancyOptimizer` does): stage 1 keeps AdamW's moments only for
//! the owned parameters; stage 2 also reduce-scatters the gradients, so each rank keeps only
//! its owned parameters' gradients at the update. After the update the owners' new values are
//! all-gathered. A checkpoint gathers the moments to rank 0 (a gather, not an all-gather: no
//! other rank holds more than its shard), so it is the same file whatever the world size or
//! stage.
//!
//! Parameters on a GPU travel as tensors on their device (buckets concatenated there), so a
//! backend whose tensor collectives run on the device (NCCL) never copies them to the host; on
//! the CPU they travel as host f32 buffers. Either way the values and the order of the sums are
//! the same.
//!
//! Every rank must make the same calls in the same order: the train loop calls these at the
//! same points on every rank.

use std::sync::Arc;
use std::time::Instant;

use llmlab_plugin_api::candle::{DType, Tensor, Var};
use llmlab_plugin_api::collective::{world, Collective, ReduceOp};
use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{Error, Model, Result, StepMetrics};

use crate::adamw::AdamW;
use crate::batches::Batch;
use crate::clip;
use crate::config::TrainConfig;

pub struct DataParallel {
    world: Arc<dyn Collective>,
    zero: u8,
    /// Gradient values per all-reduce.
    bucket_values: usize,
    /// The owning rank of each parameter (ZeRO), fixed on the first step.
    owners: Option<Vec<usize>>,
    /// Seconds spent in collectives since the last `take_metrics`.
    comm_seconds: f64,
    /// Gradients and parameters as tensors even on the CPU (tests of the device path).
    tensors_on_cpu: bool,
}

impl DataParallel {
    /// The data-parallel state `config` asks for; `None` without `data_parallel`. The global
    /// batch must split evenly over the ranks.
    pub fn new(trainer: &str, config: &TrainConfig) -> Result<Option<DataParallel>> {
        if !config.data_parallel {
            return Ok(None);
        }
        Self::in_world(trainer, config, world()).map(Some)
    }

    /// As [`DataParallel::new`] in a given world (tests use an in-process one).
    pub fn in_world(
        trainer: &str,
        config: &TrainConfig,
        world: Arc<dyn Collective>,
    ) -> Result<DataParallel> {
        let dp = Self::with_keys(config.zero, config.bucket_mb, world);
        dp.check_split(trainer, "batch_size", config.batch_size)?;
        Ok(dp)
    }

    /// The data-parallel state of a trainer that keeps its keys outside a [`TrainConfig`] (the
    /// aligners' update phase); `zero` and `bucket_mb` as in [`TrainConfig`].
    pub fn with_keys(zero: u8, bucket_mb: f64, world: Arc<dyn Collective>) -> DataParallel {
        DataParallel {
            world,
            zero,
            bucket_values: ((bucket_mb * 1024.0 * 1024.0 / 4.0) as usize).max(1),
            owners: None,
            comm_seconds: 0.0,
            tensors_on_cpu: false,
        }
    }

    /// Whether gradients and parameters travel as tensors on the parameters' device (a GPU)
    /// rather than as host f32 buffers.
    fn as_tensors(&self, params: &[(String, Var)]) -> bool {
        params
            .first()
            .is_some_and(|(_, v)| self.tensors_on_cpu || !v.device().is_cpu())
    }

    /// Refuses a global batch (`key` = `n` rows) that does not split evenly over the ranks.
    pub fn check_split(&self, trainer: &str, key: &str, n: usize) -> Result<()> {
        if !n.is_multiple_of(self.world.size()) {
            return Err(Error::invalid_config(
                trainer,
                format!(
                    "`{key}` = {n} (the global batch) does not split evenly over {} ranks",
                    self.world.size()
                ),
            ));
        }
        Ok(())
    }

    pub fn size(&self) -> usize {
        self.world.size()
    }

    /// This rank's rows `[r·n/size, (r+1)·n/size)` of a global batch of `n` rows (pairs,
    /// completions) that every rank drew alike; `n` must split evenly.
    pub fn rows(&self, n: usize) -> Result<std::ops::Range<usize>> {
        let size = self.world.size();
        if !n.is_multiple_of(size) {
            return Err(Error::msg(format!(
                "data parallel: a batch of {n} rows does not split evenly over {size} ranks"
            )));
        }
        Ok(self.slice(n))
    }

    /// This rank's rows of a global batch of `n` rows that splits evenly ([`DataParallel::rows`])
    /// and their share of it, the weight of the rank's loss when the loss is a mean over rows.
    pub fn share(&self, n: usize) -> Result<(std::ops::Range<usize>, f64)> {
        let rows = self.rows(n)?;
        let share = rows.len() as f64 / n as f64;
        Ok((rows, share))
    }

    /// This rank's rows of a global batch of `n` rows that may not split evenly (a minibatch of
    /// an aligner's completions after dynamic sampling): `[r·n/size, (r+1)·n/size)`, possibly
    /// empty. The caller weights each rank's loss by its rows, so uneven shards still sum to
    /// the single-process loss.
    pub fn slice(&self, n: usize) -> std::ops::Range<usize> {
        let (rank, size) = (self.world.rank(), self.world.size());
        rank * n / size..(rank + 1) * n / size
    }

    /// Every rank's `mine` (all of one length), concatenated in rank order: per-row statistics
    /// of the shards (an aligner's per-pair margins), so rank 0 reports the global batch's.
    pub fn gather_rows(&mut self, mine: &[f32]) -> Result<Vec<f32>> {
        let started = Instant::now();
        let mut all = vec![0f32; mine.len() * self.world.size()];
        self.world.all_gather_f32(mine, &mut all)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(all)
    }

    pub fn rank(&self) -> usize {
        self.world.rank()
    }

    /// Refuses to start unless every rank runs the same trainer, config, model and data
    /// (`summary`), naming the first rank that differs.
    pub fn check_same_start(&self, summary: &str) -> Result<()> {
        let all = self.world.all_gather_bytes(summary.as_bytes())?;
        if let Some((rank, other)) = all.iter().enumerate().find(|(_, v)| **v != all[0]) {
            return Err(Error::msg(format!(
                "data parallel: rank {rank}'s run differs from rank 0's (trainer, config, model, \
                 data and runtime must match on every rank). rank 0: {}; rank {rank}: {}",
                String::from_utf8_lossy(&all[0]),
                String::from_utf8_lossy(other)
            )));
        }
        Ok(())
    }

    /// Makes every rank start from rank 0's weights (as PyTorch's DDP does at construction):
    /// one broadcast of all parameters, so a model built differently on one rank cannot drift.
    pub fn sync_params(&mut self, params: &[(String, Var)]) -> Result<()> {
        let started = Instant::now();
        if self.as_tensors(params) {
            let flat = cat_dense(params.iter().map(|(_, v)| (Some(v.as_tensor()), v)))?;
            let from_0 = self.world.broadcast(&flat, 0)?;
            if self.world.rank() != 0 {
                let mut at = 0;
                for (_, var) in params {
                    var.set(&param_at(&from_0, at, var)?)?;
                    at += var.elem_count();
                }
            }
            self.comm_seconds += started.elapsed().as_secs_f64();
            return Ok(());
        }
        let mut flat = Vec::new();
        for (_, var) in params {
            push_dense(&mut flat, Some(var.as_tensor()), var)?;
        }
        let mut bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.world.broadcast_bytes(&mut bytes, 0)?;
        if self.world.rank() != 0 {
            if bytes.len() != flat.len() * 4 {
                return Err(Error::msg(format!(
                    "data parallel: rank 0's model has {} parameter values, this rank's {}",
                    bytes.len() / 4,
                    flat.len()
                )));
            }
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut at = 0;
            for (_, var) in params {
                let n = var.elem_count();
                var.set(&like_param(&values[at..at + n], var)?)?;
                at += n;
            }
        }
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// This rank's rows of the global `batch`, and the weight of its loss in the global loss
    /// ([`Batch::rows`]).
    pub fn shard(&self, batch: Batch) -> Result<(Batch, f64)> {
        let (rank, size) = (self.world.rank(), self.world.size());
        let rows = batch.inputs.dim(0)?;
        if !rows.is_multiple_of(size) {
            return Err(Error::msg(format!(
                "data parallel: a batch of {rows} rows does not split evenly over {size} ranks"
            )));
        }
        batch.rows(rank * rows / size, rows / size)
    }

    /// Sums `grads` and `scalars` (loss, aux loss, tokens) over the ranks. Without ZeRO 2 every
    /// rank ends with every summed gradient (all-reduce in buckets of `bucket_mb`); with it,
    /// with only its owned parameters' (one reduce-scatter), the others dropped.
    pub fn reduce(
        &mut self,
        params: &[(String, Var)],
        grads: &mut [Option<Tensor>],
        scalars: &mut [f64],
    ) -> Result<()> {
        let started = Instant::now();
        if self.zero >= 2 {
            self.reduce_scatter_owned(params, grads)?;
            let mut values: Vec<f32> = scalars.iter().map(|v| *v as f32).collect();
            self.world.all_reduce_f32(&mut values, ReduceOp::Sum)?;
            scalars
                .iter_mut()
                .zip(values)
                .for_each(|(s, v)| *s = v as f64);
        } else {
            self.all_reduce_buckets(params, grads, scalars)?;
        }
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// All-reduce in buckets; a parameter's presence (whether it had a gradient anywhere) and
    /// the scalars ride in the last bucket, so a parameter no rank touched stays without a
    /// gradient, as it would in one process.
    fn all_reduce_buckets(
        &mut self,
        params: &[(String, Var)],
        grads: &mut [Option<Tensor>],
        scalars: &mut [f64],
    ) -> Result<()> {
        let buckets = self.buckets(params);
        if self.as_tensors(params) {
            return self.all_reduce_bucket_tensors(params, grads, scalars, &buckets);
        }
        let last = buckets.len() - 1;
        for (b, members) in buckets.iter().enumerate() {
            let mut flat = Vec::new();
            for &i in members {
                push_dense(&mut flat, grads[i].as_ref(), &params[i].1)?;
            }
            if b == last {
                flat.extend(grads.iter().map(|g| f32::from(u8::from(g.is_some()))));
                flat.extend(scalars.iter().map(|v| *v as f32));
            }
            self.world.all_reduce_f32(&mut flat, ReduceOp::Sum)?;
            let mut at = 0;
            for &i in members {
                let n = params[i].1.elem_count();
                grads[i] = Some(like_param(&flat[at..at + n], &params[i].1)?);
                at += n;
            }
            if b == last {
                for (g, present) in grads.iter_mut().zip(&flat[at..at + params.len()]) {
                    if *present == 0.0 {
                        *g = None;
                    }
                }
                at += params.len();
                scalars
                    .iter_mut()
                    .zip(&flat[at..])
                    .for_each(|(s, v)| *s = *v as f64);
            }
        }
        Ok(())
    }

    /// The parameters of each all-reduce: consecutive parameters up to `bucket_mb`, one bucket
    /// at least (it carries presence flags and scalars).
    fn buckets(&self, params: &[(String, Var)]) -> Vec<Vec<usize>> {
        let mut buckets: Vec<Vec<usize>> = vec![Vec::new()];
        let mut filled = 0;
        for (i, (_, var)) in params.iter().enumerate() {
            let n = var.elem_count();
            if filled > 0 && filled + n > self.bucket_values {
                buckets.push(Vec::new());
                filled = 0;
            }
            buckets.last_mut().expect("one bucket at least").push(i);
            filled += n;
        }
        buckets
    }

    /// [`DataParallel::all_reduce_buckets`] with each bucket one f32 tensor on the parameters'
    /// device; only the last bucket's presence flags and scalars (a few values) cross to and
    /// from the host.
    fn all_reduce_bucket_tensors(
        &mut self,
        params: &[(String, Var)],
        grads: &mut [Option<Tensor>],
        scalars: &mut [f64],
        buckets: &[Vec<usize>],
    ) -> Result<()> {
        let device = params[0].1.device().clone();
        let last = buckets.len() - 1;
        for (b, members) in buckets.iter().enumerate() {
            let mut parts = members
                .iter()
                .map(|&i| dense(grads[i].as_ref(), &params[i].1))
                .collect::<Result<Vec<_>>>()?;
            if b == last {
                let tail: Vec<f32> = grads
                    .iter()
                    .map(|g| f32::from(u8::from(g.is_some())))
                    .chain(scalars.iter().map(|v| *v as f32))
                    .collect();
                let n = tail.len();
                parts.push(Tensor::from_vec(tail, n, &device)?);
            }
            let flat = Tensor::cat(&parts, 0)?;
            drop(parts);
            let summed = self.world.all_reduce(&flat, ReduceOp::Sum)?;
            drop(flat);
            let mut at = 0;
            for &i in members {
                grads[i] = Some(param_at(&summed, at, &params[i].1)?);
                at += params[i].1.elem_count();
            }
            if b == last {
                let tail = summed
                    .narrow(0, at, summed.elem_count() - at)?
                    .to_vec1::<f32>()?;
                for (g, present) in grads.iter_mut().zip(&tail) {
                    if *present == 0.0 {
                        *g = None;
                    }
                }
                scalars
                    .iter_mut()
                    .zip(&tail[params.len()..])
                    .for_each(|(s, v)| *s = *v as f64);
            }
        }
        Ok(())
    }

    /// ZeRO 2: one reduce-scatter over the gradients laid out by owner (each rank's chunk padded
    /// to the longest); each rank keeps its owned parameters' sums, the rest become `None`.
    fn reduce_scatter_owned(
        &mut self,
        params: &[(String, Var)],
        grads: &mut [Option<Tensor>],
    ) -> Result<()> {
        let owners = self.owners(params).to_vec();
        let size = self.world.size();
        let chunks: Vec<Vec<usize>> = (0..size)
            .map(|r| (0..params.len()).filter(|&i| owners[i] == r).collect())
            .collect();
        // Values then one presence flag per owned parameter.
        let chunk_len = |members: &Vec<usize>| {
            members
                .iter()
                .map(|&i| params[i].1.elem_count() + 1)
                .sum::<usize>()
        };
        let longest = chunks.iter().map(chunk_len).max().unwrap_or(0);
        if self.as_tensors(params) {
            return self.reduce_scatter_tensors(params, grads, &chunks, longest);
        }
        let mut flat = Vec::with_capacity(longest * size);
        for members in &chunks {
            let start = flat.len();
            for &i in members {
                push_dense(&mut flat, grads[i].as_ref(), &params[i].1)?;
            }
            flat.extend(
                members
                    .iter()
                    .map(|&i| f32::from(u8::from(grads[i].is_some()))),
            );
            flat.resize(start + longest, 0.0);
        }
        let mut mine = vec![0f32; longest];
        self.world
            .reduce_scatter_f32(&flat, &mut mine, ReduceOp::Sum)?;
        drop(flat);
        let rank = self.world.rank();
        grads.iter_mut().for_each(|g| *g = None);
        let mut at = 0;
        let mut owned = Vec::new();
        for &i in &chunks[rank] {
            let n = params[i].1.elem_count();
            owned.push((i, like_param(&mine[at..at + n], &params[i].1)?));
            at += n;
        }
        for ((i, grad), present) in owned.into_iter().zip(&mine[at..]) {
            if *present != 0.0 {
                grads[i] = Some(grad);
            }
        }
        Ok(())
    }

    /// [`DataParallel::reduce_scatter_owned`] with the gradients one f32 tensor on the
    /// parameters' device; only this rank's presence flags come to the host.
    fn reduce_scatter_tensors(
        &mut self,
        params: &[(String, Var)],
        grads: &mut [Option<Tensor>],
        chunks: &[Vec<usize>],
        longest: usize,
    ) -> Result<()> {
        let device = params[0].1.device().clone();
        let mut parts = Vec::new();
        for members in chunks {
            let mut len = 0;
            for &i in members {
                parts.push(dense(grads[i].as_ref(), &params[i].1)?);
                len += params[i].1.elem_count() + 1;
            }
            let flags: Vec<f32> = members
                .iter()
                .map(|&i| f32::from(u8::from(grads[i].is_some())))
                .collect();
            let n = flags.len();
            parts.push(Tensor::from_vec(flags, n, &device)?);
            if longest > len {
                parts.push(Tensor::zeros(longest - len, DType::F32, &device)?);
            }
        }
        let flat = Tensor::cat(&parts, 0)?;
        drop(parts);
        let mine = self.world.reduce_scatter(&flat, ReduceOp::Sum)?;
        drop(flat);
        let rank = self.world.rank();
        grads.iter_mut().for_each(|g| *g = None);
        let mut at = 0;
        let mut owned = Vec::new();
        for &i in &chunks[rank] {
            owned.push((i, param_at(&mine, at, &params[i].1)?));
            at += params[i].1.elem_count();
        }
        let present = mine.narrow(0, at, chunks[rank].len())?.to_vec1::<f32>()?;
        for ((i, grad), present) in owned.into_iter().zip(&present) {
            if *present != 0.0 {
                grads[i] = Some(grad);
            }
        }
        Ok(())
    }

    /// The global gradient norm: with ZeRO 2 each rank holds only its owned gradients, so the
    /// squared norms are summed over ranks.
    pub fn global_norm(&mut self, grads: &[Option<Tensor>]) -> Result<f64> {
        let local = clip::global_norm(grads.iter().flatten())?;
        if self.zero < 2 {
            return Ok(local);
        }
        let started = Instant::now();
        let mut squared = [(local * local) as f32];
        self.world.all_reduce_f32(&mut squared, ReduceOp::Sum)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok((squared[0] as f64).sqrt())
    }

    /// The optimizer update: everything on every rank without ZeRO; with it, each rank updates
    /// its owned parameters (moments only for those) and the new values are all-gathered.
    pub fn step(
        &mut self,
        optimizer: &mut AdamW,
        params: &[(String, Var)],
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        if self.zero == 0 {
            return optimizer.step(params, grads, lr, grad_scale);
        }
        let owners = self.owners(params).to_vec();
        let rank = self.world.rank();
        let owned: Vec<Option<Tensor>> = grads
            .iter()
            .zip(&owners)
            .map(|(g, o)| if *o == rank { g.clone() } else { None })
            .collect();
        optimizer.step(params, &owned, lr, grad_scale)?;
        let started = Instant::now();
        self.gather_params(params, &owners)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Every rank's owned parameters, all-gathered (chunks padded to the longest) and set.
    fn gather_params(&self, params: &[(String, Var)], owners: &[usize]) -> Result<()> {
        let size = self.world.size();
        let chunks: Vec<Vec<usize>> = (0..size)
            .map(|r| (0..params.len()).filter(|&i| owners[i] == r).collect())
            .collect();
        let longest = chunks
            .iter()
            .map(|m| m.iter().map(|&i| params[i].1.elem_count()).sum::<usize>())
            .max()
            .unwrap_or(0);
        if longest == 0 {
            return Ok(());
        }
        if self.as_tensors(params) {
            return self.gather_param_tensors(params, &chunks, longest);
        }
        let mut mine = Vec::with_capacity(longest);
        for &i in &chunks[self.world.rank()] {
            push_dense(&mut mine, Some(params[i].1.as_tensor()), &params[i].1)?;
        }
        mine.resize(longest, 0.0);
        let mut all = vec![0f32; longest * size];
        self.world.all_gather_f32(&mine, &mut all)?;
        for (r, members) in chunks.iter().enumerate() {
            if r == self.world.rank() {
                continue;
            }
            let mut at = r * longest;
            for &i in members {
                let var = &params[i].1;
                let n = var.elem_count();
                var.set(&like_param(&all[at..at + n], var)?)?;
                at += n;
            }
        }
        Ok(())
    }

    /// [`DataParallel::gather_params`] with the owned values one f32 tensor on the parameters'
    /// device.
    fn gather_param_tensors(
        &self,
        params: &[(String, Var)],
        chunks: &[Vec<usize>],
        longest: usize,
    ) -> Result<()> {
        let rank = self.world.rank();
        let device = params[0].1.device();
        let owned: usize = chunks[rank].iter().map(|&i| params[i].1.elem_count()).sum();
        let mut parts = chunks[rank]
            .iter()
            .map(|&i| dense(Some(params[i].1.as_tensor()), &params[i].1))
            .collect::<Result<Vec<_>>>()?;
        if longest > owned {
            parts.push(Tensor::zeros(longest - owned, DType::F32, device)?);
        }
        let mine = Tensor::cat(&parts, 0)?;
        drop(parts);
        let all = self.world.all_gather(&mine)?;
        for (r, members) in chunks.iter().enumerate() {
            if r == rank {
                continue;
            }
            let mut at = r * longest;
            for &i in members {
                let var = &params[i].1;
                var.set(&param_at(&all, at, var)?)?;
                at += var.elem_count();
            }
        }
        Ok(())
    }

    /// The owning rank of each parameter: largest first, each to the least-loaded rank (ties to
    /// the lower rank), so every rank computes the same partition.
    fn owners(&mut self, params: &[(String, Var)]) -> &[usize] {
        let size = self.world.size();
        self.owners.get_or_insert_with(|| {
            let mut order: Vec<usize> = (0..params.len()).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(params[i].1.elem_count()), i));
            let mut load = vec![0usize; size];
            let mut owners = vec![0; params.len()];
            for i in order {
                let r = (0..size).min_by_key(|&r| (load[r], r)).unwrap_or(0);
                owners[i] = r;
                load[r] += params[i].1.elem_count();
            }
            owners
        })
    }

    /// The parameters whose moments this rank keeps (all of them without ZeRO).
    pub fn owned(&mut self, params: &[(String, Var)]) -> Vec<(String, Var)> {
        if self.zero == 0 {
            return params.to_vec();
        }
        let rank = self.world.rank();
        let owners = self.owners(params).to_vec();
        params
            .iter()
            .zip(owners)
            .filter(|(_, o)| *o == rank)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Every moment for a checkpoint, on rank 0 (the one that writes it): its own without ZeRO
    /// (every rank holds them all); with it, the other ranks' moments gathered to rank 0 alone,
    /// so no other rank ever holds more than its shard. Every rank must call this; the others
    /// get an empty list.
    pub fn moments(
        &mut self,
        optimizer: &AdamW,
        params: &[(String, Var)],
    ) -> Result<Vec<(String, Tensor)>> {
        let mine = optimizer.moments_to_tensors(params)?;
        if self.zero == 0 {
            return Ok(mine);
        }
        let started = Instant::now();
        // Rank 0 keeps its own moments as they are and receives only the others'; the others
        // hold their shard once, as bytes, while sending.
        let (kept, send) = if self.world.rank() == 0 {
            (Some(mine), Vec::new())
        } else {
            (None, encode(&mine)?)
        };
        let all = self.world.gather_bytes(&send, 0)?;
        drop(send);
        self.comm_seconds += started.elapsed().as_secs_f64();
        let Some(mut out) = kept else {
            return Ok(Vec::new());
        };
        for bytes in all.into_iter().skip(1) {
            out.extend(decode(&bytes)?);
        }
        Ok(out)
    }

    /// Bytes of AdamW moments this rank holds (two per owned value), of gradients it keeps at
    /// the update, and the seconds spent communicating since the last call.
    pub fn take_metrics(
        &mut self,
        params: &[(String, Var)],
        grads: &[Option<Tensor>],
    ) -> StepMetrics {
        let moment_values: usize = self
            .owned(params)
            .iter()
            .map(|(_, v)| 2 * v.elem_count())
            .sum();
        let grad_values: usize = grads.iter().flatten().map(|g| g.elem_count()).sum();
        let mut metrics = StepMetrics::new();
        metrics.insert("dp_comm_s".into(), std::mem::take(&mut self.comm_seconds));
        metrics.insert("dp_moment_bytes".into(), (moment_values * 4) as f64);
        metrics.insert("dp_grad_bytes".into(), (grad_values * 4) as f64);
        metrics
    }
}

/// What every rank must agree on before the first step: trainer, config, model (name, config,
/// parameter shapes), data (its identity: a [`crate::data_identity::DataIdentity`], or an aligner's name and size of
/// its examples) and runtime fingerprint, as one JSON line.
pub fn start_summary(
    trainer: &str,
    config: &Value,
    model: &dyn Model,
    data: &impl llmlab_plugin_api::serde::Serialize,
) -> Result<String> {
    let shapes: Vec<(String, Vec<usize>)> = model
        .parameters()
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    Ok(json!({
        "trainer": trainer,
        "config": config,
        "model": model.name(),
        "model_config": model.config(),
        "parameters": shapes,
        "data": data,
        "runtime": llmlab_plugin_api::FINGERPRINT,
    })
    .to_string())
}

/// The checks of the keys `data_parallel`, `zero` and `bucket_mb`, wherever a trainer or
/// aligner takes them.
pub fn check_keys(
    data_parallel: bool,
    zero: u8,
    bucket_mb: f64,
) -> std::result::Result<(), String> {
    if zero > 2 {
        return Err(format!("`zero` must be 0, 1 or 2, got {zero}"));
    }
    if zero > 0 && !data_parallel {
        return Err("`zero` shards over data-parallel ranks: set `data_parallel: true`".into());
    }
    if !(bucket_mb.is_finite() && bucket_mb > 0.0) {
        return Err(format!(
            "`bucket_mb` must be a positive number, got {bucket_mb}"
        ));
    }
    Ok(())
}

/// Whether this process writes metrics and checkpoints: rank 0, or any process not training
/// data-parallel.
pub fn writes(dp: Option<&DataParallel>) -> bool {
    dp.is_none_or(|dp| dp.rank() == 0)
}

fn push_dense(flat: &mut Vec<f32>, grad: Option<&Tensor>, var: &Var) -> Result<()> {
    match grad {
        Some(g) => flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => flat.resize(flat.len() + var.elem_count(), 0.0),
    }
    Ok(())
}

/// A gradient (zeros where there is none) or value, flattened to f32 on the parameter's device.
fn dense(tensor: Option<&Tensor>, var: &Var) -> Result<Tensor> {
    Ok(match tensor {
        Some(t) => t.flatten_all()?.to_dtype(DType::F32)?,
        None => Tensor::zeros(var.elem_count(), DType::F32, var.device())?,
    })
}

/// [`dense`] of each, concatenated (one tensor for one collective).
fn cat_dense<'a>(items: impl Iterator<Item = (Option<&'a Tensor>, &'a Var)>) -> Result<Tensor> {
    let parts = items
        .map(|(t, var)| dense(t, var))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// The values of `var` at offset `at` of a flat f32 tensor, in `var`'s shape and dtype.
fn param_at(flat: &Tensor, at: usize, var: &Var) -> Result<Tensor> {
    Ok(flat
        .narrow(0, at, var.elem_count())?
        .reshape(var.shape())?
        .to_dtype(var.dtype())?)
}

fn like_param(values: &[f32], var: &Var) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, var.shape(), var.device())?.to_dtype(var.dtype())?)
}

/// Moments as bytes for the all-gather: per tensor, name length, name, rank, dims, f32 values.
fn encode(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (name, t) in tensors {
        out.extend((name.len() as u64).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend((t.dims().len() as u64).to_le_bytes());
        for d in t.dims() {
            out.extend((*d as u64).to_le_bytes());
        }
        for v in t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            out.extend(v.to_le_bytes());
        }
    }
    Ok(out)
}

fn decode(mut bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let bad = || Error::msg("data parallel: a rank sent malformed optimizer moments");
    let mut take = |n: usize| -> Result<&[u8]> {
        if bytes.len() < n {
            return Err(bad());
        }
        let (head, rest) = bytes.split_at(n);
        bytes = rest;
        Ok(head)
    };
    let mut out = Vec::new();
    loop {
        let Ok(len) = take(8) else { break };
        let len = u64::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
        let name = String::from_utf8(take(len)?.to_vec()).map_err(|_| bad())?;
        let rank = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?) as usize;
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            dims.push(u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?) as usize);
        }
        let n: usize = dims.iter().product();
        let values: Vec<f32> = take(n * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push((
            name,
            Tensor::from_vec(values, dims, &llmlab_plugin_api::candle::Device::Cpu)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adamw::AdamWSettings;
    use llmlab_plugin_api::candle::Device;
    use std::collections::BTreeMap;
    use std::sync::{Barrier, Mutex};

    /// A world of threads in one process: every collective is an exchange of byte strings.
    struct Threads {
        rank: usize,
        size: usize,
        barrier: Arc<Barrier>,
        slots: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Threads {
        fn exchange(&self, mine: &[u8]) -> Vec<Vec<u8>> {
            self.barrier.wait();
            self.slots.lock().unwrap()[self.rank] = mine.to_vec();
            self.barrier.wait();
            let all = self.slots.lock().unwrap().clone();
            self.barrier.wait();
            all
        }
        fn floats(bytes: &[u8]) -> Vec<f32> {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        fn bytes(values: &[f32]) -> Vec<u8> {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        fn sum(&self, values: &[f32]) -> Vec<f32> {
            let all = self.exchange(&Self::bytes(values));
            let mut out = vec![0f32; values.len()];
            for bytes in all {
                out.iter_mut()
                    .zip(Self::floats(&bytes))
                    .for_each(|(o, v)| *o += v);
            }
            out
        }
    }

    impl Collective for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn backend(&self) -> &str {
            "threads"
        }
        fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
            let sum = self.sum(buf);
            let k = if op == ReduceOp::Mean {
                1.0 / self.size as f32
            } else {
                1.0
            };
            buf.iter_mut().zip(sum).for_each(|(b, s)| *b = s * k);
            Ok(())
        }
        fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
            *buf = self.exchange(buf).swap_remove(root);
            Ok(())
        }
        fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
            let all: Vec<f32> = self
                .exchange(&Self::bytes(send))
                .iter()
                .flat_map(|b| Self::floats(b))
                .collect();
            recv.copy_from_slice(&all);
            Ok(())
        }
        fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>> {
            Ok(self.exchange(send))
        }
        fn gather_bytes(&self, send: &[u8], root: usize) -> Result<Vec<Vec<u8>>> {
            let all = self.exchange(send);
            Ok(if self.rank == root { all } else { Vec::new() })
        }
        fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], _op: ReduceOp) -> Result<()> {
            let sum = self.sum(send);
            recv.copy_from_slice(&sum[self.rank * recv.len()..(self.rank + 1) * recv.len()]);
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            self.barrier.wait();
            Ok(())
        }
    }

    const SETTINGS: AdamWSettings = AdamWSettings {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };

    fn params() -> Result<Vec<(String, Var)>> {
        let dev = Device::Cpu;
        let shapes: [(&str, &[usize]); 4] =
            [("a", &[3, 4]), ("b", &[4]), ("c", &[5, 2]), ("d", &[2])];
        shapes
            .iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n).map(|j| ((i * 7 + j) as f32 * 0.37).sin()).collect();
                Ok((
                    name.to_string(),
                    Var::from_tensor(&Tensor::from_vec(values, *shape, &dev)?)?,
                ))
            })
            .collect()
    }

    /// Rank r's gradient of parameter i at step s; parameter `d` has none anywhere, `c` only on
    /// rank 1 (an expert only one rank routed to).
    fn grad(rank: usize, i: usize, step: usize, var: &Var) -> Result<Option<Tensor>> {
        if i == 3 || (i == 2 && rank == 0) {
            return Ok(None);
        }
        let n = var.elem_count();
        let values: Vec<f32> = (0..n)
            .map(|j| ((rank * 31 + i * 5 + j + step * 11) as f32 * 0.53).cos())
            .collect();
        Ok(Some(Tensor::from_vec(values, var.shape(), &Device::Cpu)?))
    }

    fn values(params: &[(String, Var)]) -> Result<Vec<Vec<f32>>> {
        params
            .iter()
            .map(|(_, v)| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
            .collect()
    }

    /// What one process does with the ranks' gradients summed: the reference.
    fn single_process(steps: usize) -> Result<Vec<Vec<f32>>> {
        let params = params()?;
        let mut opt = AdamW::new(SETTINGS);
        for step in 0..steps {
            let mut grads = Vec::new();
            for (i, (_, var)) in params.iter().enumerate() {
                let parts: Vec<Tensor> = (0..2)
                    .filter_map(|r| grad(r, i, step, var).transpose())
                    .collect::<Result<_>>()?;
                grads.push(match parts.len() {
                    0 => None,
                    1 => Some(parts[0].clone()),
                    _ => Some((&parts[0] + &parts[1])?),
                });
            }
            let norm = clip::global_norm(grads.iter().flatten())?;
            opt.step(&params, &grads, 1e-2, clip::clip_scale(norm, 1.0))?;
        }
        values(&params)
    }

    /// One rank's outcome: its parameters, the moment bytes it held, the checkpoint moments it
    /// received (by name).
    type RankOutcome = (Vec<Vec<f32>>, f64, BTreeMap<String, Vec<f32>>);

    fn two_ranks(zero: u8, steps: usize) -> Result<Vec<RankOutcome>> {
        two_ranks_as(zero, steps, false)
    }

    /// `tensors`: through the device path (buckets as tensors), here on CPU tensors.
    fn two_ranks_as(zero: u8, steps: usize, tensors: bool) -> Result<Vec<RankOutcome>> {
        let barrier = Arc::new(Barrier::new(2));
        let slots = Arc::new(Mutex::new(vec![Vec::new(); 2]));
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let world = Arc::new(Threads {
                    rank,
                    size: 2,
                    barrier: barrier.clone(),
                    slots: slots.clone(),
                });
                std::thread::spawn(move || -> Result<RankOutcome> {
                    let config = TrainConfig {
                        data_parallel: true,
                        zero,
                        bucket_mb: 16.0 * 4.0 / 1048576.0,
                        ..TrainConfig::default()
                    };
                    let mut dp = DataParallel::in_world("lm", &config, world)?;
                    dp.tensors_on_cpu = tensors;
                    let params = params()?;
                    // Rank 1 starts elsewhere: the start broadcast must bring rank 0's values.
                    if rank == 1 {
                        for (_, var) in &params {
                            var.set(&(var.as_tensor() * 3.0)?)?;
                        }
                    }
                    dp.sync_params(&params)?;
                    let mut opt = AdamW::new(SETTINGS);
                    let mut moment_bytes = 0.0;
                    for step in 0..steps {
                        let mut grads: Vec<Option<Tensor>> = params
                            .iter()
                            .enumerate()
                            .map(|(i, (_, v))| grad(rank, i, step, v))
                            .collect::<Result<_>>()?;
                        let mut scalars = [rank as f64 + 1.0];
                        dp.reduce(&params, &mut grads, &mut scalars)?;
                        assert_eq!(scalars[0], 3.0);
                        let norm = dp.global_norm(&grads)?;
                        dp.step(&mut opt, &params, &grads, 1e-2, clip::clip_scale(norm, 1.0))?;
                        moment_bytes = dp.take_metrics(&params, &grads)["dp_moment_bytes"];
                    }
                    // A checkpoint's moments are the whole set whatever the stage, on rank 0;
                    // under ZeRO the other ranks never hold more than their shard.
                    let moments = dp.moments(&opt, &params)?;
                    let expected = match (rank, zero) {
                        (0, _) | (_, 0) => 2 * 3,
                        _ => 0,
                    };
                    assert_eq!(
                        moments.len(),
                        expected,
                        "rank {rank}, zero {zero}: m and v of a, b, c (d never had a gradient)"
                    );
                    let moments = moments
                        .into_iter()
                        .map(|(n, t)| Ok((n, t.flatten_all()?.to_vec1::<f32>()?)))
                        .collect::<Result<_>>()?;
                    Ok((values(&params)?, moment_bytes, moments))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    }

    #[test]
    fn two_ranks_step_as_one_process_with_summed_gradients_at_every_zero_stage() -> Result<()> {
        let reference = single_process(3)?;
        let mut moment_bytes = Vec::new();
        let mut checkpoint_moments = Vec::new();
        for zero in [0, 1, 2] {
            let ranks = two_ranks(zero, 3)?;
            checkpoint_moments.push(ranks[0].2.clone());
            for (values, bytes, _) in &ranks {
                for (a, b) in values.iter().flatten().zip(reference.iter().flatten()) {
                    assert!((a - b).abs() < 1e-6, "zero {zero}: {a} vs {b}");
                }
                moment_bytes.push(*bytes);
            }
            // Parameter d never had a gradient: untouched, as in one process.
            assert_eq!(ranks[0].0[3], values(&params()?)?[3]);
        }
        // Without ZeRO each rank holds every moment (2 × 28 values); with it, its own tensors'.
        assert_eq!(moment_bytes[0], (2 * 28 * 4) as f64);
        assert!(
            moment_bytes[2] + moment_bytes[3] == moment_bytes[0],
            "{moment_bytes:?}"
        );
        assert!(moment_bytes[2] < moment_bytes[0]);
        // What rank 0 gathers for the checkpoint under ZeRO is what it holds without.
        for (zero, gathered) in checkpoint_moments.iter().enumerate().skip(1) {
            assert_eq!(
                gathered.keys().collect::<Vec<_>>(),
                checkpoint_moments[0].keys().collect::<Vec<_>>(),
                "zero {zero}"
            );
            for (name, values) in gathered {
                for (a, b) in values.iter().zip(&checkpoint_moments[0][name]) {
                    assert!((a - b).abs() < 1e-6, "zero {zero}, {name}: {a} vs {b}");
                }
            }
        }
        Ok(())
    }

    /// The device path (gradients, parameters and their buckets as tensors, what a GPU run
    /// takes) is the host path to the bit: the same values are summed in the same order. On
    /// CPU tensors it runs through the contract's default tensor forms, which are the f32 ones.
    #[test]
    fn buckets_as_tensors_step_exactly_as_host_buffers_at_every_zero_stage() -> Result<()> {
        for zero in [0, 1, 2] {
            let host = two_ranks_as(zero, 3, false)?;
            let tensors = two_ranks_as(zero, 3, true)?;
            for (rank, (h, t)) in host.iter().zip(&tensors).enumerate() {
                assert_eq!(h.0, t.0, "zero {zero}, rank {rank}: parameters");
                assert_eq!(h.1, t.1, "zero {zero}, rank {rank}: moment bytes");
                assert_eq!(h.2, t.2, "zero {zero}, rank {rank}: checkpoint moments");
            }
        }
        Ok(())
    }

    /// Packing and unpacking alone: a bucket of gradients with a missing one, the presence
    /// flags and scalars, through a world of one (the identity), comes back as it went in, in
    /// each parameter's shape, and a missing gradient stays missing.
    #[test]
    fn a_bucket_of_tensors_unpacks_into_each_gradient_in_its_shape() -> Result<()> {
        let params = params()?;
        let world = Arc::new(Threads {
            rank: 0,
            size: 1,
            barrier: Arc::new(Barrier::new(1)),
            slots: Arc::new(Mutex::new(vec![Vec::new()])),
        });
        for bucket_mb in [1.0, 5.0 * 4.0 / 1048576.0] {
            let mut dp = DataParallel::with_keys(0, bucket_mb, world.clone());
            dp.tensors_on_cpu = true;
            let mut grads: Vec<Option<Tensor>> = params
                .iter()
                .enumerate()
                .map(|(i, (_, v))| grad(1, i, 0, v))
                .collect::<Result<_>>()?;
            let before: Vec<Option<Vec<f32>>> = grads
                .iter()
                .map(|g| {
                    g.as_ref()
                        .map(|g| Ok(g.flatten_all()?.to_vec1::<f32>()?))
                        .transpose()
                })
                .collect::<Result<_>>()?;
            let mut scalars = [2.5, 7.0];
            dp.reduce(&params, &mut grads, &mut scalars)?;
            assert_eq!(scalars, [2.5, 7.0]);
            for ((g, b), (name, var)) in grads.iter().zip(&before).zip(&params) {
                match (g, b) {
                    (Some(g), Some(b)) => {
                        assert_eq!(g.dims(), var.dims(), "{name}");
                        assert_eq!(&g.flatten_all()?.to_vec1::<f32>()?, b, "{name}");
                    }
                    (None, None) => {}
                    _ => panic!("{name}: presence changed"),
                }
            }
        }
        Ok(())
    }

    #[test]
    fn slices_cover_a_batch_once_even_when_it_does_not_split() {
        for size in 1..=4 {
            for n in 0..10 {
                let mut covered = Vec::new();
                for rank in 0..size {
                    let world = Arc::new(Threads {
                        rank,
                        size,
                        barrier: Arc::new(Barrier::new(1)),
                        slots: Arc::new(Mutex::new(Vec::new())),
                    });
                    let dp = DataParallel::with_keys(0, 1.0, world);
                    let slice = dp.slice(n);
                    assert!(slice.len().abs_diff(n / size) <= 1, "{n} over {size}");
                    match dp.rows(n) {
                        Ok(rows) => assert_eq!(rows, slice),
                        Err(e) => {
                            assert!(!n.is_multiple_of(size));
                            assert!(e.to_string().contains("does not split evenly"), "{e}");
                        }
                    }
                    covered.extend(slice);
                }
                assert_eq!(covered, (0..n).collect::<Vec<_>>(), "{n} over {size}");
            }
        }
    }

    #[test]
    fn moments_survive_the_byte_encoding() -> Result<()> {
        let t = Tensor::new(&[[1f32, -2.5], [3., 4e-9]], &Device::Cpu)?;
        let back = decode(&encode(&[("w.m".into(), t.clone())])?)?;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, "w.m");
        assert_eq!(back[0].1.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        assert!(decode(&[1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        Ok(())
    }
}
