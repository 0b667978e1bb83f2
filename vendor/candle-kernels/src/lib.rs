// llmlab: each module is a compressed fatbin of SASS for the build's GPU (build.rs), not PTX
// text, and the modules are `static`s, not `const`s: a `const` is copied into every crate and
// codegen unit that names it, which put 17 copies of the 11 PTX modules into the runtime and
// more into the plugins (vendor/README.md).
mod image {
    include!(concat!(env!("OUT_DIR"), "/images.rs"));
}

#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Id {
    Affine,
    Binary,
    Cast,
    Conv,
    Fill,
    Indexing,
    Quantized,
    Reduce,
    Sort,
    Ternary,
    Unary,
}

pub const ALL_IDS: [Id; 11] = [
    Id::Affine,
    Id::Binary,
    Id::Cast,
    Id::Conv,
    Id::Fill,
    Id::Indexing,
    Id::Quantized,
    Id::Reduce,
    Id::Sort,
    Id::Ternary,
    Id::Unary,
];

pub struct Module {
    index: usize,
    image: &'static [u8],
}

impl Module {
    pub fn index(&self) -> usize {
        self.index
    }

    /// The module as the driver loads it. Still called `ptx` because candle-core loads a module
    /// with `context.load_module(mdl.ptx().into())`; the driver tells a fatbin from PTX text by
    /// its header.
    pub fn ptx(&self) -> cudarc::nvrtc::Ptx {
        cudarc::nvrtc::Ptx::from_binary(self.image.to_vec())
    }

    /// The compressed fatbin itself.
    pub fn image(&self) -> &'static [u8] {
        self.image
    }
}

const fn module_index(id: Id) -> usize {
    let mut i = 0;
    while i < ALL_IDS.len() {
        if ALL_IDS[i] as u32 == id as u32 {
            return i;
        }
        i += 1;
    }
    panic!("id not found")
}

macro_rules! mdl {
    ($cst:ident, $id:ident) => {
        pub static $cst: Module = Module {
            index: module_index(Id::$id),
            image: image::$cst,
        };
    };
}

mdl!(AFFINE, Affine);
mdl!(BINARY, Binary);
mdl!(CAST, Cast);
mdl!(CONV, Conv);
mdl!(FILL, Fill);
mdl!(INDEXING, Indexing);
mdl!(QUANTIZED, Quantized);
mdl!(REDUCE, Reduce);
mdl!(SORT, Sort);
mdl!(TERNARY, Ternary);
mdl!(UNARY, Unary);

pub mod ffi;
