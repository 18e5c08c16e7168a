//! Builds the XDP object (lb-ebpf) with nightly + bpf-linker and BTF, into OUT_DIR/wklb-xdp.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package { name: "lb-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::default(),
    )
    .context(
        "building the XDP program failed; run `cargo xtask setup` to install nightly rust-src and bpf-linker",
    )
}
