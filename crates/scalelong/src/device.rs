//! `--device flex|wgpu|cuda[:index]`: the backend is chosen at run time, among those compiled in.

use anyhow::{Result, bail};
use burn::prelude::Device;

pub fn parse(spec: &str) -> Result<Device> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| anyhow::anyhow!("--device {spec}: the index must be a number"))?)),
        None => (spec, None),
    };
    match kind {
        "flex" | "cpu" => Ok(Device::flex()),
        "wgpu" => wgpu(index),
        "cuda" => cuda(index),
        other => bail!("--device {other}: unknown backend; expected flex, wgpu or cuda[:index]"),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu(index: Option<usize>) -> Result<Device> {
    use burn::tensor::DeviceKind;
    Ok(match index {
        Some(i) => Device::wgpu(DeviceKind::DiscreteGpu(i)),
        None => Device::wgpu(DeviceKind::DefaultDevice),
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_: Option<usize>) -> Result<Device> {
    bail!("--device wgpu: this binary was built without wgpu; rebuild with `cargo build --release --features wgpu`")
}

#[cfg(feature = "cuda")]
fn cuda(index: Option<usize>) -> Result<Device> {
    Ok(Device::cuda(index.unwrap_or(0)))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: Option<usize>) -> Result<Device> {
    bail!("--device cuda: this binary was built without cuda; rebuild with `cargo build --release --features cuda` (needs network access, see README)")
}
