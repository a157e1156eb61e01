//! `--device flex|wgpu[:index]|cuda[:index]`: the backend is chosen at run time, among those
//! compiled in (`--features wgpu`, `--features cuda`).
//!
//! burn creates a GPU device lazily and panics on its first tensor when the machine has no such
//! device, so the GPU backends list the devices first and turn "none" into an error here.

use anyhow::{Result, bail};
use burn::prelude::Device;

pub fn parse(spec: &str) -> Result<Device> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => {
            (k, Some(i.parse::<usize>().map_err(|_| anyhow::anyhow!("--device {spec}: the index must be a number"))?))
        }
        None => (spec, None),
    };
    match kind {
        "flex" | "cpu" if index.is_none() => Ok(Device::flex()),
        "flex" | "cpu" => bail!("--device {spec}: flex takes no index"),
        "wgpu" => wgpu(index),
        "cuda" => cuda(index),
        other => bail!("--device {other}: unknown backend; expected flex, wgpu[:index] or cuda[:index]"),
    }
}

/// `wgpu`: the adapter wgpu ranks best (a discrete GPU before an integrated one before a software
/// driver; `CUBECL_WGPU_DEFAULT_DEVICE` overrides it); `wgpu:i`: the i-th adapter wgpu lists.
#[cfg(feature = "wgpu")]
fn wgpu(index: Option<usize>) -> Result<Device> {
    use burn::tensor::{DeviceKind, DeviceType};
    let listed = list(DeviceType::Wgpu);
    let none = "no wgpu adapter found: no Vulkan driver (nor an OpenGL/EGL one) sees a device. Install the GPU's \
                Vulkan driver (on Debian `apt-get install mesa-vulkan-drivers libvulkan1`, which also brings \
                lavapipe, a slow software driver), or use --device flex";
    pick("wgpu", listed, index, none).map(|listed| listed.unwrap_or_else(|| Device::wgpu(DeviceKind::DefaultDevice)))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_: Option<usize>) -> Result<Device> {
    bail!(
        "--device wgpu: this binary was built without wgpu; rebuild it with `cargo build --release -p scalelong --features wgpu`"
    )
}

/// `cuda` is `cuda:0`; `cuda:i` the i-th CUDA device (as `CUDA_VISIBLE_DEVICES` leaves them).
#[cfg(feature = "cuda")]
fn cuda(index: Option<usize>) -> Result<Device> {
    use burn::tensor::DeviceType;
    let listed = list(DeviceType::Cuda);
    let none = "no CUDA device found: no NVIDIA driver is installed, or CUDA_VISIBLE_DEVICES hides every GPU";
    pick("cuda", listed, Some(index.unwrap_or(0)), none).map(|listed| listed.expect("an index was given"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: Option<usize>) -> Result<Device> {
    bail!(
        "--device cuda: this binary was built without cuda; rebuild it with `cargo build --release -p scalelong --features cuda` \
         (the build downloads an LLVM bundle, so it needs network access; see the README)"
    )
}

/// The devices of one backend on this machine; none when looking panics (a driver library that
/// cannot be loaded), so that the caller's error says what is missing.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn list(device_type: burn::tensor::DeviceType) -> Vec<Device> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Device::enumerate(device_type).into_vec()))
        .unwrap_or_default()
}

/// The device `index` of `listed`, or `None` for the backend's own default when no index is given;
/// an error when nothing is listed or the index is past the end.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn pick(backend: &str, listed: Vec<Device>, index: Option<usize>, none: &str) -> Result<Option<Device>> {
    if listed.is_empty() {
        bail!("--device {backend}: {none}");
    }
    match index {
        None => Ok(None),
        Some(i) if i < listed.len() => Ok(listed.into_iter().nth(i)),
        Some(i) => {
            let names: Vec<String> = listed.iter().enumerate().map(|(j, d)| format!("{backend}:{j} = {d:?}")).collect();
            let count = if listed.len() == 1 { "1 device".to_string() } else { format!("{} devices", listed.len()) };
            bail!("--device {backend}:{i}: this machine has {count} for {backend}: {}", names.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn error(spec: &str) -> String {
        format!("{:#}", parse(spec).expect_err(spec))
    }

    #[test]
    fn flex_is_always_there_and_bad_specs_are_clear_errors() {
        assert!(parse("flex").is_ok());
        assert!(parse("cpu").is_ok());
        assert!(error("tpu").contains("unknown backend"));
        assert!(error("wgpu:x").contains("the index must be a number"));
        assert!(error("flex:1").contains("flex takes no index"));
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_the_feature_says_how_to_build_it() {
        assert!(error("wgpu").contains("built without wgpu"), "{}", error("wgpu"));
        assert!(error("wgpu").contains("--features wgpu"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        assert!(error("cuda:0").contains("built without cuda"), "{}", error("cuda:0"));
        assert!(error("cuda").contains("--features cuda"));
    }

    /// With the feature, a machine with wgpu adapters gives a device for `wgpu` and each listed
    /// index, and an error naming them past the end; one without gives an error, not a panic.
    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_devices_are_listed_or_missing_clearly() {
        use burn::tensor::DeviceType;
        let count = burn::prelude::Device::enumerate(DeviceType::Wgpu).len();
        if count == 0 {
            assert!(error("wgpu").contains("no wgpu adapter found"), "{}", error("wgpu"));
            return;
        }
        assert!(parse("wgpu").is_ok());
        assert!(parse(&format!("wgpu:{}", count - 1)).is_ok());
        let past = error(&format!("wgpu:{count}"));
        assert!(past.contains("this machine has") && past.contains("wgpu:0 = "), "{past}");
    }
}
