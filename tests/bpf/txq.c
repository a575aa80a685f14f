/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc egress on a lab client's veth: sets the packet's hash from its
 * addresses and transport ports (addresses alone for fragments), so that
 * the kernel picks the tx queue (a veth's peer rx queue) by the flow, as a
 * NIC's RSS does, and not by the sending socket's
 * random hash (which differs between two connections of one 5-tuple and
 * changes on a retransmission timeout).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int txq(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 addrs;
	__u8 proto;
	void *l4;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return TC_ACT_OK;
		addrs = ip->saddr ^ ip->daddr;
		/* A NIC hashes fragments by their addresses alone: the later
		 * ones have no ports. */
		if (ip->frag_off & bpf_htons(0x3fff))
			proto = 0;
		else
			proto = ip->protocol;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		addrs = ip6->saddr.in6_u.u6_addr32[3] ^ ip6->daddr.in6_u.u6_addr32[3];
		/* Any extension header, the fragment header included: the
		 * addresses alone. */
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
	} else {
		return TC_ACT_OK;
	}
	__u32 hash = addrs;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__u16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return TC_ACT_OK;
		/* Both ports, so two flows of one client hash apart. */
		hash ^= (__u32)ports[0] << 16 | ports[1];
	}
	/* Never 0: that would mean "no hash". */
	bpf_set_hash(skb, (hash * 2654435761u) | 1);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Apache-2.0";
