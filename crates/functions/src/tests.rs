//! Host tests over the whole suite: every function's init and invocations are deterministic,
//! inputs matter, invocations free what they allocate, and the state fits `mem_mib`.
//!
//! A thread-local tracking allocator measures each test's live and peak heap bytes (tests
//! run on their own threads), which is also how the `mem_mib` values were sized. Run with
//! `--nocapture` to see the measurements and timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::println;
use std::time::Instant;

use crate::{index_of, init, Call, CallError, FUNCTIONS};

/// The system allocator, counting bytes per thread.
struct TrackingAllocator;

std::thread_local! {
    /// Bytes currently allocated by this thread.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    /// Largest `LIVE` since the last [`reset_peak`].
    static PEAK: Cell<usize> = const { Cell::new(0) };
    /// Bytes ever allocated by this thread.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn record_allocation(bytes: usize) {
    // `try_with` fails only during thread teardown, when nothing is measured any more.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let _ = ALLOCATED.try_with(|total| total.set(total.get() + bytes));
}

fn record_free(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: every method forwards to `System` with the caller's arguments, so `System`'s
// implementation of the contract applies; the only addition is thread-local bookkeeping,
// which does not allocate.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract for `layout`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` was allocated by this allocator, hence by `System`, with `layout`.
        unsafe { System.dealloc(pointer, layout) };
        record_free(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `pointer` was allocated by `System` with `layout`; the caller upholds the
        // rest of `GlobalAlloc::realloc`'s contract.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            record_free(layout.size());
            record_allocation(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator;

fn live() -> usize {
    LIVE.with(Cell::get)
}

fn peak() -> usize {
    PEAK.with(Cell::get)
}

fn allocated() -> usize {
    ALLOCATED.with(Cell::get)
}

fn reset_peak() {
    PEAK.with(|peak| peak.set(live()));
}

const MIB: usize = 1 << 20;
/// Guest memory the function's heap cannot use: guest image, page tables, stack.
const GUEST_OVERHEAD_BYTES: usize = 16 * MIB;

/// Runs `name` through two inits and every input, checking determinism, input
/// sensitivity, leak-freedom and memory fit, and prints what it measured.
fn exercise(name: &str) {
    let call = Call::parse(name).expect("function is registered");
    let info = *call.info;
    assert!(info.inputs >= 2, "{name}: needs at least two inputs");

    // Reserved up front so the measured windows allocate nothing but the invocation's own.
    let mut checksums = std::vec::Vec::with_capacity(info.inputs as usize);
    let mut first_times = std::vec::Vec::with_capacity(info.inputs as usize);
    let mut warm_times = std::vec::Vec::with_capacity(info.inputs as usize);
    let baseline = live();
    reset_peak();
    let started = Instant::now();
    let mut function = call.init();
    let init_time = started.elapsed();
    let init_peak = peak() - baseline;
    let state = live() - baseline;

    let mut invoke_peak = 0;
    let mut fresh_bytes = 0;
    for input in 0..info.inputs {
        reset_peak();
        let allocated_before = allocated();
        let started = Instant::now();
        checksums.push(function.invoke(input));
        first_times.push(started.elapsed());
        invoke_peak = invoke_peak.max(peak() - baseline - state);
        fresh_bytes = fresh_bytes.max(allocated() - allocated_before);
        assert_eq!(
            live() - baseline,
            state,
            "{name}: input {input} leaked memory"
        );
    }
    for input in 0..info.inputs {
        let started = Instant::now();
        let again = function.invoke(input);
        warm_times.push(started.elapsed());
        assert_eq!(
            again, checksums[input as usize],
            "{name}: input {input} not repeatable"
        );
    }
    assert_ne!(
        checksums[0], checksums[1],
        "{name}: inputs 0 and 1 give the same result"
    );
    assert_eq!(
        function.invoke(info.inputs),
        checksums[0],
        "{name}: input `inputs` should act as input 0"
    );
    drop(function);
    assert_eq!(live(), baseline, "{name}: dropping the state leaked memory");

    // A fresh init, invoked in the other order, gives the same results.
    let mut second = call.init();
    for input in (0..info.inputs).rev() {
        assert_eq!(
            second.invoke(input),
            checksums[input as usize],
            "{name}: input {input} differs between two inits"
        );
    }
    drop(second);

    let needed = init_peak.max(state + invoke_peak);
    let budget = call.mem_mib() as usize * MIB;
    println!(
        "{name:>13}: mem {:>4} MiB, init peak {:>6.1} MiB, state {:>6.1} MiB, invoke peak +{:>5.1} MiB, \
         fresh {:>5.1} MiB/invoke; init {:?}, first invokes {:?}, warm invokes {:?}",
        call.mem_mib(),
        init_peak as f64 / MIB as f64,
        state as f64 / MIB as f64,
        invoke_peak as f64 / MIB as f64,
        fresh_bytes as f64 / MIB as f64,
        init_time,
        first_times,
        warm_times,
    );
    // Heap fragmentation and allocator metadata: a quarter on top of the measured need.
    assert!(
        needed + needed / 4 + GUEST_OVERHEAD_BYTES <= budget,
        "{name}: needs {} MiB of heap, too much for mem_mib = {}",
        needed / MIB,
        call.mem_mib()
    );
    assert!(
        needed + GUEST_OVERHEAD_BYTES >= budget / 3,
        "{name}: mem_mib = {} is far more than the {} MiB it needs",
        call.mem_mib(),
        needed / MIB
    );
}

#[test]
fn pyaes() {
    exercise("pyaes");
}

#[test]
fn gzip() {
    exercise("gzip");
}

#[test]
fn linpack() {
    exercise("linpack");
}

#[test]
fn image() {
    exercise("image");
}

#[test]
fn rnn() {
    exercise("rnn");
}

#[test]
fn bert() {
    exercise("bert");
}

#[test]
fn graph_bfs() {
    exercise("graph_bfs");
}

#[test]
fn html_serving() {
    exercise("html_serving");
}

#[test]
fn footprint() {
    exercise("footprint");
    exercise("footprint:200:3");
}

#[test]
fn a_call_is_written_back_as_it_is_read() {
    let call = Call::parse("footprint").expect("default argument");
    assert_eq!(std::format!("{call}"), "footprint:32:8");
    let call = Call::parse("footprint:6144:64").expect("an argument");
    assert_eq!(std::format!("{call}"), "footprint:6144:64");
    assert_eq!(crate::footprint::unpack(call.arg), (6144, 64));
    assert!(
        call.mem_mib() >= 6144 + 6,
        "room for the state and its ledger"
    );
    assert_eq!(
        std::format!("{}", Call::parse("pyaes").expect("pyaes")),
        "pyaes"
    );
    assert_eq!(Call::parse("pyaes:1").err(), Some(CallError::NoArgument));
    assert_eq!(
        Call::parse("nosuch").err(),
        Some(CallError::UnknownFunction)
    );
    for bad in [
        "footprint:",
        "footprint:8",
        "footprint:8:16",
        "footprint:8:0",
        "footprint:x:1",
    ] {
        assert!(
            matches!(Call::parse(bad), Err(CallError::BadArgument(_))),
            "{bad} must be refused"
        );
    }
}

#[test]
fn registry_is_consistent() {
    for (index, info) in FUNCTIONS.iter().enumerate() {
        assert_eq!(index_of(info.name), Some(index as u32));
        assert_eq!(crate::info(info.name).map(|i| i.name), Some(info.name));
        assert!(
            info.mem_mib <= 2048,
            "{}: guest RAM must stay within 2 GiB",
            info.name
        );
    }
    assert!(init(FUNCTIONS.len() as u32, 0).is_none());
    assert!(index_of("no-such-function").is_none());
}

/// Kibibytes of this process's memory referenced since the last [`clear_referenced`].
fn referenced_kib() -> Option<usize> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Referenced:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clears the referenced bits of every page of this process.
fn clear_referenced() -> bool {
    std::fs::write("/proc/self/clear_refs", "1").is_ok()
}

/// Measures the pages each invocation references, through `/proc/self/clear_refs`.
///
/// Fresh allocations large enough for the host allocator to `mmap` are unmapped again before
/// the count is read, so this is mostly the state (snapshot) pages an invocation touches:
/// the host-side analogue of the working set a restore strategy has to fetch. Process-wide,
/// so run it alone: `cargo test --release -p snapbpf-functions -- --ignored --test-threads 1
/// --nocapture`.
#[test]
#[ignore = "process-wide measurement; run alone with --test-threads 1"]
fn measure_referenced_memory_per_invocation() {
    if !clear_referenced() {
        println!("/proc/self/clear_refs is not writable; skipping");
        return;
    }
    for (index, info) in FUNCTIONS.iter().enumerate() {
        let mut function = init(index as u32, 0).expect("function initialises");
        let _ = clear_referenced();
        let idle = referenced_kib().unwrap_or(0);
        let mut touched = std::vec::Vec::new();
        for input in 0..info.inputs {
            let _ = clear_referenced();
            let _ = function.invoke(input);
            let kib = referenced_kib().unwrap_or(0).saturating_sub(idle);
            touched.push(std::format!(
                "input {input}: {:.1} MiB",
                kib as f64 / 1024.0
            ));
        }
        println!(
            "{:>13}: referenced per invocation: {}",
            info.name,
            touched.join(", ")
        );
    }
}
