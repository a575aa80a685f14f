/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The perf harness's sink: counts and drops the generator's frames in XDP
 * (no copy to user space, no wake-ups: the cheapest receiver on a 2-core
 * machine), with their one-way latency and reordering. Every other frame
 * (ARP, neighbour discovery, real TCP to the lab servers) is passed.
 *
 * The generator ends every IP packet with a 16-byte stamp (host order):
 *   magic u32 = SINK_MAGIC, flow u32, seq u32 (per flow, from 1),
 *   sent u32  = CLOCK_MONOTONIC ns, truncated.
 * It is found from the end of the outermost IP packet, so it is read the
 * same after NAT, DSR, or IPIP / GUE encapsulation, and Ethernet padding
 * does not move it.
 *
 * Maps (read from Rust, engine/src/io/xdp.rs SinkProgram; layout mirrored
 * there):
 *   counters  per-CPU u64[SINK_COUNTERS]: frames, reordered
 *   latency   per-CPU u64[SINK_BUCKETS]: log-linear histogram of ns, below
 *             32 one bucket per ns, then 32 buckets per power of two (3%
 *             resolution), up to 2^32 ns
 *   last_seq  u32[65536] by flow & 0xffff: the highest seq seen; a lower
 *             one counts as reordered. Shared by the CPUs on purpose: a
 *             flow whose frames are spread over CPUs is where reordering
 *             happens (an unlocked update may miscount such a race).
 */
#include "common.h"

#define SINK_MAGIC 0xf1c7a7e5
#define SINK_COUNTERS 2
#define SINK_SUB 32
#define SINK_BUCKETS (SINK_SUB + 27 * SINK_SUB)
#define STAMP_LEN 16

struct stamp {
	__u32 magic;
	__u32 flow;
	__u32 seq;
	__u32 sent;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SINK_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SINK_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} latency SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} last_seq SEC(".maps");

static __always_inline __u32 msb(__u32 v)
{
	__u32 r = 0;

	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

/* Values below 32 have their own bucket; above, the top 6 bits (the
 * leading one and 5 more) pick one of 32 buckets in their power of two. */
static __always_inline __u32 bucket(__u32 ns)
{
	__u32 e;

	if (ns < SINK_SUB)
		return ns;
	e = msb(ns);
	return SINK_SUB + (e - 5) * SINK_SUB + ((ns >> (e - 5)) & (SINK_SUB - 1));
}

static __always_inline void bump(void *map, __u32 key)
{
	__u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		*v += 1;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	struct stamp *st;
	__u32 ip_len, flow, *last;

	if (l3 > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		ip_len = bpf_ntohs(ip->tot_len);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		ip_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	} else {
		return XDP_PASS;
	}
	if (ip_len < STAMP_LEN || ip_len > 2048)
		return XDP_PASS;
	st = l3 + ((ip_len - STAMP_LEN) & 0x7ff);
	if ((void *)(st + 1) > end || st->magic != SINK_MAGIC)
		return XDP_PASS;

	bump(&counters, 0);
	bump(&latency, bucket((__u32)bpf_ktime_get_ns() - st->sent));
	flow = st->flow & 0xffff;
	last = bpf_map_lookup_elem(&last_seq, &flow);
	if (last) {
		if ((__s32)(st->seq - *last) < 0)
			bump(&counters, 1);
		else
			*last = st->seq;
	}
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Apache-2.0";
