//! `snapbpf verify`: re-check a snapshot directory's files against their recorded content.

use std::path::PathBuf;

use anyhow::Result;
use snapbpf::strategy::{StrategySpec, REGISTRY};

/// Re-read the memory file and every strategy artifact of a snapshot directory and check
/// each against the digest or checksum its metadata records, whatever the verification
/// cache says. Exits non-zero naming every file that is wrong.
///
/// Reads with O_DIRECT where the filesystem allows it, so the page cache is left as it was.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory.
    dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let snap = snapbpf::snapshot::open_metadata(&args.dir)?;
    let mut checks: Vec<(String, Result<(), String>)> = Vec::new();
    let memory = snap.memory_path();
    let started = std::time::Instant::now();
    checks.push((
        snapbpf_store::snapshot::MEMORY_FILE.into(),
        snapbpf_store::verify::check_now(&memory, &snap.meta.memory)
            .map_err(|e| snapbpf::error_chain(&e)),
    ));
    // The VMM's state file was checked by opening (the vcpu file's CRC, Firecracker's
    // vmstate's digest). Every strategy with artifacts here re-checks them.
    let state = match snap.vmm() {
        snapbpf::snapshot::Vmm::Builtin => snapbpf_store::snapshot::VCPU_FILE,
        snapbpf::snapshot::Vmm::Firecracker => snapbpf_store::snapshot::VMSTATE_FILE,
    };
    checks.push((state.into(), Ok(())));
    for info in REGISTRY.iter() {
        if !info
            .artifacts
            .iter()
            .any(|a| snap.artifact_path(a).exists())
        {
            continue;
        }
        let Ok(spec) = StrategySpec::named(info.name) else {
            continue;
        };
        let verified = spec
            .build()
            .verify_recording(&snap)
            .map_err(|e| snapbpf::error_chain(&e));
        checks.push((
            format!("{} ({})", info.artifacts.join(", "), info.name),
            verified,
        ));
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let bad: Vec<&(String, Result<(), String>)> =
        checks.iter().filter(|(_, r)| r.is_err()).collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "snapshot": snap.dir,
                "ok": bad.is_empty(),
                "ms": ms,
                "files": checks.iter().map(|(name, r)| serde_json::json!({
                    "name": name,
                    "ok": r.is_ok(),
                    "error": r.as_ref().err(),
                })).collect::<Vec<_>>(),
            }))?
        );
    } else {
        for (name, r) in &checks {
            match r {
                Ok(()) => println!("ok     {name}"),
                Err(why) => println!("WRONG  {name}: {why}"),
            }
        }
        println!("verified {} in {ms:.0} ms", snap.dir.display());
    }
    if !bad.is_empty() {
        let names: Vec<&str> = bad.iter().map(|(n, _)| n.as_str()).collect();
        anyhow::bail!(
            "{} is damaged: {} do not match their metadata",
            snap.dir.display(),
            names.join("; ")
        );
    }
    Ok(())
}
