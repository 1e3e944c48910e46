// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * SnapBPF working-set capture: records which pages of one file enter the page cache
 * (or are faulted / mapped), and when, into a ring buffer.
 *
 * No vmlinux.h: the tracepoint records are declared here by hand with the kernel's BTF
 * type names and `preserve_access_index`, so libbpf relocates every field offset against
 * the running kernel's BTF (CO-RE). Fields that older kernels lack are probed with
 * bpf_core_field_exists().
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "capture.h"

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct trace_entry {
	unsigned short type;
	unsigned char flags;
	unsigned char preempt_count;
	int pid;
};

struct trace_event_raw_mm_filemap_op_page_cache {
	struct trace_entry ent;
	unsigned long pfn;
	unsigned long i_ino;
	unsigned long index;
	__u32 s_dev;
	unsigned char order;
};

struct trace_event_raw_mm_filemap_fault {
	struct trace_entry ent;
	unsigned long i_ino;
	__u32 s_dev;
	unsigned long index;
};

struct trace_event_raw_mm_filemap_op_page_cache_range {
	struct trace_entry ent;
	unsigned long i_ino;
	__u32 s_dev;
	unsigned long index;
	unsigned long last_index;
};
#pragma clang attribute pop

/* Set by userspace before load. s_dev is the kernel encoding: major << 20 | minor. */
const volatile __u32 target_dev = 0;
const volatile __u64 target_ino = 0;
/*
 * When non-zero, only events raised by this process (thread group id, as the initial PID
 * namespace numbers it) count: attaching to one running VMM among many on the same file.
 * Page-cache insertions, faults and fault-around all run in the faulting task's context.
 */
const volatile __u32 target_tgid = 0;
/*
 * Wake the consumer only once this many bytes are pending. Waking it for every event
 * costs a context switch per page on a 2-core host (measured: +33% on the traced
 * workload); the consumer also drains on a timer, so events are never stranded.
 */
const volatile __u64 wakeup_bytes = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by userspace before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SNAPBPF_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline int emit(__u64 dev, __u64 ino, __u64 index, __u32 nr_pages, __u8 source,
				__u8 order)
{
	struct snapbpf_event *e;

	if (dev != target_dev || ino != target_ino)
		return 0;
	if (target_tgid && (__u32)(bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	count(SNAPBPF_CNT_MATCHED);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(SNAPBPF_CNT_LOST);
		return 0;
	}
	e->index = index;
	e->ts_ns = bpf_ktime_get_ns();
	e->nr_pages = nr_pages;
	e->source = source;
	e->order = order;
	e->pad = 0;
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes
				     ? BPF_RB_FORCE_WAKEUP
				     : BPF_RB_NO_WAKEUP);
	count(SNAPBPF_CNT_EMITTED);
	return 0;
}

SEC("tracepoint/filemap/mm_filemap_add_to_page_cache")
int handle_add_to_page_cache(struct trace_event_raw_mm_filemap_op_page_cache *ctx)
{
	__u8 order = 0;

	if (bpf_core_field_exists(ctx->order))
		order = BPF_CORE_READ(ctx, order);
	if (order > 20)
		order = 20;
	return emit(BPF_CORE_READ(ctx, s_dev), BPF_CORE_READ(ctx, i_ino), BPF_CORE_READ(ctx, index),
		    1U << order, SNAPBPF_SRC_ADD_TO_PAGE_CACHE, order);
}

SEC("tracepoint/filemap/mm_filemap_fault")
int handle_fault(struct trace_event_raw_mm_filemap_fault *ctx)
{
	return emit(BPF_CORE_READ(ctx, s_dev), BPF_CORE_READ(ctx, i_ino), BPF_CORE_READ(ctx, index),
		    1, SNAPBPF_SRC_FAULT, 0);
}

SEC("tracepoint/filemap/mm_filemap_map_pages")
int handle_map_pages(struct trace_event_raw_mm_filemap_op_page_cache_range *ctx)
{
	__u64 first = BPF_CORE_READ(ctx, index);
	__u64 last = BPF_CORE_READ(ctx, last_index);
	__u32 nr = 1;

	if (last >= first && last - first < (1U << 20))
		nr = (__u32)(last - first + 1);
	return emit(BPF_CORE_READ(ctx, s_dev), BPF_CORE_READ(ctx, i_ino), first, nr,
		    SNAPBPF_SRC_MAP_PAGES, 0);
}

char LICENSE[] SEC("license") = "GPL";
