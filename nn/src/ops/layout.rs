//! Reading a candle CPU tensor of any layout as one contiguous row-major slice: borrowed when it
//! already is contiguous, gathered through its strides (transposes, narrows, broadcasts with
//! stride 0) otherwise. Also the work split the kernels share.

use std::borrow::Cow;

use crate::candle::backend::BackendStorage;
use crate::candle::{self, CpuStorage, Layout};

/// The elements of `layout` over `storage` in row-major order.
pub fn f32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle::Result<Cow<'a, [f32]>> {
    let CpuStorage::F32(data) = storage else {
        candle::bail!(
            "{op}: the fused kernel takes f32, got {:?}",
            storage.dtype()
        )
    };
    Ok(gather(data, layout))
}

/// Like [`f32_data`] for the `u32` targets of a loss.
pub fn u32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle::Result<Cow<'a, [u32]>> {
    let CpuStorage::U32(data) = storage else {
        candle::bail!("{op}: targets must be u32, got {:?}", storage.dtype())
    };
    Ok(gather(data, layout))
}

fn gather<'a, T: Copy>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    if let Some((start, end)) = layout.contiguous_offsets() {
        return Cow::Borrowed(&data[start..end]);
    }
    let dims = layout.dims();
    let stride = layout.stride();
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Cow::Owned(out);
    }
    let rank = dims.len();
    // Odometer over all but the last dim; the last dim is copied as a strided run.
    let (last, last_stride) = (dims[rank - 1], stride[rank - 1]);
    let mut index = vec![0usize; rank.saturating_sub(1)];
    loop {
        let base =
            layout.start_offset() + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        if last_stride == 1 {
            out.extend_from_slice(&data[base..base + last]);
        } else {
            out.extend((0..last).map(|j| data[base + j * last_stride]));
        }
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return Cow::Owned(out);
            }
            d -= 1;
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// Rows per parallel task for `rows` rows of `row_len` elements: tasks of at least ~16k
/// elements (below that rayon's hand-off costs more than the work), at most 8 per thread.
pub fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let threads = crate::rayon::current_num_threads().max(1);
    let by_size = (16_384 / row_len.max(1)).max(1);
    let by_balance = rows.div_ceil(8 * threads).max(1);
    by_size.max(by_balance).min(rows.max(1))
}

/// `last` dim and the number of rows before it, for kernels over the last dimension.
pub fn rows_and_len(layout: &Layout) -> (usize, usize) {
    let dims = layout.dims();
    let len = dims.last().copied().unwrap_or(1);
    let rows = layout.shape().elem_count().checked_div(len).unwrap_or(0);
    (rows, len)
}
