/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XDP_PASS everything. A veth delivers XDP_TX'd or redirected frames only
 * when its peer has an XDP program attached; this one is enough.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
