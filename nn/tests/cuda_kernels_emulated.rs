//! Every CUDA kernel of the fused ops (`plugin-api/cuda/*.cu`), run on the CPU: the kernel sources are
//! compiled with the host C++ compiler and `plugin-api/cuda/emulation.h` (threads, barriers, shared
//! memory, warp shuffles) and launched through the same host code the CUDA build uses
//! ([`llmlab_nn::ops::gpu::launches`]: grids, blocks, scratch buffers, argument order). Results
//! are compared, forward and backward, with candle's autograd over the composed reference ops,
//! for f32, bf16 and f16 (bf16/f16 inputs are the reference's inputs rounded; arithmetic is f32).
//!
//! Without a C++20 compiler (`$CXX`, else `c++`) the tests say so and pass; CI has one.

use std::ffi::c_void;
use std::path::Path;
use std::sync::OnceLock;

use llmlab_nn::ops::attention::{causal_attention_reference, Dims};
use llmlab_nn::ops::gpu::launches::{self, AdamWStep};
use llmlab_nn::ops::gpu::{Arg, ElemType, Launcher};
use llmlab_nn::ops::rope::RopeLayout;
use llmlab_nn::ops::{layer_norm::layer_norm_reference, rms_norm::rms_norm_reference};
use llmlab_nn::ops::{rope::rope_reference, softmax::softmax_reference, token_nll_reference};
use llmlab_plugin_api::candle::{self, DType, Device, Tensor, Var};

type Entry = unsafe extern "C" fn(*const u32, *const u32, *mut *mut c_void);

/// The kernels compiled for the CPU, loaded.
struct Emulator {
    lib: libloading::Library,
    _dir: tempfile::TempDir,
}

fn emulator() -> Option<&'static Emulator> {
    static EMULATOR: OnceLock<Option<Emulator>> = OnceLock::new();
    EMULATOR
        .get_or_init(|| {
            let cuda = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api/cuda");
            let dir = tempfile::tempdir().expect("temp dir");
            let lib = dir.path().join("libllmlab_ops_emulated.so");
            let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
            let out = std::process::Command::new(&cxx)
                .args([
                    "-std=c++20",
                    "-O1",
                    "-shared",
                    "-fPIC",
                    "-pthread",
                    "-x",
                    "c++",
                    "-include",
                ])
                .arg(cuda.join("emulation.h"))
                .arg(cuda.join("ops.cu"))
                .arg("-o")
                .arg(&lib)
                .output();
            match out {
                Err(e) => {
                    eprintln!("skipped: no C++ compiler `{cxx}` to emulate the CUDA kernels ({e})");
                    None
                }
                Ok(o) if !o.status.success() => panic!(
                    "the CUDA kernels do not compile for the emulator:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Ok(_) => {
                    // SAFETY: a library just built from this crate's kernel sources.
                    let lib = unsafe { libloading::Library::new(&lib) }
                        .expect("load the emulated kernels");
                    Some(Emulator { lib, _dir: dir })
                }
            }
        })
        .as_ref()
}

impl Launcher for Emulator {
    type Scratch = Vec<u64>;

    fn scratch(&self, bytes: usize) -> candle::Result<(Vec<u64>, u64)> {
        let buf = vec![0u64; bytes.div_ceil(8).max(1)];
        let addr = buf.as_ptr() as u64;
        Ok((buf, addr))
    }

    fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[Arg],
    ) -> candle::Result<()> {
        // Each value in its own 8-byte slot; the kernel reads its declared width (little-endian).
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(v) => v as u32 as u64,
                Arg::I64(v) => v as u64,
                Arg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut pointers: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let name = format!("emu_{kernel}");
        // SAFETY: every exported kernel has this entry signature (emulation.h).
        let entry = unsafe { self.lib.get::<Entry>(name.as_bytes()) }
            .map_err(|e| candle::Error::Msg(format!("no emulated kernel {name}: {e}")))?;
        // SAFETY: the argument list is the one the CUDA build passes to the same kernel.
        unsafe { entry(grid.as_ptr(), block.as_ptr(), pointers.as_mut_ptr()) };
        Ok(())
    }
}

/// A host buffer holding elements of one kernel type.
struct Buf {
    ty: ElemType,
    bytes: Vec<u8>,
}

fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// f32 → f16 bits, round to nearest even (normal numbers and zero: the tests' range).
fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let u = x.to_bits();
    let sign = ((u >> 16) & 0x8000) as u16;
    let exp = ((u >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "{x} is outside f16's normal range");
    let mant = u & 0x7f_ffff;
    let mut bits = ((exp as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && bits & 1 == 1) {
        bits += 1;
    }
    sign | bits as u16
}

impl Buf {
    fn new(ty: ElemType, values: &[f32]) -> Self {
        let bytes = match ty {
            ElemType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ElemType::Bf16 => values
                .iter()
                .flat_map(|&v| bf16_bits(v).to_le_bytes())
                .collect(),
            ElemType::F16 => values
                .iter()
                .flat_map(|&v| f16_bits(v).to_le_bytes())
                .collect(),
        };
        Buf { ty, bytes }
    }

    fn zeros(ty: ElemType, n: usize) -> Self {
        Buf {
            ty,
            bytes: vec![0; n * ty.size()],
        }
    }

    /// NaN everywhere: a buffer the kernel must overwrite completely.
    fn nans(ty: ElemType, n: usize) -> Self {
        let one: &[u8] = match ty {
            ElemType::F32 => &[0x00, 0x00, 0xc0, 0x7f],
            ElemType::Bf16 => &[0xc0, 0x7f],
            ElemType::F16 => &[0x00, 0x7e],
        };
        Buf {
            ty,
            bytes: one.repeat(n),
        }
    }

    fn u32s(values: &[u32]) -> Self {
        Buf {
            ty: ElemType::F32,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn ptr(&mut self) -> u64 {
        self.bytes.as_mut_ptr() as u64
    }

    fn values(&self) -> Vec<f32> {
        let dtype = match self.ty {
            ElemType::F32 => DType::F32,
            ElemType::Bf16 => DType::BF16,
            ElemType::F16 => DType::F16,
        };
        let n = self.bytes.len() / self.ty.size();
        Tensor::from_raw_buffer(&self.bytes, dtype, &[n], &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1())
            .expect("decode")
    }
}

const TYPES: [ElemType; 3] = [ElemType::F32, ElemType::Bf16, ElemType::F16];

/// Deterministic values in about [-scale, scale], rounded to `ty` (so the reference sees
/// exactly what the kernel reads).
fn values(n: usize, seed: u64, scale: f32, ty: ElemType) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let raw: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale;
            if v.abs() < 1e-3 {
                1e-3
            } else {
                v
            }
        })
        .collect();
    Buf::new(ty, &raw).values()
}

fn tolerance(ty: ElemType) -> f32 {
    match ty {
        ElemType::F32 => 2e-5,
        ElemType::Bf16 => 1.6e-2,
        ElemType::F16 => 2.5e-3,
    }
}

/// `got` within `tol · max(1, |expected|)` of `expected`, element by element.
fn assert_close(what: &str, ty: ElemType, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let tol = tolerance(ty);
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() <= tol * e.abs().max(1.0),
            "{what} ({ty:?}) element {i}: kernel {g}, reference {e}"
        );
    }
}

fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The reference's output and the gradients of Σ out ⊙ dy with respect to `inputs`.
fn reference_grads(
    inputs: &[(&[f32], &[usize])],
    dy: &[f32],
    f: impl Fn(&[Tensor]) -> candle::Result<Tensor>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|(v, s)| Var::from_tensor(&tensor(v, s)).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let loss = (&out * tensor(dy, out.dims())).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| flat(grads.get(v.as_tensor()).expect("a gradient")))
        .collect();
    (flat(&out), gs)
}

#[test]
fn layer_norm_and_rms_norm_forward_and_backward_match_autograd() {
    let Some(emu) = emulator() else { return };
    // d = 70: a partial warp; d = 1100: more columns than threads (each thread loops).
    for (rows, d) in [(5, 70), (3, 1100), (130, 40)] {
        for ty in TYPES {
            for (rms, bias) in [(false, true), (false, false), (true, false)] {
                let x = values(rows * d, 1, 2.0, ty);
                let w = values(d, 2, 1.5, ty);
                let b = values(d, 3, 0.5, ty);
                let dy = values(rows * d, 4, 1.0, ty);
                let (shape, wshape) = ([rows, d], [d]);
                let mut inputs: Vec<(&[f32], &[usize])> = vec![(&x, &shape), (&w, &wshape)];
                if bias {
                    inputs.push((&b, &wshape));
                }
                let (y_ref, g_ref) = reference_grads(&inputs, &dy, |t| {
                    if rms {
                        rms_norm_reference(&t[0], &t[1], 1e-5)
                    } else {
                        layer_norm_reference(&t[0], &t[1], t.get(2), 1e-5)
                    }
                });
                let what = format!("norm rms={rms} bias={bias} {rows}x{d}");
                let (mut bx, mut bw, mut bb) =
                    (Buf::new(ty, &x), Buf::new(ty, &w), Buf::new(ty, &b));
                let mut by = Buf::zeros(ty, rows * d);
                let b_ptr = bias.then(|| bb.ptr());
                launches::norm_forward(
                    emu,
                    ty,
                    [bx.ptr(), bw.ptr(), by.ptr()],
                    b_ptr,
                    rows,
                    d,
                    1e-5,
                    rms,
                )
                .unwrap();
                assert_close(&format!("{what} forward"), ty, &by.values(), &y_ref);
                let mut bdy = Buf::new(ty, &dy);
                let (mut dx, mut dw, mut db) = (
                    Buf::zeros(ty, rows * d),
                    Buf::zeros(ty, d),
                    Buf::zeros(ty, d),
                );
                let db_ptr = bias.then(|| db.ptr());
                let ptrs = [bx.ptr(), bw.ptr(), bdy.ptr(), dx.ptr(), dw.ptr()];
                launches::norm_backward(emu, ty, ptrs, db_ptr, rows, d, 1e-5, rms).unwrap();
                assert_close(&format!("{what} dx"), ty, &dx.values(), &g_ref[0]);
                // Sums over rows: the rounding of each bf16 term adds up, so relative to the sum's size.
                let loose = |g: &[f32], e: &[f32], name: &str| {
                    let scale = (rows as f32).sqrt();
                    let tol = tolerance(ty) * scale;
                    for (i, (g, e)) in g.iter().zip(e).enumerate() {
                        assert!(
                            (g - e).abs() <= tol * e.abs().max(1.0),
                            "{what} {name} ({ty:?}) {i}: {g} vs {e}"
                        );
                    }
                };
                loose(&dw.values(), &g_ref[1], "dw");
                if bias {
                    loose(&db.values(), &g_ref[2], "db");
                }
            }
        }
    }
}

#[test]
fn softmax_forward_and_backward_match_autograd() {
    let Some(emu) = emulator() else { return };
    for (rows, d) in [(4, 33), (3, 2000)] {
        for ty in TYPES {
            let x = values(rows * d, 5, 4.0, ty);
            let dy = values(rows * d, 6, 1.0, ty);
            let (y_ref, g_ref) =
                reference_grads(&[(&x, &[rows, d])], &dy, |t| softmax_reference(&t[0]));
            let (mut bx, mut by) = (Buf::new(ty, &x), Buf::zeros(ty, rows * d));
            launches::softmax_forward(emu, ty, [bx.ptr(), by.ptr()], rows, d).unwrap();
            let y = by.values();
            assert_close("softmax forward", ty, &y, &y_ref);
            // The backward reads the kernel's own y, as the op does.
            let (mut bdy, mut dx) = (Buf::new(ty, &dy), Buf::zeros(ty, rows * d));
            launches::softmax_backward(emu, ty, [by.ptr(), bdy.ptr(), dx.ptr()], rows, d).unwrap();
            assert_close("softmax backward", ty, &dx.values(), &g_ref[0]);
        }
    }
}

#[test]
fn gelu_and_swiglu_forward_and_backward_match_autograd() {
    let Some(emu) = emulator() else { return };
    let n = 3000;
    for ty in TYPES {
        let x = values(n, 7, 5.0, ty);
        let u = values(n, 8, 2.0, ty);
        let dy = values(n, 9, 1.0, ty);
        let (y_ref, g_ref) = reference_grads(&[(&x, &[n])], &dy, |t| t[0].gelu());
        let (mut bx, mut by, mut bdy, mut dx) = (
            Buf::new(ty, &x),
            Buf::zeros(ty, n),
            Buf::new(ty, &dy),
            Buf::zeros(ty, n),
        );
        launches::gelu_forward(emu, ty, [bx.ptr(), by.ptr()], n).unwrap();
        assert_close("gelu forward", ty, &by.values(), &y_ref);
        launches::gelu_backward(emu, ty, [bx.ptr(), bdy.ptr(), dx.ptr()], n).unwrap();
        assert_close("gelu backward", ty, &dx.values(), &g_ref[0]);

        let (y_ref, g_ref) =
            reference_grads(&[(&x, &[n]), (&u, &[n])], &dy, |t| t[0].silu()? * &t[1]);
        let mut bu = Buf::new(ty, &u);
        let (mut sy, mut dg, mut du) = (Buf::zeros(ty, n), Buf::zeros(ty, n), Buf::zeros(ty, n));
        launches::swiglu_forward(emu, ty, [bx.ptr(), bu.ptr(), sy.ptr()], n).unwrap();
        assert_close("swiglu forward", ty, &sy.values(), &y_ref);
        launches::swiglu_backward(
            emu,
            ty,
            [bx.ptr(), bu.ptr(), bdy.ptr(), dg.ptr(), du.ptr()],
            n,
        )
        .unwrap();
        assert_close("swiglu d_gate", ty, &dg.values(), &g_ref[0]);
        assert_close("swiglu d_up", ty, &du.values(), &g_ref[1]);
    }
}

#[test]
fn rope_both_layouts_and_its_inverse_match_the_reference() {
    let Some(emu) = emulator() else { return };
    let (b, heads, t, hd) = (2, 3, 5, 8);
    for ty in TYPES {
        let x = values(b * heads * t * hd, 10, 2.0, ty);
        let cos = values(t * hd / 2, 11, 1.0, ty);
        let sin = values(t * hd / 2, 12, 1.0, ty);
        let rows = b * heads * t;
        // (b, heads, t, hd), every head rotated.
        let expected = flat(
            &rope_reference(
                &tensor(&x, &[b, heads, t, hd]),
                &tensor(&cos, &[t, hd / 2]),
                &tensor(&sin, &[t, hd / 2]),
            )
            .unwrap(),
        );
        let (mut bx, mut by, mut bc, mut bs) = (
            Buf::new(ty, &x),
            Buf::zeros(ty, x.len()),
            Buf::new(ty, &cos),
            Buf::new(ty, &sin),
        );
        let layout = RopeLayout {
            t,
            heads,
            hd,
            seq_major: false,
            rotated: heads,
        };
        launches::rope_rotate(
            emu,
            ty,
            [bx.ptr(), by.ptr(), bc.ptr(), bs.ptr()],
            rows,
            layout,
            false,
        )
        .unwrap();
        assert_close("rope (b, h, t, hd)", ty, &by.values(), &expected);
        // The inverse rotation (the backward) of that output, against the formula (f32 only).
        if ty == ElemType::F32 {
            let mut back = Buf::zeros(ty, x.len());
            launches::rope_rotate(
                emu,
                ty,
                [by.ptr(), back.ptr(), bc.ptr(), bs.ptr()],
                rows,
                layout,
                true,
            )
            .unwrap();
            let (c, s) = (&cos, &sin);
            // The tables are arbitrary (cos² + sin² ≠ 1), so the inverse does not give x back:
            // compare with the formula rotating by (cos, -sin).
            let y = by.values();
            let mut expected_back = vec![0f32; x.len()];
            for r in 0..rows {
                let ti = r % t;
                for i in 0..hd / 2 {
                    let (cc, ss) = (c[ti * hd / 2 + i], -s[ti * hd / 2 + i]);
                    let (y1, y2) = (y[r * hd + i], y[r * hd + hd / 2 + i]);
                    expected_back[r * hd + i] = y1 * cc - y2 * ss;
                    expected_back[r * hd + hd / 2 + i] = y2 * cc + y1 * ss;
                }
            }
            assert_close("rope inverse", ty, &back.values(), &expected_back);
        }
        // Packed (b, t, heads, hd) with only the first 2 heads rotated.
        let packed = tensor(&x, &[b, t, heads, hd]);
        let rotated = 2;
        let r = rope_reference(
            &packed
                .narrow(2, 0, rotated)
                .unwrap()
                .transpose(1, 2)
                .unwrap(),
            &tensor(&cos, &[t, hd / 2]),
            &tensor(&sin, &[t, hd / 2]),
        )
        .unwrap();
        let expected = flat(
            &Tensor::cat(
                &[
                    &r.transpose(1, 2).unwrap(),
                    &packed.narrow(2, rotated, heads - rotated).unwrap(),
                ],
                2,
            )
            .unwrap(),
        );
        let layout = RopeLayout {
            t,
            heads,
            hd,
            seq_major: true,
            rotated,
        };
        let mut by = Buf::zeros(ty, x.len());
        launches::rope_rotate(
            emu,
            ty,
            [bx.ptr(), by.ptr(), bc.ptr(), bs.ptr()],
            rows,
            layout,
            false,
        )
        .unwrap();
        assert_close("rope packed", ty, &by.values(), &expected);
    }
}

#[test]
fn token_nll_forward_and_backward_match_autograd_and_a_bad_target_is_nan() {
    let Some(emu) = emulator() else { return };
    let (n, v) = (6, 1500);
    for ty in TYPES {
        let x = values(n * v, 13, 6.0, ty);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 263 + 7) % v as u32).collect();
        let dnll = values(n, 14, 1.0, ElemType::F32);
        let tt = Tensor::from_slice(&targets, n, &Device::Cpu).unwrap();
        let (nll_ref, g_ref) =
            reference_grads(&[(&x, &[n, v])], &dnll, |t| token_nll_reference(&t[0], &tt));
        let (mut bx, mut bt) = (Buf::new(ty, &x), Buf::u32s(&targets));
        let (mut lse, mut nll) = (Buf::zeros(ElemType::F32, n), Buf::zeros(ElemType::F32, n));
        launches::nll_forward(emu, ty, [bx.ptr(), bt.ptr(), lse.ptr(), nll.ptr()], n, v).unwrap();
        // The NLL itself is f32 from inputs the reference also reads: f32 tolerance, scaled by
        // the size of the log-sum-exp.
        assert_close("nll forward", ElemType::F32, &nll.values(), &nll_ref);
        let (mut bg, mut dx) = (Buf::new(ElemType::F32, &dnll), Buf::zeros(ty, n * v));
        launches::nll_backward(
            emu,
            ty,
            [bx.ptr(), bt.ptr(), lse.ptr(), bg.ptr(), dx.ptr()],
            n,
            v,
        )
        .unwrap();
        assert_close("nll backward", ty, &dx.values(), &g_ref[0]);
    }
    let mut bad = targets_with_one_out_of_range(n, v);
    let x = values(n * v, 15, 1.0, ElemType::F32);
    let mut bx = Buf::new(ElemType::F32, &x);
    let (mut lse, mut nll) = (Buf::zeros(ElemType::F32, n), Buf::zeros(ElemType::F32, n));
    launches::nll_forward(
        emu,
        ElemType::F32,
        [bx.ptr(), bad.ptr(), lse.ptr(), nll.ptr()],
        n,
        v,
    )
    .unwrap();
    let nll = nll.values();
    assert!(
        nll[2].is_nan() && nll.iter().enumerate().all(|(i, l)| i == 2 || l.is_finite()),
        "{nll:?}"
    );
}

fn targets_with_one_out_of_range(n: usize, v: usize) -> Buf {
    let mut t: Vec<u32> = (0..n as u32).collect();
    t[2] = v as u32;
    Buf::u32s(&t)
}

/// q, k, v of a packed `(b, t, h + 2 kv, hd)` projection as `(b, heads, t, hd)` tensors.
fn split_packed(qkv: &Tensor, h: usize, kv: usize) -> (Tensor, Tensor, Tensor) {
    let part = |first, n| qkv.narrow(2, first, n).unwrap().transpose(1, 2).unwrap();
    (part(0, h), part(h, kv), part(h + kv, kv))
}

#[test]
fn attention_forward_and_backward_match_autograd_with_grouped_heads_and_partial_tiles() {
    let Some(emu) = emulator() else { return };
    // t = 70: two 64-row blocks, the second partial, and 32-row tiles crossing the diagonal;
    // head widths 16, 128 and 40 (run in the 64-wide kernel, its extra columns zero).
    for (dims, types) in [
        (
            Dims {
                b: 2,
                t: 70,
                h: 4,
                kv: 2,
                hd: 16,
            },
            &TYPES[..],
        ),
        (
            Dims {
                b: 1,
                t: 9,
                h: 2,
                kv: 2,
                hd: 128,
            },
            &TYPES[..1],
        ),
        (
            Dims {
                b: 1,
                t: 33,
                h: 3,
                kv: 1,
                hd: 40,
            },
            &TYPES[..1],
        ),
    ] {
        for &ty in types {
            let Dims { b, t, h, kv, hd } = dims;
            let heads = h + 2 * kv;
            let qkv = values(b * t * heads * hd, 16, 1.5, ty);
            let dy = values(b * t * h * hd, 17, 1.0, ty);
            let (y_ref, g_ref) = reference_grads(&[(&qkv, &[b, t, heads, hd])], &dy, |x| {
                let (q, k, v) = split_packed(&x[0], h, kv);
                causal_attention_reference(&q, &k, &v)?.transpose(1, 2)
            });
            let what = format!("attention {dims:?}");
            let (mut bq, mut out) = (Buf::new(ty, &qkv), Buf::zeros(ty, b * t * h * hd));
            let mut lse = Buf::zeros(ElemType::F32, b * h * t);
            launches::attention_forward(emu, ty, [bq.ptr(), out.ptr(), lse.ptr()], dims).unwrap();
            assert_close(&format!("{what} forward"), ty, &out.values(), &y_ref);
            let (mut bdy, mut dqkv) = (Buf::new(ty, &dy), Buf::nans(ty, qkv.len()));
            launches::attention_backward(
                emu,
                ty,
                [bq.ptr(), out.ptr(), bdy.ptr(), lse.ptr(), dqkv.ptr()],
                dims,
            )
            .unwrap();
            // Every element written (the buffer started as NaN), and equal to autograd's.
            assert_close(&format!("{what} backward"), ty, &dqkv.values(), &g_ref[0]);
        }
    }
}

#[test]
fn attention_refuses_heads_wider_than_the_kernels_take() {
    let Some(emu) = emulator() else { return };
    let dims = Dims {
        b: 1,
        t: 4,
        h: 1,
        kv: 1,
        hd: 256,
    };
    assert!(!launches::attention_fits(dims));
    let err = launches::attention_forward(emu, ElemType::F32, [0, 0, 0], dims).unwrap_err();
    assert!(err.to_string().contains("head width"), "{err}");
}

#[test]
fn adamw_matches_the_update_rule_over_several_steps() {
    let Some(emu) = emulator() else { return };
    let n = 1000;
    let mut p = values(n, 18, 1.0, ElemType::F32);
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let (mut bp, mut bm, mut bv) = (
        Buf::new(ElemType::F32, &p),
        Buf::zeros(ElemType::F32, n),
        Buf::zeros(ElemType::F32, n),
    );
    let (beta1, beta2, eps, lr, wd) = (0.9f32, 0.95f32, 1e-8f32, 1e-2f32, 0.1f32);
    for step in 1..=3 {
        let g = values(n, 100 + step, 1.0, ElemType::F32);
        let s = AdamWStep {
            beta1,
            beta2,
            eps,
            decay: 1.0 - lr * wd,
            step_size: lr / (1.0 - beta1.powi(step as i32)),
            inv_sqrt_bc2: 1.0 / (1.0 - beta2.powi(step as i32)).sqrt(),
            grad_scale: 0.5,
        };
        let mut bg = Buf::new(ElemType::F32, &g);
        launches::adamw_step(emu, [bp.ptr(), bg.ptr(), bm.ptr(), bv.ptr()], n, s).unwrap();
        for i in 0..n {
            let gi = g[i] * s.grad_scale;
            m[i] = beta1 * m[i] + (1.0 - beta1) * gi;
            v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
            p[i] = p[i] * s.decay - s.step_size * m[i] / (v[i].sqrt() * s.inv_sqrt_bc2 + eps);
        }
    }
    assert_close("adamw parameters", ElemType::F32, &bp.values(), &p);
    assert_close("adamw first moment", ElemType::F32, &bm.values(), &m);
    assert_close("adamw second moment", ElemType::F32, &bv.values(), &v);
}

#[test]
fn emulated_launches_sum_rows_wider_than_the_block() {
    // A guard for the emulator itself: a softmax row of 5000 (block of 512 threads, each
    // looping) sums to 1 in f32.
    let Some(emu) = emulator() else { return };
    let d = 5000;
    let x = values(d, 19, 3.0, ElemType::F32);
    let (mut bx, mut by) = (Buf::new(ElemType::F32, &x), Buf::zeros(ElemType::F32, d));
    launches::softmax_forward(emu, ElemType::F32, [bx.ptr(), by.ptr()], 1, d).unwrap();
    let total: f32 = by.values().iter().sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");
}
