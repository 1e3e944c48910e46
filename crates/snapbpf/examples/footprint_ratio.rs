//! What the simulated interpreter heap (`snapbpf_functions::runtime`) compresses to, page
//! by page as Sabre sees it: zstd level 3 and LZ4 over 4 KiB pages, and zstd over the
//! whole footprint. `cargo run --release -p snapbpf --example footprint_ratio [MiB]`.

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let bytes = snapbpf_functions::runtime::footprint_bytes(mib << 20, 0x0070_7961_6573);
    let pages: Vec<&[u8]> = bytes.chunks(4096).collect();
    let zstd_pages: usize = pages
        .iter()
        .map(|p| {
            zstd::bulk::compress(p, 3)
                .map(|c| c.len())
                .unwrap_or(p.len())
        })
        .sum();
    let lz4_pages: usize = pages
        .iter()
        .map(|p| lz4_flex::block::compress(p).len())
        .sum();
    let zstd_whole = zstd::bulk::compress(&bytes, 3)
        .map(|c| c.len())
        .unwrap_or(bytes.len());
    let ratio = |c: usize| bytes.len() as f64 / c as f64;
    println!(
        "runtime footprint {} MiB: zstd-3 per page {:.2}x, lz4 per page {:.2}x, zstd-3 whole {:.2}x",
        bytes.len() >> 20,
        ratio(zstd_pages),
        ratio(lz4_pages),
        ratio(zstd_whole)
    );
}
