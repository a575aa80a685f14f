/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fulcrum tunnel decapsulation for backends in `tunnel` mode, where the
 * kernel's ipip/ip6_tunnel/fou modules are not available.
 *
 * Strips the outer header of packets addressed to one of this host's
 * addresses (map `local_addrs`, 16-byte v4-mapped/IPv6 keys) and passes the
 * inner packet to the kernel with the EtherType fixed:
 *   - IPv4 or IPv6 outer, protocol 4 (IPv4 inner) or 41 (IPv6 inner);
 *   - GUE: outer UDP to `gue_port` (set at load, default 6080) carrying GUE
 *     version 1, "direct IP encapsulation" (draft-ietf-intarea-gue): no GUE
 *     header, the inner IP header follows the UDP header and its first two
 *     bits are 01 (IPv4 version 4 = 0100, IPv6 version 6 = 0110).
 * VLAN-tagged frames, outer fragments and everything else pass untouched.
 */
#include "common.h"

#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41

const volatile __u16 gue_port = 6080;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u8[16]);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* Length of the outer headers after the L4 start `l4` when it is GUE v1,
 * or 0; sets *inner to the inner IP protocol number. */
static __always_inline __u32 gue_len(void *l4, void *end, __u8 *inner)
{
	struct udphdr *udp = l4;
	__u8 *first;

	if ((void *)(udp + 1) > end || udp->dest != bpf_htons(gue_port))
		return 0;
	first = (void *)(udp + 1);
	if ((void *)(first + 1) > end)
		return 0;
	if ((*first >> 4) == 4)
		*inner = IPPROTO_IPIP_;
	else if ((*first >> 4) == 6)
		*inner = IPPROTO_IPV6_;
	else
		return 0;
	return sizeof(*udp);
}

SEC("xdp")
int decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, neweth;
	__u8 dst[16], inner = 0;
	__u32 outer, l4len;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl < 5 ||
		    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return XDP_PASS;
		outer = ip->ihl * 4;
		addr_from_v4(dst, ip->daddr);
		if (ip->protocol == IPPROTO_IPIP_ || ip->protocol == IPPROTO_IPV6_) {
			inner = ip->protocol;
		} else if (ip->protocol == IPPROTO_UDP) {
			l4len = gue_len((void *)ip + outer, end, &inner);
			if (!l4len)
				return XDP_PASS;
			outer += l4len;
		} else {
			return XDP_PASS;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		outer = sizeof(*ip6);
		addr_from_v6(dst, &ip6->daddr);
		if (ip6->nexthdr == IPPROTO_IPIP_ || ip6->nexthdr == IPPROTO_IPV6_) {
			inner = ip6->nexthdr;
		} else if (ip6->nexthdr == IPPROTO_UDP) {
			l4len = gue_len(ip6 + 1, end, &inner);
			if (!l4len)
				return XDP_PASS;
			outer += l4len;
		} else {
			return XDP_PASS;
		}
	} else {
		return XDP_PASS;
	}

	if (!bpf_map_lookup_elem(&local_addrs, dst))
		return XDP_PASS;

	__builtin_memcpy(&neweth, eth, sizeof(neweth));
	neweth.h_proto = bpf_htons(inner == IPPROTO_IPIP_ ? ETH_P_IP : ETH_P_IPV6);
	if (bpf_xdp_adjust_head(ctx, (int)outer))
		return XDP_PASS;

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP; /* cannot happen: the outer headers were longer */
	__builtin_memcpy(eth, &neweth, sizeof(neweth));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
