/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared between capture.bpf.c and src/capture.rs: the ring buffer record and the
 * counter indices. The Rust side parses the record at the byte offsets asserted below.
 */
#ifndef SNAPBPF_CAPTURE_H
#define SNAPBPF_CAPTURE_H

/* Which tracepoint produced an event. */
#define SNAPBPF_SRC_ADD_TO_PAGE_CACHE 0
#define SNAPBPF_SRC_FAULT 1
#define SNAPBPF_SRC_MAP_PAGES 2

/* Indices into the per-CPU `counters` array. */
#define SNAPBPF_CNT_MATCHED 0 /* events on the target file */
#define SNAPBPF_CNT_EMITTED 1 /* events written to the ring buffer */
#define SNAPBPF_CNT_LOST 2    /* bpf_ringbuf_reserve() failures (ring buffer full) */
#define SNAPBPF_CNT_MAX 4

struct snapbpf_event {
	__u64 index;    /* first page index (file offset / 4096) */
	__u64 ts_ns;    /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u32 nr_pages; /* pages covered: 1 << order, or last_index - index + 1 */
	__u8 source;    /* SNAPBPF_SRC_* */
	__u8 order;     /* folio order (add_to_page_cache only, else 0) */
	__u16 pad;
};

_Static_assert(sizeof(struct snapbpf_event) == 24, "snapbpf_event layout");
_Static_assert(__builtin_offsetof(struct snapbpf_event, ts_ns) == 8, "ts_ns offset");
_Static_assert(__builtin_offsetof(struct snapbpf_event, nr_pages) == 16, "nr_pages offset");
_Static_assert(__builtin_offsetof(struct snapbpf_event, source) == 20, "source offset");
_Static_assert(__builtin_offsetof(struct snapbpf_event, order) == 21, "order offset");

#endif
