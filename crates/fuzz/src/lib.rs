//! Mutation fuzzing of every parser that reads untrusted bytes, on stable Rust.
//!
//! Each [`Target`] starts from valid inputs its own format writes (seeds) and feeds the
//! parser mutated copies: bit flips, byte overwrites with boundary values, truncation,
//! insertion, deletion and splices, and for JSON formats also structural mutations
//! (a value replaced by an extreme one, a key removed, a container emptied or nested).
//! Binary formats that end in a CRC32 get it recomputed after mutating, so the mutations
//! reach the code behind the checksum instead of stopping at it. A parser may refuse an
//! input; it must not panic, hang or allocate without bound, and what it accepts must
//! survive what the program does next with it (validation, rendering).
//!
//! `cargo run --release -p snapbpf-fuzz -- --seconds 600` runs every target; the test suite
//! runs each for a bounded number of inputs.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

/// One parser under test.
#[derive(Debug)]
pub struct Target {
    /// Name, as on the command line.
    pub name: &'static str,
    /// Valid inputs to mutate.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Parses (and uses) one input; returns whether it was accepted.
    pub run: fn(&[u8]) -> bool,
    /// The format is JSON: also mutate it structurally.
    pub json: bool,
    /// The format ends in a CRC32 of every byte before it: recompute it after mutating.
    pub trailing_crc: bool,
    /// Inputs are snapbpf artifact containers: also mutate the JSON header structurally
    /// and the payload's u64 words, and frame the result validly (lengths and CRC), so
    /// mutations reach the loader behind the container.
    pub container: bool,
}

/// Every target.
pub fn targets() -> Vec<Target> {
    let mut targets = vec![
        Target {
            name: "snapshot-json",
            seeds: seeds::snapshot_json,
            run: parse::snapshot_json,
            json: true,
            trailing_crc: false,
            container: false,
        },
        Target {
            name: "vcpu",
            seeds: seeds::vcpu,
            run: parse::vcpu,
            json: false,
            trailing_crc: true,
            container: false,
        },
        Target {
            name: "artifact",
            seeds: seeds::artifact,
            run: parse::artifact,
            json: false,
            trailing_crc: true,
            container: true,
        },
        Target {
            name: "working-set",
            seeds: seeds::working_set,
            run: parse::working_set,
            json: false,
            trailing_crc: true,
            container: false,
        },
        Target {
            name: "handshake-regions",
            seeds: seeds::regions,
            run: parse::regions,
            json: true,
            trailing_crc: false,
            container: false,
        },
        Target {
            name: "handshake-ack",
            seeds: seeds::ack,
            run: parse::ack,
            json: true,
            trailing_crc: false,
            container: false,
        },
        Target {
            name: "handshake-hello",
            seeds: seeds::hello,
            run: parse::hello,
            json: true,
            trailing_crc: false,
            container: false,
        },
        Target {
            name: "store-request",
            seeds: seeds::store_request,
            run: parse::store_request,
            json: true,
            trailing_crc: false,
            container: false,
        },
        Target {
            name: "store-reply",
            seeds: seeds::store_reply,
            run: parse::store_reply,
            json: true,
            trailing_crc: false,
            container: false,
        },
        Target {
            name: "fleet-manifest",
            seeds: seeds::manifest,
            run: parse::manifest,
            json: false,
            trailing_crc: true,
            container: true,
        },
        Target {
            name: "verified-cache",
            seeds: seeds::verified,
            run: parse::verified,
            json: true,
            trailing_crc: false,
            container: false,
        },
        Target {
            name: "results-json",
            seeds: seeds::results,
            run: parse::results,
            json: true,
            trailing_crc: false,
            container: false,
        },
    ];
    // Every strategy's own artifact loader, with valid framing (the container's CRC is
    // recomputed), behind the container: `loader-<strategy>`.
    targets.extend(
        snapbpf::strategy::REGISTRY
            .iter()
            .zip(loader_names())
            .filter_map(|(info, name)| {
                info.loader.map(|loader| Target {
                    name,
                    seeds: loader.seeds,
                    run: loader.check,
                    json: false,
                    trailing_crc: true,
                    container: true,
                })
            }),
    );
    targets
}

/// `loader-<strategy>` for every strategy in the registry, made once.
fn loader_names() -> impl Iterator<Item = &'static str> {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            snapbpf::strategy::REGISTRY
                .iter()
                .map(|info| format!("loader-{}", info.name))
                .collect()
        })
        .iter()
        .map(String::as_str)
}

/// What a fuzzing run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Inputs fed to the parser.
    pub inputs: u64,
    /// Inputs it accepted.
    pub accepted: u64,
    /// Inputs that made it panic (the first one is kept).
    pub crashes: u64,
    /// The first crashing input.
    pub first_crash: Option<Vec<u8>>,
}

/// Feeds `target` mutated inputs until `max_inputs` or `max_time`, from a fixed `seed`
/// (runs are reproducible).
pub fn fuzz(target: &Target, max_inputs: u64, max_time: Duration, seed: u64) -> Outcome {
    let seeds = (target.seeds)();
    let mut rng = Rng(seed | 1);
    let mut outcome = Outcome::default();
    let started = Instant::now();
    // Silence the default hook's message per crash; crashes are counted and reported.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    while outcome.inputs < max_inputs && started.elapsed() < max_time {
        let base = &seeds[rng.below(seeds.len() as u64) as usize];
        let mut input = if target.json && rng.below(2) == 0 {
            mutate_json(&mut rng, base).unwrap_or_else(|| mutate_bytes(&mut rng, base, &seeds))
        } else if target.container && rng.below(2) == 0 {
            mutate_container(&mut rng, base).unwrap_or_else(|| mutate_bytes(&mut rng, base, &seeds))
        } else {
            mutate_bytes(&mut rng, base, &seeds)
        };
        if target.trailing_crc && input.len() >= 4 && rng.below(8) != 0 {
            let n = input.len() - 4;
            let crc = crc32fast::hash(&input[..n]);
            input[n..].copy_from_slice(&crc.to_le_bytes());
        }
        outcome.inputs += 1;
        match std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
            Ok(true) => outcome.accepted += 1,
            Ok(false) => {}
            Err(_) => {
                outcome.crashes += 1;
                outcome.first_crash.get_or_insert(input);
            }
        }
    }
    std::panic::set_hook(hook);
    outcome
}

/// xorshift64*: fast, and enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Values at the edges of what length and offset fields hold.
const INTERESTING: [u64; 12] = [
    0,
    1,
    4095,
    4096,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

fn mutate_bytes(rng: &mut Rng, base: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len() as u64;
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len) as usize;
                v[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len) as usize;
                v[at] = rng.next() as u8;
            }
            2 if len >= 8 => {
                // An aligned little-endian field set to a boundary value.
                let at = (rng.below(len - 7) as usize) & !3;
                let value = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let bytes = value.to_le_bytes();
                let end = (at + width).min(v.len());
                v[at..end].copy_from_slice(&bytes[..end - at]);
            }
            3 => v.truncate(rng.below(len + 1) as usize),
            4 => {
                let at = rng.below(len + 1) as usize;
                let n = rng.below(64) as usize + 1;
                let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, fill);
            }
            5 if len > 0 => {
                let at = rng.below(len) as usize;
                let n = (rng.below(64) as usize + 1).min(v.len() - at);
                v.drain(at..at + n);
            }
            6 => {
                // Splice: the head of this input, the tail of another seed.
                let other = &seeds[rng.below(seeds.len() as u64) as usize];
                let cut = rng.below(len + 1) as usize;
                let from = rng.below(other.len() as u64 + 1) as usize;
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                // Duplicate a chunk (repeated records, doubled counts).
                let at = rng.below(len) as usize;
                let n = (rng.below(256) as usize + 1).min(v.len() - at);
                let chunk = v[at..at + n].to_vec();
                v.splice(at..at, chunk);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// Mutates the header or the payload (structurally where it is JSON, by u64 words where
/// not) of an artifact container (see `snapbpf_store::artifact`) and frames the result
/// again: lengths and CRC valid.
fn mutate_container(rng: &mut Rng, base: &[u8]) -> Option<Vec<u8>> {
    const FIXED: usize = 8 + 4 + 16 + 4;
    let header_len = u32::from_le_bytes(base.get(FIXED - 4..FIXED)?.try_into().ok()?) as usize;
    let header = base.get(FIXED..FIXED.checked_add(header_len)?)?;
    let at = FIXED + header_len;
    let payload_len = u64::from_le_bytes(base.get(at..at + 8)?.try_into().ok()?) as usize;
    let payload = base.get(at + 8..(at + 8).checked_add(payload_len)?)?;
    let (mut header, mut payload) = (header.to_vec(), payload.to_vec());
    let json_payload = serde_json::from_slice::<serde_json::Value>(&payload).is_ok();
    if rng.below(2) == 0 {
        header = mutate_json(rng, &header)?;
    } else if json_payload {
        payload = mutate_json(rng, &payload)?;
    } else {
        for _ in 0..=rng.below(3) {
            let words = payload.len() / 8;
            if words == 0 {
                break;
            }
            let w = rng.below(words as u64) as usize * 8;
            let value = match rng.below(4) {
                0 => INTERESTING[rng.below(INTERESTING.len() as u64) as usize],
                1 => rng.next(),
                // Near a page-sized product's overflow, and just past a small memory.
                2 => u64::MAX / 4096 + rng.below(3),
                _ => (64 << 20) + 4096 * rng.below(3),
            };
            payload[w..w + 8].copy_from_slice(&value.to_le_bytes());
        }
    }
    let mut out = base[..FIXED - 4].to_vec();
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Some(out)
}

fn mutate_json(rng: &mut Rng, base: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(base).ok()?;
    for _ in 0..=rng.below(3) {
        let mut leaves = 0u64;
        count_nodes(&value, &mut leaves);
        let pick = rng.below(leaves.max(1));
        let mut seen = 0u64;
        mutate_node(rng, &mut value, pick, &mut seen);
    }
    serde_json::to_vec(&value).ok()
}

fn count_nodes(v: &serde_json::Value, n: &mut u64) {
    *n += 1;
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|c| count_nodes(c, n)),
        serde_json::Value::Object(o) => o.values().for_each(|c| count_nodes(c, n)),
        _ => {}
    }
}

fn mutate_node(rng: &mut Rng, v: &mut serde_json::Value, pick: u64, seen: &mut u64) -> bool {
    use serde_json::{json, Value};
    if *seen == pick {
        *v = match rng.below(10) {
            0 => json!(INTERESTING[rng.below(INTERESTING.len() as u64) as usize]),
            1 => json!(-(rng.below(1 << 40) as i64) - 1),
            2 => json!(f64::MAX),
            3 => json!(1e308 * (rng.below(3) as f64 - 1.0)),
            4 => json!(""),
            5 => Value::String("x".repeat(rng.below(5000) as usize)),
            6 => Value::Null,
            7 => match &*v {
                Value::Array(a) => {
                    let mut a = a.clone();
                    if let Some(first) = a.first().cloned() {
                        for _ in 0..rng.below(50) {
                            a.push(first.clone());
                        }
                    }
                    Value::Array(a)
                }
                Value::Object(o) => {
                    let mut o = o.clone();
                    if let Some(k) = o.keys().nth(rng.below(o.len() as u64) as usize).cloned() {
                        o.remove(&k);
                    }
                    Value::Object(o)
                }
                other => json!([other.clone()]),
            },
            8 => json!({}),
            _ => json!(rng.below(u64::MAX) as f64 / 3.0),
        };
        return true;
    }
    *seen += 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|c| mutate_node(rng, c, pick, seen)),
        Value::Object(o) => o.values_mut().any(|c| mutate_node(rng, c, pick, seen)),
        _ => false,
    }
}

/// Valid inputs, written by each format's own writer.
mod seeds {
    use super::*;
    use snapbpf_store::FileIdentity;
    use snapbpf_uffd::{GuestRegionUffdMapping, HandlerAck};
    use snapbpf_wss::workingset::{CaptureMeta, WorkingSet};

    pub fn snapshot_json() -> Vec<Vec<u8>> {
        let meta = serde_json::json!({
            "format": "snapbpf-snapshot", "version": 2, "function": "pyaes",
            "function_index": 0, "mem_bytes": 67108864u64, "abi_version": 1,
            "guest_digest": "0123456789abcdef",
            "memory": {"size": 67108864u64, "tree_sha256": "ab".repeat(32)},
            "vcpu_crc32": 12345, "init_ms": 81.5, "created_unix": 1_700_000_000u64,
            "snapbpf_version": "0.1.0"
        });
        vec![serde_json::to_vec_pretty(&meta).unwrap_or_default()]
    }

    pub fn vcpu() -> Vec<Vec<u8>> {
        let mut state = snapbpf_vmm::VcpuState::default();
        state.regs.rip = 0x10_0000;
        state.sregs.cr0 = 0x8000_0031;
        vec![
            snapbpf_vmm::VcpuState::default().to_bytes(),
            state.to_bytes(),
        ]
    }

    pub fn artifact() -> Vec<Vec<u8>> {
        let header = serde_json::json!({
            "memory": {"size": 1u64 << 26, "tree_sha256": "cd".repeat(32)},
            "page_size": 4096, "pages": 3, "ws_bytes": 12288, "ws_crc32": 7, "input": 0
        });
        let payload: Vec<u8> = [0u64, 4096, 8192]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        for (kind, p) in [
            ("reap-trace", payload.as_slice()),
            ("faasnap-meta", &[][..]),
        ] {
            out.push(snapbpf_store::artifact::encode(kind, &header, p).unwrap_or_default());
        }
        out
    }

    pub fn working_set() -> Vec<Vec<u8>> {
        let id = FileIdentity {
            size: 1 << 26,
            digest: [9; 32],
        };
        let meta = CaptureMeta {
            total_events: 9,
            captures: 1,
            order_histogram: vec![5, 0, 1],
            ..CaptureMeta::default()
        };
        let pages = [(100, 50), (101, 10), (102, 70), (5, 30), (7, 20), (8, 90)];
        vec![
            WorkingSet::from_pages(id, pages, meta)
                .to_bytes()
                .unwrap_or_default(),
            WorkingSet::from_pages(id, [], CaptureMeta::default())
                .to_bytes()
                .unwrap_or_default(),
        ]
    }

    pub fn regions() -> Vec<Vec<u8>> {
        let r = |base, size, offset| GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size,
            offset,
            page_size: 4096,
        };
        vec![
            serde_json::to_vec(&[r(0x7f00_0000_0000, 1 << 26, 0)]).unwrap_or_default(),
            serde_json::to_vec(&[
                r(0x7f00_0000_0000, 1 << 20, 0),
                r(0x7f10_0000_0000, 1 << 21, 1 << 20),
            ])
            .unwrap_or_default(),
        ]
    }

    pub fn ack() -> Vec<Vec<u8>> {
        let ack = HandlerAck {
            bytes: 4096,
            ranges: 1,
            ms: 0.5,
            error: Some("prefetch failed".into()),
        };
        vec![
            serde_json::to_vec(&ack).unwrap_or_default(),
            serde_json::to_vec(&HandlerAck::default()).unwrap_or_default(),
        ]
    }

    pub fn hello() -> Vec<Vec<u8>> {
        let hello = snapbpf_uffd::HandlerHello {
            snapbpf_handler: 1,
            memory: FileIdentity {
                size: 1 << 26,
                digest: [7; 32],
            },
        };
        vec![serde_json::to_vec(&hello).unwrap_or_default()]
    }

    pub fn store_request() -> Vec<Vec<u8>> {
        use snapbpf_memstore::Request;
        [
            Request::Get {
                memory: snapbpf_store::FileIdentity::of_bytes(b"bert"),
                dir: Some("/snapshots/bert".into()),
            },
            Request::Get {
                memory: snapbpf_store::FileIdentity::of_bytes(b"pyaes"),
                dir: None,
            },
            Request::Add {
                dir: "/snapshots/pyaes".into(),
            },
            Request::Evict {
                memory: snapbpf_store::FileIdentity::of_bytes(b"x"),
            },
            Request::List,
            Request::Stats,
        ]
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap_or_default())
        .collect()
    }

    pub fn store_reply() -> Vec<Vec<u8>> {
        use snapbpf_memstore::{Backing, Extent, Held, Reply, Residency, Stats};
        let held = Held {
            dir: "/snapshots/bert".into(),
            function: "bert".into(),
            memory: FileIdentity {
                size: 1 << 26,
                digest: [8; 32],
            },
            bytes: 1 << 20,
            resident: Residency::WorkingSet,
            backing: Backing::Shmem,
        };
        let empty = Reply::empty();
        [
            Reply {
                held: Some(held.clone()),
                hit: Some(true),
                extents: Some(vec![
                    Extent { page: 0, pages: 3 },
                    Extent { page: 9, pages: 1 },
                ]),
                ..empty.clone()
            },
            Reply {
                snapshots: Some(vec![held]),
                ..empty.clone()
            },
            Reply {
                stats: Some(Stats::default()),
                ..empty.clone()
            },
            Reply {
                error: Some("the store is busy".into()),
                ..empty
            },
        ]
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap_or_default())
        .collect()
    }

    pub fn manifest() -> Vec<Vec<u8>> {
        use snapbpf_fleet::manifest::{ChunkRef, FileEntry, Manifest};
        let id = |size, byte| FileIdentity {
            size,
            digest: [byte; 32],
        };
        let chunk = |size, byte| ChunkRef {
            id: Some(id(size, byte)),
            stored: size / 2,
        };
        // The memory file's identity is the tree its chunks compose into.
        let mut tree = snapbpf_store::TreeHasher::new();
        let composed = tree
            .push_subtree(1 << 20, [2; 32])
            .map(|()| tree.update_zeros(1 << 20))
            .and_then(|()| tree.push_subtree(1 << 20, [3; 32]));
        assert!(composed.is_ok(), "aligned chunks compose");
        let memory = tree.finish();
        let manifest = Manifest {
            name: "bert".into(),
            function: "bert".into(),
            memory,
            chunk_size: 1 << 20,
            files: vec![
                FileEntry {
                    name: "memory".into(),
                    id: memory,
                    chunks: vec![
                        chunk(1 << 20, 2),
                        ChunkRef {
                            id: None,
                            stored: 0,
                        },
                        chunk(1 << 20, 3),
                    ],
                },
                FileEntry {
                    name: "snapshot.json".into(),
                    id: id(600, 4),
                    chunks: vec![chunk(600, 4)],
                },
            ],
            pushed_unix_ns: 1,
        };
        vec![manifest.encode().unwrap_or_default()]
    }

    pub fn verified() -> Vec<Vec<u8>> {
        let files = [snapbpf_store::verify::Vouched {
            name: "memory".into(),
            size: 1 << 26,
            mtime_ns: 1,
            ctime_ns: 2,
            inode: 3,
            dev: 4,
            identity: FileIdentity {
                size: 1 << 26,
                digest: [5; 32],
            },
        }];
        vec![snapbpf_store::verify::vouch(&files)]
    }

    /// A small run's results: the committed full run's, cut to a few of each record.
    pub fn results() -> Vec<Vec<u8>> {
        let full = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/results/full/native/results.json");
        let Ok(raw) = std::fs::read(full) else {
            return vec![b"{}".to_vec()];
        };
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&raw) else {
            return vec![b"{}".to_vec()];
        };
        if let Some(o) = v.as_object_mut() {
            for (key, keep) in [
                ("samples", 24),
                ("records", 4),
                ("snapshots", 3),
                ("device_bounds", 3),
                ("references", 3),
                ("wrong", 2),
            ] {
                if let Some(a) = o.get_mut(key).and_then(|a| a.as_array_mut()) {
                    a.truncate(keep);
                }
            }
        }
        vec![serde_json::to_vec(&v).unwrap_or_default()]
    }
}

/// Each parser, and what the program does with what it accepts.
mod parse {
    use super::*;

    pub fn snapshot_json(b: &[u8]) -> bool {
        snapbpf_store::snapshot::parse_meta(b, Path::new("snapshot.json")).is_ok()
    }

    pub fn vcpu(b: &[u8]) -> bool {
        snapbpf_vmm::VcpuState::from_bytes(b).is_ok()
    }

    pub fn artifact(b: &[u8]) -> bool {
        let path = Path::new("artifact");
        let decoded = snapbpf_store::artifact::decode::<serde_json::Value>(b, "reap-trace", path)
            .or_else(|_| {
                snapbpf_store::artifact::decode::<serde_json::Value>(b, "faasnap-meta", path)
            });
        match decoded {
            Ok((_, payload)) => {
                let _ = snapbpf_store::artifact::u64s(&payload);
                true
            }
            Err(_) => false,
        }
    }

    pub fn working_set(b: &[u8]) -> bool {
        match snapbpf_wss::workingset::WorkingSet::from_bytes(b) {
            Ok(ws) => {
                // What a restore does with one: sizes and a round trip.
                let _ = (ws.total_pages(), ws.total_bytes());
                let again = snapbpf_wss::workingset::WorkingSet::from_bytes(
                    &ws.to_bytes().unwrap_or_default(),
                );
                assert_eq!(
                    again.ok().as_ref(),
                    Some(&ws),
                    "a working set survives a round trip"
                );
                true
            }
            Err(_) => false,
        }
    }

    pub fn regions(b: &[u8]) -> bool {
        let Ok(regions) = snapbpf_uffd::handshake::parse_regions(b) else {
            return false;
        };
        let accepted = snapbpf_uffd::check_regions(&regions, 1 << 26).is_ok();
        for r in &regions {
            for probe in [0, r.offset, r.base_host_virt_addr, u64::MAX, r.size] {
                let _ = (r.host_addr(probe), r.file_offset(probe));
            }
        }
        accepted
    }

    pub fn ack(b: &[u8]) -> bool {
        std::str::from_utf8(b).is_ok_and(|s| snapbpf_uffd::handshake::parse_ack(s).is_ok())
    }

    pub fn hello(b: &[u8]) -> bool {
        serde_json::from_slice::<snapbpf_uffd::HandlerHello>(b).is_ok()
    }

    pub fn store_request(b: &[u8]) -> bool {
        serde_json::from_slice::<snapbpf_memstore::Request>(b).is_ok()
    }

    pub fn store_reply(b: &[u8]) -> bool {
        match serde_json::from_slice::<snapbpf_memstore::Reply>(b) {
            Ok(reply) => {
                // What the client does with extents: checks them against the memory.
                if let Some(extents) = &reply.extents {
                    let _ = snapbpf_memstore::protocol::extents_are_valid(extents, 1 << 14);
                }
                true
            }
            Err(_) => false,
        }
    }

    pub fn manifest(b: &[u8]) -> bool {
        match snapbpf_fleet::manifest::Manifest::decode(b, "fuzz/manifest") {
            Ok(m) => {
                // What the mount does with one: every file's chunks, by offset.
                for f in &m.files {
                    for probe in [0, m.chunk_size, f.id.size, u64::MAX] {
                        if let Some((i, _)) = f.chunk_at(probe, m.chunk_size) {
                            let _ = f.chunk_len(i, m.chunk_size);
                        }
                    }
                }
                true
            }
            Err(_) => false,
        }
    }

    pub fn verified(b: &[u8]) -> bool {
        snapbpf_store::verify::vouched_identities(b).is_some()
    }

    pub fn results(b: &[u8]) -> bool {
        let Ok(results) = serde_json::from_slice::<snapbpf_bench::BenchResults>(b) else {
            return false;
        };
        // What --replot does with it, short of writing files.
        let _ = snapbpf_bench::report::markdown(&results);
        let _ = snapbpf_bench::report::console(&results);
        let _ = snapbpf_bench::report::figures(&results);
        true
    }
}
