/* SPDX-License-Identifier: Apache-2.0 */
/* Shared by fulcrum's XDP programs: headers and the 16-byte address form. */
#ifndef FULCRUM_BPF_COMMON_H
#define FULCRUM_BPF_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* Every address in the maps is 16 bytes: IPv6 as is, IPv4 v4-mapped
 * (::ffff:a.b.c.d, RFC 4291 2.5.5.2), so one key type serves both families. */
static __always_inline void addr_from_v4(__u8 out[16], __be32 v4)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &v4, 4);
}

static __always_inline void addr_from_v6(__u8 out[16], const struct in6_addr *v6)
{
	__builtin_memcpy(out, v6, 16);
}

#endif
