//! The compute device named by `--device` (`cpu`, `cuda`, `cuda:N`): parsing it and opening it.
//!
//! Both ways a CUDA device can be missing end in an error that says which one and what to do,
//! never in a panic: a runtime built without candle's `cuda` feature, and a cuda build on a
//! machine without a usable GPU. The second needs `catch_unwind`: the cuda build of
//! `scripts/build-cuda.sh` loads the CUDA libraries with `dlopen` when the device is created
//! (so the binary starts anywhere), and cudarc panics, rather than returning an error, when a
//! library is missing.

use std::panic::{catch_unwind, AssertUnwindSafe};

use llmlab_plugin_api::candle::{utils::cuda_is_available, Device};

use crate::panics::panic_message;

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

/// `cpu`, `cuda` or `cuda:N`. A bare `cuda` is `cuda:0`, except in a job of several ranks
/// started by a launcher, where it is this rank's GPU on its node (the launcher's local rank:
/// `distributed::default_cuda_ordinal`), as one process per GPU wants.
pub fn parse(spec: &str) -> Result<DeviceSpec, String> {
    match spec {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(crate::distributed::default_cuda_ordinal())),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("--device {other}: expected cpu, cuda or cuda:N")),
    }
}

/// The device `spec` names, ready for tensors; the error names the cause and the fix.
pub fn open(spec: &str) -> Result<Device, String> {
    match parse(spec)? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(ordinal) => open_cuda(spec, ordinal),
    }
}

fn open_cuda(spec: &str, ordinal: usize) -> Result<Device, String> {
    // Asks the runtime, not this crate's features: the runtime library is what holds candle.
    if !cuda_is_available() {
        return Err(format!(
            "--device {spec}: this llmlab was built without CUDA (runtime candle features: {}); \
             build the CUDA bundle with scripts/build-cuda.sh and run the llmlab in it (docs/cuda.md)",
            llmlab_plugin_api::declaration::CANDLE_FEATURES
        ));
    }
    match catch_unwind(AssertUnwindSafe(|| Device::new_cuda(ordinal))) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(error)) => Err(format!(
            "--device {spec}: CUDA device {ordinal} is not usable: {}; check `nvidia-smi` lists it \
             and the driver supports CUDA 13.0 (docs/cuda.md)",
            first_line(&error.to_string())
        )),
        Err(payload) => Err(format!(
            "--device {spec}: the CUDA libraries could not be loaded ({}); this needs an NVIDIA \
             driver (libcuda.so.1) and CUDA 13 cuBLAS/cuRAND (libcublas.so.13, libcurand.so.10) \
             on LD_LIBRARY_PATH (docs/cuda.md)",
            library_cause(&panic_message(&*payload))
        )),
    }
}

/// cudarc's dlopen panic names the library, then lists every file name it tried: keep the first.
fn library_cause(message: &str) -> &str {
    let line = first_line(message);
    line.split(" - searched for").next().unwrap_or(line)
}

/// candle errors carry a backtrace when RUST_BACKTRACE is set; the first line is the cause.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_cuda_and_ordinals() {
        assert_eq!(parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "metal"] {
            let message = parse(bad).unwrap_err();
            assert!(
                message.contains(bad) && message.contains("cuda:N"),
                "{message}"
            );
        }
    }

    #[test]
    fn cuda_without_cuda_build_or_gpu_is_an_error_not_a_panic() {
        // On a CPU build: the build lacks CUDA. On a cuda build on a machine without a GPU (CI,
        // the build machine): the libraries or the device are missing. With a GPU it opens.
        match open("cuda") {
            Ok(device) => assert!(device.is_cuda()),
            Err(message) => {
                assert!(message.starts_with("--device cuda: "), "{message}");
                assert!(message.contains("docs/cuda.md"), "{message}");
                if !cuda_is_available() {
                    assert!(message.contains("built without CUDA"), "{message}");
                    assert!(message.contains("scripts/build-cuda.sh"), "{message}");
                }
            }
        }
    }
}
