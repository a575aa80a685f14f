/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fulcrum steering program: redirect only balanced traffic into the AF_XDP
 * socket of the frame's rx queue; everything else goes to the kernel.
 *
 * Maps (filled from Rust, engine/src/io/xdp.rs; key layout mirrored there):
 *
 *   vips       struct lb_key -> __u8   destination = a VIP
 *   returns    struct lb_key -> __u8   NAT return traffic
 *   host_addrs 16-byte address -> __u8 the host's own addresses
 *   xsks       XSKMAP, index = rx queue
 *
 * struct lb_key is 20 bytes, no implicit padding:
 *   addr[16]  IPv6, or IPv4 as ::ffff:a.b.c.d
 *   proto     IPPROTO_TCP or IPPROTO_UDP
 *   dir       MATCH_DST (0) or MATCH_SRC (1); always MATCH_DST in `vips`
 *   port      big-endian; 0 = every port of that address and protocol
 *
 * A frame is steered when, for its (src, dst, proto, sport, dport):
 *   - vips has    {dst, proto, DST, dport} or {dst, proto, DST, 0}     (a VIP)
 *   - returns has {dst, proto, DST, dport} or {dst, proto, DST, 0}
 *       full-NAT return: the backend answers the balancer's SNAT
 *       address/port;
 *   - returns has {src, proto, SRC, sport} or {src, proto, SRC, 0},
 *       unless dst is in host_addrs
 *       inline DNAT return: the backend (address:port as source) answers
 *       the client through the balancer. Frames to the host's own
 *       addresses (health-check replies from the same backend:port) are
 *       excluded so they still reach the kernel.
 * ICMP/ICMPv6 errors are matched on the packet they quote, with source and
 * destination swapped: an error about a VIP flow (e.g. "fragmentation
 * needed" sent to a VIP) is steered, and the engine routes it to the flow's
 * backend.
 *
 * IP fragments after the first carry no ports: they match port-0 entries and
 * the FRAG entries (dir DST_FRAG / SRC_FRAG, port 0) that userspace adds for
 * every address and protocol with port-specific entries, so that a
 * datagram's later fragments reach the engine that placed its first.
 *
 * Parsed: one optional 802.1Q/802.1ad tag, IPv4 with options (IHL), IPv6
 * with at most a fragment header (anything else is passed to the kernel).
 * If no socket is bound to the queue, bpf_redirect_map falls back to
 * XDP_PASS.
 */
#include "common.h"

/* linux/icmp.h pulls in libc headers that do not build for the bpf target;
 * the 8-byte ICMP/ICMPv6 header is all that is needed here. */
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define MATCH_DST 0
#define MATCH_SRC 1
#define MATCH_DST_FRAG 2
#define MATCH_SRC_FRAG 3

/* IPv6 fragment header (RFC 8200 4.5). */
struct frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

#define IPV6_FRAG_OFFSET 0xfff8

struct lb_key {
	__u8 addr[16];
	__u8 proto;
	__u8 dir;
	__be16 port;
};

struct tuple {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	/* A fragment after the first: no ports. */
	__u8 later_fragment;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct lb_key);
	__type(value, __u8);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_key);
	__type(value, __u8);
} returns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u8[16]);
	__type(value, __u8);
} host_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

static __always_inline int is_balanced(const struct tuple *t)
{
	struct lb_key k = {};

	__builtin_memcpy(k.addr, t->dst, 16);
	k.proto = t->proto;
	k.dir = MATCH_DST;
	k.port = t->dport;
	if (bpf_map_lookup_elem(&vips, &k) || bpf_map_lookup_elem(&returns, &k))
		return 1;
	k.port = 0;
	if (bpf_map_lookup_elem(&vips, &k) || bpf_map_lookup_elem(&returns, &k))
		return 1;
	if (t->later_fragment) {
		k.dir = MATCH_DST_FRAG;
		if (bpf_map_lookup_elem(&vips, &k) || bpf_map_lookup_elem(&returns, &k))
			return 1;
	}

	if (bpf_map_lookup_elem(&host_addrs, t->dst))
		return 0;
	__builtin_memcpy(k.addr, t->src, 16);
	k.dir = MATCH_SRC;
	k.port = t->sport;
	if (bpf_map_lookup_elem(&returns, &k))
		return 1;
	k.port = 0;
	if (bpf_map_lookup_elem(&returns, &k))
		return 1;
	k.dir = MATCH_SRC_FRAG;
	return t->later_fragment && bpf_map_lookup_elem(&returns, &k) != NULL;
}

/* Reads the two ports at `l4` when the protocol has them. */
static __always_inline int read_ports(void *l4, void *end, __u8 proto, __be16 *sport,
				      __be16 *dport)
{
	__be16 *p = l4;

	*sport = 0;
	*dport = 0;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if ((void *)(p + 2) > end)
		return -1;
	*sport = p[0];
	*dport = p[1];
	return 0;
}

/* ICMP error: fill `t` from the quoted IPv4 packet, reversed. */
static __always_inline int quoted_v4(void *q, void *end, struct tuple *t)
{
	struct iphdr *ip = q;
	__u32 ihl;

	if ((void *)(ip + 1) > end || ip->version != 4)
		return -1;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return -1;
	addr_from_v4(t->dst, ip->saddr);
	addr_from_v4(t->src, ip->daddr);
	t->proto = ip->protocol;
	return read_ports(q + ihl, end, ip->protocol, &t->dport, &t->sport);
}

static __always_inline int quoted_v6(void *q, void *end, struct tuple *t)
{
	struct ipv6hdr *ip6 = q;

	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		return -1;
	addr_from_v6(t->dst, &ip6->saddr);
	addr_from_v6(t->src, &ip6->daddr);
	t->proto = ip6->nexthdr;
	return read_ports(ip6 + 1, end, ip6->nexthdr, &t->dport, &t->sport);
}

static __always_inline int parse_v4(void *l3, void *end, struct tuple *t)
{
	struct iphdr *ip = l3;
	struct icmp_hdr *icmp;
	__u32 ihl;

	if ((void *)(ip + 1) > end)
		return -1;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return -1;

	if (ip->protocol == IPPROTO_ICMP) {
		icmp = l3 + ihl;
		if ((void *)(icmp + 1) > end)
			return -1;
		if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED &&
		    icmp->type != ICMP_PARAMETERPROB)
			return -1;
		return quoted_v4(icmp + 1, end, t);
	}

	addr_from_v4(t->src, ip->saddr);
	addr_from_v4(t->dst, ip->daddr);
	t->proto = ip->protocol;
	if (ip->frag_off & bpf_htons(IP_OFFSET)) {
		t->sport = 0;
		t->dport = 0;
		t->later_fragment = 1;
		return 0;
	}
	return read_ports(l3 + ihl, end, ip->protocol, &t->sport, &t->dport);
}

static __always_inline int parse_v6(void *l3, void *end, struct tuple *t)
{
	struct ipv6hdr *ip6 = l3;
	struct icmp_hdr *icmp6;

	if ((void *)(ip6 + 1) > end)
		return -1;

	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		icmp6 = (void *)(ip6 + 1);
		if ((void *)(icmp6 + 1) > end)
			return -1;
		/* Types below 128 are errors (RFC 4443 2.1). */
		if (icmp6->type >= 128)
			return -1;
		return quoted_v6(icmp6 + 1, end, t);
	}
	addr_from_v6(t->src, &ip6->saddr);
	addr_from_v6(t->dst, &ip6->daddr);
	if (ip6->nexthdr == IPPROTO_FRAGMENT) {
		struct frag_hdr *fh = (void *)(ip6 + 1);

		if ((void *)(fh + 1) > end)
			return -1;
		if (fh->nexthdr != IPPROTO_TCP && fh->nexthdr != IPPROTO_UDP)
			return -1;
		t->proto = fh->nexthdr;
		if (fh->frag_off & bpf_htons(IPV6_FRAG_OFFSET)) {
			t->later_fragment = 1;
			return 0;
		}
		return read_ports(fh + 1, end, fh->nexthdr, &t->sport, &t->dport);
	}
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return -1;
	t->proto = ip6->nexthdr;
	return read_ports(ip6 + 1, end, ip6->nexthdr, &t->sport, &t->dport);
}

SEC("xdp")
int steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct tuple t = {};
	void *l3 = eth + 1;
	__be16 proto;
	int err;

	if (l3 > end)
		return XDP_PASS;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		/* 802.1Q tag: TCI then the encapsulated EtherType. */
		__be16 *tag = l3;

		if ((void *)(tag + 2) > end)
			return XDP_PASS;
		proto = tag[1];
		l3 = tag + 2;
	}

	if (proto == bpf_htons(ETH_P_IP))
		err = parse_v4(l3, end, &t);
	else if (proto == bpf_htons(ETH_P_IPV6))
		err = parse_v6(l3, end, &t);
	else
		return XDP_PASS;

	if (err || !is_balanced(&t))
		return XDP_PASS;
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Apache-2.0";
