//! Measures the Firecracker path, one function at a time, sequentially:
//! spawn-to-ready boot, pause + snapshot create, `PUT /snapshot/load` round trips (File
//! backend, and Uffd served on demand by snapbpf's handler), and the time from writing
//! `input 0` to reading the done line, beside the guest's own cycles for the invocation.
//! Every checksum is compared with the host reference.
//!
//! ```sh
//! FIRECRACKER=../shared/firecracker/firecracker \
//!   cargo run --release -p snapbpf-firecracker --example timings -- [REPEAT] [FUNCTION...]
//! ```
//!
//! The snapshot files stay in the page cache (they were just written): these are warm
//! restores. Medians over REPEAT (default 3) rounds.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapbpf_firecracker::{guest, Binary, MachineConfig, MemBackend, Vm};

type Error = Box<dyn std::error::Error>;

const TIMEOUT: Duration = Duration::from_secs(300);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The TSC rate, MHz (the guest's cycles are `rdtsc` deltas).
fn tsc_mhz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("cpu MHz"))
                .and_then(|v| v.trim_start_matches([' ', '\t', ':']).trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Samples {
    boot: Vec<f64>,
    create: Vec<f64>,
    load_file: Vec<f64>,
    first_file: Vec<f64>,
    first_cycles_ms: Vec<f64>,
    second_file: Vec<f64>,
    second_cycles_ms: Vec<f64>,
    load_uffd: Vec<f64>,
    first_uffd: Vec<f64>,
}

/// One invocation: host time from `input` to `done`, and the guest's own time.
fn invoke(vm: &mut Vm, input: u32, want: u64, mhz: f64) -> Result<(f64, f64), Error> {
    let t = Instant::now();
    let done = guest::invoke(vm.serial(), input, Instant::now() + TIMEOUT)?;
    let host = ms(t.elapsed());
    if done.checksum != want {
        return Err(format!(
            "checksum {:016x}, the host reference is {want:016x}",
            done.checksum
        )
        .into());
    }
    Ok((host, done.cycles as f64 / mhz / 1e3))
}

fn round(bin: &Binary, dir: &Path, function: u32, s: &mut Samples) -> Result<(), Error> {
    let info = &snapbpf_functions::FUNCTIONS[function as usize];
    let want = snapbpf_functions::init(function, 0)
        .ok_or("no such function")?
        .invoke(0);
    let mhz = tsc_mhz();
    let elf = dir.join("guest.elf");
    std::fs::write(&elf, snapbpf_guest_image::GUEST_ELF)?;
    let (vmstate, memory) = (dir.join("vmstate"), dir.join("memory"));

    let t = Instant::now();
    let mut vm = Vm::spawn(bin)?;
    let machine = MachineConfig {
        mem_mib: info.mem_mib,
        vcpus: 1,
        track_dirty_pages: false,
    };
    vm.boot(&elf, &format!("snapbpf.function={function}"), machine)?;
    guest::wait_ready(vm.serial(), Instant::now() + TIMEOUT)?;
    s.boot.push(ms(t.elapsed()));
    let t = Instant::now();
    vm.pause()?;
    vm.create_snapshot(&vmstate, &memory)?;
    s.create.push(ms(t.elapsed()));
    drop(vm);

    let mut vm = Vm::spawn(bin)?;
    s.load_file
        .push(ms(vm.load_snapshot(&vmstate, MemBackend::File(&memory))?));
    let (host, guest) = invoke(&mut vm, 0, want, mhz)?;
    s.first_file.push(host);
    s.first_cycles_ms.push(guest);
    let (host, guest) = invoke(&mut vm, 0, want, mhz)?;
    s.second_file.push(host);
    s.second_cycles_ms.push(guest);
    drop(vm);

    let socket = dir.join("uffd.sock");
    let identity = snapbpf_store::FileIdentity {
        size: std::fs::metadata(&memory)?.len(),
        digest: [0; 32],
    };
    let on_demand: Arc<snapbpf_uffd::server::Prefetch> =
        Arc::new(|_, _, _| Ok(snapbpf_uffd::HandlerAck::default()));
    let (sock, mem) = (socket.clone(), memory.clone());
    let handler = std::thread::spawn(move || {
        snapbpf_uffd::server::listen(
            &sock,
            snapbpf_uffd::server::ServedMemory {
                file: std::fs::File::open(&mem).map_err(|e| e.to_string())?,
                path: mem.clone(),
                identity,
            },
            on_demand,
            Some(1),
            false,
            &snapbpf_os::access::AccessPolicy::default(),
        )
        .map_err(|e| e.to_string())
    });
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut vm = Vm::spawn(bin)?;
    s.load_uffd
        .push(ms(vm.load_snapshot(&vmstate, MemBackend::Uffd(&socket))?));
    s.first_uffd.push(invoke(&mut vm, 0, want, mhz)?.0);
    drop(vm);
    handler.join().map_err(|_| "the handler panicked")??;
    for f in [&vmstate, &memory] {
        std::fs::remove_file(f)?;
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1).peekable();
    let repeat = match args.peek().and_then(|a| a.parse::<usize>().ok()) {
        Some(n) => {
            args.next();
            n
        }
        None => 3,
    };
    let names: Vec<String> = args.collect();
    let bin = Binary::locate(None)?;
    println!(
        "{} at {}; TSC {:.0} MHz; {repeat} rounds, medians, ms",
        bin.version(),
        bin.path().display(),
        tsc_mhz()
    );
    println!(
        "| function | MiB | boot to ready | pause+create | load File | input->done (1st) | guest exec (1st) | input->done (2nd) | guest exec (2nd) | load Uffd | input->done Uffd (1st) | checksum |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (index, info) in snapbpf_functions::FUNCTIONS.iter().enumerate() {
        if !names.is_empty() && !names.iter().any(|n| n == info.name) {
            continue;
        }
        let dir = tempfile::Builder::new()
            .prefix("snapbpf-fc-timings-")
            .tempdir_in("/var/tmp")?;
        let mut s = Samples::default();
        for _ in 0..repeat {
            round(&bin, dir.path(), index as u32, &mut s)
                .map_err(|e| format!("{}: {e}", info.name))?;
        }
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | matches |",
            info.name,
            info.mem_mib,
            median(s.boot),
            median(s.create),
            median(s.load_file),
            median(s.first_file),
            median(s.first_cycles_ms),
            median(s.second_file),
            median(s.second_cycles_ms),
            median(s.load_uffd),
            median(s.first_uffd),
        );
    }
    Ok(())
}
