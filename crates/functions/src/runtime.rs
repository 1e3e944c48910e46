//! The language-runtime footprint every function carries.
//!
//! A real FunctionBench or FaaSMem function runs in a Python interpreter: after init, its
//! memory holds the interpreter, the imported modules (numpy, torch, jinja2, ...) and their
//! heap, tens of MiB of small objects linked by pointers and scattered across the heap. An
//! invocation walks part of that graph (the interpreter loop, the library code on its path,
//! the objects it looks up), and bumps reference counts on what it touches, so it also
//! writes to some snapshot pages.
//!
//! `Runtime` reproduces that footprint:
//! - `Runtime::build` allocates boxed objects of skewed sizes grouped into modules, with
//!   links that form a pseudo-random chain through each module (pointer chasing, not a
//!   sequential scan). While building it also allocates and frees scratch objects between
//!   the kept ones, so the heap has holes full of stale data, as a real runtime's has after
//!   imports; later fresh allocations reuse those holes.
//! - `Runtime::walk` visits the core modules (always) plus an input-dependent third of the
//!   other modules, reads every payload byte of the visited objects, and increments then
//!   decrements their reference counts. About 57 % of the runtime's payload is read per
//!   invocation; two inputs share the core modules and about a third of the rest (about
//!   two thirds of what each reads).

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::synth::{hash2, Rng};

/// Number of modules the runtime's objects are grouped into.
const MODULES: usize = 64;
/// Modules `0..CORE_MODULES` (the interpreter core and builtins) are walked by every input.
const CORE_MODULES: usize = 16;
/// Each non-core module is walked by an input with probability `1 / OPTIONAL_MODULE_ODDS`.
const OPTIONAL_MODULE_ODDS: u64 = 3;

/// One heap object: a header with links, a reference count, and a boxed payload.
#[derive(Debug)]
struct HeapObject {
    /// Index of the next object of the module's chain (the walk order).
    next: u32,
    /// Index of another object of the same module this one refers to (an attribute).
    attribute: u32,
    /// Reference count, bumped while an invocation uses the object.
    refcount: u32,
    /// The object's data, allocated separately so objects scatter over the heap.
    payload: Box<[u64]>,
}

/// A group of objects walked together, as the code and data of one imported module.
#[derive(Debug, Clone, Copy)]
struct Module {
    /// First object of the module's chain.
    entry: u32,
    /// Number of objects in the module.
    len: u32,
}

/// The simulated interpreter heap of one function.
#[derive(Debug)]
pub(crate) struct Runtime {
    objects: Vec<HeapObject>,
    modules: Vec<Module>,
}

impl Runtime {
    /// Builds a runtime whose object payloads total about `payload_bytes`, from `seed`.
    pub(crate) fn build(payload_bytes: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let per_module = payload_bytes / MODULES;
        let mut objects: Vec<HeapObject> = Vec::new();
        let mut modules = Vec::with_capacity(MODULES);
        // Scratch objects freed at the end of init: the garbage a real init leaves behind.
        let mut garbage: Vec<Box<[u64]>> = Vec::new();
        for _ in 0..MODULES {
            let first = objects.len();
            let mut bytes = 0;
            // At least one object per module, so every module has an entry.
            while bytes < per_module || objects.len() == first {
                let words = object_words(&mut rng);
                bytes += words * 8;
                objects.push(HeapObject {
                    next: 0,
                    attribute: 0,
                    refcount: 1,
                    payload: heap_words(&mut rng, words),
                });
                if rng.below(3) == 0 {
                    let garbage_words = object_words(&mut rng);
                    garbage.push(heap_words(&mut rng, garbage_words));
                }
            }
            let len = objects.len() - first;
            // A random cyclic order over the module's objects: the walk chases pointers.
            let mut order: Vec<u32> = (first as u32..objects.len() as u32).collect();
            for i in (1..len).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for (position, &object) in order.iter().enumerate() {
                let successor = order[(position + 1) % len];
                let attribute = order[rng.below(len)];
                let header = &mut objects[object as usize];
                header.next = successor;
                header.attribute = attribute;
            }
            modules.push(Module {
                entry: order[0],
                len: len as u32,
            });
        }
        drop(garbage);
        Self { objects, modules }
    }

    /// Walks the modules `input` uses and returns a digest of everything it read.
    ///
    /// Leaves the runtime as it found it: reference counts are restored before returning.
    pub(crate) fn walk(&mut self, input: u32) -> u64 {
        let mut digest = 0u64;
        for pass in [RefcountChange::Acquire, RefcountChange::Release] {
            for (index, module) in self.modules.iter().enumerate() {
                if !module_is_used(input, index) {
                    continue;
                }
                let mut at = module.entry as usize;
                for _ in 0..module.len {
                    let object = &mut self.objects[at];
                    object.refcount = match pass {
                        RefcountChange::Acquire => object.refcount.wrapping_add(1),
                        RefcountChange::Release => object.refcount.wrapping_sub(1),
                    };
                    let next = object.next as usize;
                    if let RefcountChange::Acquire = pass {
                        let attribute = object.attribute as usize;
                        let sum = object
                            .payload
                            .iter()
                            .fold(0u64, |acc, &word| acc.wrapping_add(word));
                        let attribute_word = self.objects[attribute].payload[0];
                        digest = digest.rotate_left(7) ^ sum ^ attribute_word;
                    }
                    at = next;
                }
            }
        }
        digest
    }

    /// Total payload bytes of the runtime (the heap it occupies, headers excluded).
    #[cfg(test)]
    pub(crate) fn payload_bytes(&self) -> usize {
        self.objects.iter().map(|o| o.payload.len() * 8).sum()
    }

    /// Payload bytes the walk for `input` reads.
    #[cfg(test)]
    pub(crate) fn walked_bytes(&self, input: u32) -> usize {
        let mut bytes = 0;
        for (index, module) in self.modules.iter().enumerate() {
            if module_is_used(input, index) {
                let mut at = module.entry as usize;
                for _ in 0..module.len {
                    bytes += self.objects[at].payload.len() * 8;
                    at = self.objects[at].next as usize;
                }
            }
        }
        bytes
    }
}

/// The two passes of a walk.
#[derive(Debug, Clone, Copy)]
enum RefcountChange {
    Acquire,
    Release,
}

/// Whether the walk for `input` visits module `index`.
fn module_is_used(input: u32, index: usize) -> bool {
    index < CORE_MODULES
        || hash2(u64::from(input), index as u64).is_multiple_of(OPTIONAL_MODULE_ODDS)
}

/// A payload size in 8-byte words: mostly small objects, some medium, a few large ones
/// (averaging about 850 bytes).
fn object_words(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..70 => rng.in_range(4..32),
        70..95 => rng.in_range(32..256),
        _ => rng.in_range(256..2048),
    }
}

/// Where the simulated interpreter's heap lives (pointers in payloads point into it).
const HEAP_BASE: u64 = 0x0000_7f3a_5c00_0000;
/// Type objects payloads point to (a few dozen built-in and library types).
const TYPE_OBJECTS: usize = 48;
/// Identifiers and strings an interpreter heap is full of (attribute and method names,
/// module paths, dictionary keys), as they sit in string objects.
const IDENTIFIERS: [&[u8]; 32] = [
    b"__init__",
    b"self",
    b"__name__",
    b"__dict__",
    b"return",
    b"append",
    b"items",
    b"keys",
    b"value",
    b"numpy",
    b"ndarray",
    b"float64",
    b"int64",
    b"dtype",
    b"shape",
    b"__call__",
    b"encoding",
    b"utf-8",
    b"request",
    b"response",
    b"headers",
    b"content",
    b"json",
    b"loads",
    b"module",
    b"__file__",
    b"site-packages",
    b"/usr/lib/python3.11",
    b"typing",
    b"Optional",
    b"__module__",
    b"__qualname__",
];

/// A boxed slice of `words` words with the structure of interpreter heap objects: an
/// object header (a pointer to one of a few type objects, then a reference count or
/// length), then fields mixing pointers into the heap, small and tagged integers,
/// identifier strings and bytecode-like runs, with some high-entropy words (hashes,
/// floats). Uniform random bytes, which no real heap holds, would make every page of the
/// runtime incompressible; real interpreter heaps compress about 3-4x with zstd.
fn heap_words(rng: &mut Rng, words: usize) -> Box<[u64]> {
    let mut out = Vec::with_capacity(words);
    out.push(HEAP_BASE + rng.below(TYPE_OBJECTS) as u64 * 0x1a0);
    if words > 1 {
        out.push(1 + rng.below(64) as u64);
    }
    // Allocators place related objects together: most pointers stay near home.
    let home = HEAP_BASE + ((rng.below(512) as u64) << 16);
    while out.len() < words {
        match rng.below(100) {
            // A pointer to a nearby object (16-byte aligned), or to a type or module.
            0..24 => out.push(home + rng.below(4096) as u64 * 16),
            24..30 => out.push(HEAP_BASE + rng.below(TYPE_OBJECTS) as u64 * 0x1a0),
            // NULL fields and padding.
            30..40 => out.push(0),
            // Small integers, lengths, and tagged small ints.
            40..55 => out.push(rng.below(256) as u64),
            55..60 => out.push((rng.below(1 << 16) as u64) << 1 | 1),
            // An identifier string, 8 bytes per word, NUL-padded.
            60..86 => {
                let name = IDENTIFIERS[rng.below(IDENTIFIERS.len())];
                for chunk in name.chunks(8) {
                    let mut word = [0u8; 8];
                    word[..chunk.len()].copy_from_slice(chunk);
                    out.push(u64::from_le_bytes(word));
                }
            }
            // Bytecode: (opcode, argument) byte pairs from a small instruction set.
            86..96 => {
                let mut word = [0u8; 8];
                for pair in word.chunks_mut(2) {
                    pair[0] = [0x64, 0x7c, 0x83, 0x53, 0x74, 0x6a, 0xa0, 0x01][rng.below(8)];
                    pair[1] = rng.below(16) as u8;
                }
                out.push(u64::from_le_bytes(word));
            }
            // Hashes, floats, identities: no structure.
            _ => out.push(rng.next_u64()),
        }
    }
    out.truncate(words);
    out.into_boxed_slice()
}

/// The runtime footprint's payload bytes for `payload_bytes` and `seed`, as its objects
/// hold them (little-endian words, object after object): for measuring what the heap's
/// pages compress to.
pub fn footprint_bytes(payload_bytes: usize, seed: u64) -> Vec<u8> {
    let runtime = Runtime::build(payload_bytes, seed);
    runtime
        .objects
        .iter()
        .flat_map(|o| o.payload.iter().flat_map(|w| w.to_le_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_is_repeatable_and_input_dependent() {
        let mut runtime = Runtime::build(4 << 20, 7);
        let first = runtime.walk(0);
        assert_eq!(runtime.walk(0), first);
        assert_ne!(runtime.walk(1), first);
        assert!(runtime.objects.iter().all(|o| o.refcount == 1));
    }

    #[test]
    fn walk_touches_about_half() {
        let runtime = Runtime::build(8 << 20, 9);
        let total = runtime.payload_bytes();
        for input in 0..2 {
            let walked = runtime.walked_bytes(input);
            assert!(
                walked > total / 4 && walked < total * 3 / 4,
                "{walked} of {total}"
            );
        }
    }
}
