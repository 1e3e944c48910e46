//! `graph_bfs`: breadth-first search over a large graph, as FaaSMem's `graph_bfs` does.
//!
//! FaaSMem's graph_bfs builds a large random graph with igraph and runs a BFS from a given
//! vertex. Here a directed graph of four communities of 512 Ki vertices each (2 Mi vertices,
//! about 16.8 M edges, 4 to 12 random out-edges per vertex inside its community) is built at
//! init in compressed sparse row (CSR) form. A few bridge edges lead from community 0 to 1,
//! from 1 to 2 and from 3 to 2, so a search from community 0 (input 0) reaches communities
//! 0, 1 and 2, and one from community 3 (input 1) reaches 3 and 2.
//!
//! Memory behaviour: large and input-dependent. The graph takes about 72 MiB (64 MiB of edge
//! targets, 8 MiB of row offsets); an invocation reads the part of it its source reaches
//! (about 54 MiB for input 0, 36 MiB for input 1, sharing community 2), allocates a fresh
//! 8 MiB distance array and an 8 MiB queue, and walks about 57 % of a 24 MiB runtime heap:
//! about 85 MiB (input 0) or 67 MiB (input 1) touched per invocation (estimate).

use alloc::vec;
use alloc::vec::Vec;

use crate::runtime::Runtime;
use crate::synth::{hash2, Rng};
use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "graph_bfs",
    description: "breadth-first search over a 2 Mi-vertex, 17 M-edge community graph",
    mem_mib: 192,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Vertices per community.
const COMMUNITY_VERTICES: usize = 1 << 19;
/// Number of communities.
const COMMUNITIES: usize = 4;
/// Total number of vertices.
const VERTICES: usize = COMMUNITY_VERTICES * COMMUNITIES;
/// Community that bridge edges from each community lead to, if any.
const BRIDGES_TO: [Option<usize>; COMMUNITIES] = [Some(1), Some(2), None, Some(2)];
/// One vertex in `BRIDGE_ODDS` of a bridged community gets a bridge edge.
const BRIDGE_ODDS: usize = 64;
/// Community the search of each input starts in.
const SOURCE_COMMUNITY: [usize; 2] = [0, 3];
/// Payload bytes of the simulated runtime heap (igraph and the interpreter).
const RUNTIME_BYTES: usize = 24 << 20;
/// Distance of a vertex the search has not reached.
const UNREACHED: u32 = u32::MAX;

/// A directed graph in compressed sparse row form.
#[derive(Debug)]
pub(crate) struct Graph {
    /// The out-edges of vertex `v` are `targets[offsets[v]..offsets[v + 1]]`.
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Graph {
    /// Builds the community graph.
    fn communities() -> Self {
        /// Marks, in a scratch degree entry, a vertex whose last edge is a bridge.
        const BRIDGE_FLAG: u8 = 0x80;
        let mut rng = Rng::new(0x0067_7261_7068);
        // Degrees first, in a scratch array freed once the offsets exist.
        let degrees: Vec<u8> = (0..VERTICES)
            .map(|vertex| {
                let local = rng.in_range(4..13) as u8;
                let bridged = BRIDGES_TO[vertex / COMMUNITY_VERTICES].is_some()
                    && rng.below(BRIDGE_ODDS) == 0;
                if bridged {
                    (local + 1) | BRIDGE_FLAG
                } else {
                    local
                }
            })
            .collect();
        let mut offsets = Vec::with_capacity(VERTICES + 1);
        let mut total = 0u32;
        offsets.push(0);
        for &degree in &degrees {
            total += u32::from(degree & !BRIDGE_FLAG);
            offsets.push(total);
        }
        let mut targets = vec![0u32; total as usize];
        for (vertex, &degree) in degrees.iter().enumerate() {
            let community = vertex / COMMUNITY_VERTICES;
            let base = community * COMMUNITY_VERTICES;
            let edges = &mut targets[offsets[vertex] as usize..offsets[vertex + 1] as usize];
            for target in edges.iter_mut() {
                *target = (base + rng.below(COMMUNITY_VERTICES)) as u32;
            }
            if let (Some(to), true, Some(last)) = (
                BRIDGES_TO[community],
                degree & BRIDGE_FLAG != 0,
                edges.last_mut(),
            ) {
                *last = (to * COMMUNITY_VERTICES + rng.below(COMMUNITY_VERTICES)) as u32;
            }
            edges.sort_unstable();
        }
        drop(degrees);
        Self { offsets, targets }
    }

    /// The out-neighbours of `vertex`.
    fn neighbours(&self, vertex: usize) -> &[u32] {
        &self.targets[self.offsets[vertex] as usize..self.offsets[vertex + 1] as usize]
    }
}

/// What one search found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Search {
    /// Number of vertices reached, the source included.
    pub(crate) reached: usize,
    /// Largest distance from the source.
    pub(crate) depth: u32,
    /// Number of vertices at each distance.
    pub(crate) per_level: Vec<u32>,
}

/// Breadth-first search from `source`, with a fresh distance array and queue.
fn breadth_first(graph: &Graph, source: usize) -> Search {
    let mut distance = vec![UNREACHED; VERTICES];
    let mut queue: Vec<u32> = Vec::with_capacity(VERTICES);
    distance[source] = 0;
    queue.push(source as u32);
    let mut head = 0;
    let mut per_level = vec![0u32];
    while head < queue.len() {
        let vertex = queue[head] as usize;
        head += 1;
        let next = distance[vertex] + 1;
        for &target in graph.neighbours(vertex) {
            let slot = &mut distance[target as usize];
            if *slot == UNREACHED {
                *slot = next;
                queue.push(target);
                if per_level.len() <= next as usize {
                    per_level.push(0);
                }
                per_level[next as usize] += 1;
            }
        }
    }
    per_level[0] = 1;
    Search {
        reached: queue.len(),
        depth: per_level.len() as u32 - 1,
        per_level,
    }
}

pub(crate) struct GraphBfs {
    graph: Graph,
    runtime: Runtime,
}

impl GraphBfs {
    pub(crate) fn init() -> Self {
        let runtime = Runtime::build(RUNTIME_BYTES, 0x0062_6673);
        Self {
            graph: Graph::communities(),
            runtime,
        }
    }

    /// The vertex the search for `input` starts from.
    fn source(input: u32) -> usize {
        let community = SOURCE_COMMUNITY[input as usize % SOURCE_COMMUNITY.len()];
        community * COMMUNITY_VERTICES
            + (hash2(0x736f_7572_6365, u64::from(input)) as usize % COMMUNITY_VERTICES)
    }
}

impl Function for GraphBfs {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let search = breadth_first(&self.graph, Self::source(input));
        sum.update_u64(search.reached as u64);
        sum.update_u64(u64::from(search.depth));
        for &count in &search.per_level {
            sum.update_u64(u64::from(count));
        }
        sum.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the vertices reachable from `source` with an independent depth-first search.
    fn reachable_by_dfs(graph: &Graph, source: usize) -> usize {
        let mut seen = vec![false; VERTICES];
        let mut stack = vec![source];
        seen[source] = true;
        let mut count = 0;
        while let Some(vertex) = stack.pop() {
            count += 1;
            for &target in graph.neighbours(vertex) {
                if !core::mem::replace(&mut seen[target as usize], true) {
                    stack.push(target as usize);
                }
            }
        }
        count
    }

    #[test]
    fn search_reaches_the_bridged_communities() {
        let function = GraphBfs::init();
        for input in 0..INFO.inputs {
            let source = GraphBfs::source(input);
            let search = breadth_first(&function.graph, source);
            assert_eq!(search.reached, reachable_by_dfs(&function.graph, source));
            assert_eq!(
                search.per_level.iter().map(|&c| c as usize).sum::<usize>(),
                search.reached
            );
            let communities = if input == 0 { 3 } else { 2 };
            let expected = communities * COMMUNITY_VERTICES;
            assert!(
                search.reached <= expected && search.reached > expected * 99 / 100,
                "input {input} reached {} of {expected}",
                search.reached
            );
        }
    }
}
