//! Writes the demo image: an OCI archive built from the static busybox
//! (`apt install busybox-static`), named `127.0.0.1:5000/gantry/busybox:demo`.
//! Run: `cargo run --example demo_image -- OUT.tar`.

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: demo_image OUT.tar"))?;
    let archive =
        gantry_node::testing::busybox_oci_archive(&out, "127.0.0.1:5000/gantry/busybox:demo")?;
    println!("wrote {} ({})", archive.name, out);
    Ok(())
}
