//! Times GETs of every chunk under an `s3://` location: one at a time, then in parallel.
//! `cargo run --release -p snapbpf-fleet --example get_bench -- s3://BUCKET/PREFIX [PARALLEL]`
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: get_bench s3://BUCKET/PREFIX [PARALLEL]")?;
    let parallel: usize = args.next().map_or(Ok(16), |p| p.parse())?;
    let location = snapbpf_fleet::Location::parse(&url)?;
    let remote = snapbpf_fleet::Remote::connect(&location, &Default::default())?;
    let keys = remote.list(&location.key("chunks"))?;
    let t = Instant::now();
    let mut bytes = 0;
    for k in &keys {
        bytes += remote.get(k, u64::MAX)?.bytes.len();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "serial: {} GETs, {:.1} MB in {:.3} s: {:.2} ms each, {:.0} MB/s",
        keys.len(),
        bytes as f64 / 1e6,
        s,
        s * 1e3 / keys.len() as f64,
        bytes as f64 / 1e6 / s
    );
    let t = Instant::now();
    let got = remote.parallel(
        parallel,
        keys.iter()
            .map(|k| {
                let k = k.clone();
                move |r: &snapbpf_fleet::Remote| r.get(&k, u64::MAX).map(|g| g.bytes.len())
            })
            .collect(),
    );
    let bytes: usize = got.into_iter().map(|g| g.unwrap_or(0)).sum();
    let s = t.elapsed().as_secs_f64();
    println!(
        "{parallel} in parallel: {:.1} MB in {:.3} s: {:.0} MB/s",
        bytes as f64 / 1e6,
        s,
        bytes as f64 / 1e6 / s
    );
    Ok(())
}
