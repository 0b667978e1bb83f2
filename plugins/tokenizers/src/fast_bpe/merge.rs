//! Applying BPE merges to one pre-token: repeatedly merge the adjacent pair of lowest merge rank,
//! leftmost first, exactly the order of `tokenizers`' `Word::merge_all` (a heap on (rank,
//! position)). Short pieces use tiktoken's scan over a rank array; long ones a heap, so a
//! 100 KB run of one character stays linearithmic.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::{pair_key, FxMap};

/// pair key → (rank, merged id).
pub type Merges = FxMap<u64, (u32, u32)>;

/// Pieces longer than this (in symbols) use the heap.
const SCAN_MAX: usize = 96;
const NONE: u32 = u32::MAX;

#[inline(always)]
fn rank_of(merges: &Merges, a: u32, b: u32) -> (u32, u32) {
    merges.get(&pair_key(a, b)).copied().unwrap_or((NONE, 0))
}

/// Merges `symbols` (initial token ids) in place.
pub fn merge(merges: &Merges, symbols: &mut Vec<u32>) {
    if symbols.len() < 2 {
        return;
    }
    if symbols.len() <= SCAN_MAX {
        merge_scan(merges, symbols)
    } else {
        merge_heap(merges, symbols)
    }
}

fn merge_scan(merges: &Merges, symbols: &mut Vec<u32>) {
    // ranks[i]: (rank, new id) of the pair (symbols[i], symbols[i + 1]).
    let mut ranks: Vec<(u32, u32)> = symbols
        .windows(2)
        .map(|w| rank_of(merges, w[0], w[1]))
        .collect();
    loop {
        let mut best = NONE;
        let mut at = 0;
        for (i, &(r, _)) in ranks.iter().enumerate() {
            if r < best {
                best = r;
                at = i;
            }
        }
        if best == NONE {
            break;
        }
        symbols[at] = ranks[at].1;
        symbols.remove(at + 1);
        ranks.remove(at);
        if at + 1 < symbols.len() {
            ranks[at] = rank_of(merges, symbols[at], symbols[at + 1]);
        }
        if at > 0 {
            ranks[at - 1] = rank_of(merges, symbols[at - 1], symbols[at]);
        }
    }
}

fn merge_heap(merges: &Merges, symbols: &mut Vec<u32>) {
    let n = symbols.len();
    // A doubly linked list over positions; removed symbols get `alive = false`.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; n];
    let mut heap: BinaryHeap<Reverse<(u32, usize, u32)>> = BinaryHeap::with_capacity(n);
    for i in 0..n - 1 {
        let (r, id) = rank_of(merges, symbols[i], symbols[i + 1]);
        if r != NONE {
            heap.push(Reverse((r, i, id)));
        }
    }
    while let Some(Reverse((rank, pos, new_id))) = heap.pop() {
        if !alive[pos] || next[pos] >= n {
            continue;
        }
        let right = next[pos];
        // Stale entry: the pair at `pos` is no longer the one this rank was for.
        if rank_of(merges, symbols[pos], symbols[right]) != (rank, new_id) {
            continue;
        }
        symbols[pos] = new_id;
        alive[right] = false;
        next[pos] = next[right];
        if next[right] < n {
            prev[next[right]] = pos;
        }
        if prev[pos] < n {
            let p = prev[pos];
            let (r, id) = rank_of(merges, symbols[p], symbols[pos]);
            if r != NONE {
                heap.push(Reverse((r, p, id)));
            }
        }
        if next[pos] < n {
            let (r, id) = rank_of(merges, symbols[pos], symbols[next[pos]]);
            if r != NONE {
                heap.push(Reverse((r, pos, id)));
            }
        }
    }
    let mut w = 0;
    for i in 0..n {
        if alive[i] {
            symbols[w] = symbols[i];
            w += 1;
        }
    }
    symbols.truncate(w);
}
