/*
 * netlink-raw-keeper: holds netlink and raw IP sockets, waits to be checkpointed (and restored),
 * then checks each one still is what it was and still works.
 *
 *   netlink-raw-keeper REPORT_FILE WORK_DIR
 *
 * Held:
 *   NL1   NETLINK_ROUTE, bound with groups RTMGRP_LINK (the kernel picks its portid), and
 *         group 33 (RTNLGRP_BRVLAN, past bind's 32) joined with NETLINK_ADD_MEMBERSHIP
 *   NL2   NETLINK_ROUTE, never bound (portid 0 until it first sends)
 *   NL3   NETLINK_ROUTE, bound to portid 0x7e570001 by hand
 *   R4    raw ICMP over IPv4, bound to 127.0.0.1, ICMP_FILTER letting only echo replies in
 *   R6    raw ICMPv6, connected to ::1, ICMP6_FILTER letting only echo replies in
 *   RH    raw IPv4 socket of protocol 253 (experimental) with IP_HDRINCL and IP_NODEFRAG
 *   PK    packet socket (SOCK_DGRAM) of the local experimental ethertype 0x88B5 bound to lo, with
 *         TPACKET_V2, PACKET_AUXDATA, PACKET_ORIGDEV, a promiscuous membership on lo and a
 *         classic BPF filter (SO_ATTACH_FILTER) that accepts every packet
 * On SIGUSR1: portids, groups and options compared with what they were; NL2 asks the kernel for
 * its links (RTM_GETLINK dump) and must find "lo"; R4 and R6 ping the loopback address and must
 * get their own echo back; PK sends a frame on lo and gets it back. keeper.h's report protocol.
 */
#define _GNU_SOURCE
#include "keeper.h"
#include <arpa/inet.h>
#include <linux/icmp.h>
#include <linux/filter.h>
#include <linux/icmpv6.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#ifndef IP_NODEFRAG
#define IP_NODEFRAG 22
#endif
#define NL3_PORTID 0x7e570001u
#define ETH_P_LOCAL_EXP 0x88B5
#define BRVLAN_GROUP 33

static uint32_t portid_of(int fd)
{
	struct sockaddr_nl a = { 0 };
	socklen_t len = sizeof(a);
	return getsockname(fd, (struct sockaddr *)&a, &len) == 0 ? a.nl_pid : 0xffffffffu;
}

/* The first two words of the group bitmap (groups 1-64). */
static void groups_of(int fd, uint32_t out[2])
{
	uint32_t words[8] = { 0 };
	socklen_t len = sizeof(words);
	if (getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, words, &len) < 0)
		words[0] = words[1] = 0xffffffffu;
	out[0] = words[0];
	out[1] = words[1];
}

/* NL2: an RTM_GETLINK dump; returns 1 when a link named "lo" is in the answer. */
static int links_include_lo(int fd)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = { .h = { .nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 7 },
		  .i = { .ifi_family = AF_UNSPEC } };
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		return 0;
	static char buf[65536];
	for (int rounds = 0; rounds < 100; rounds++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 2000) <= 0)
			return 0;
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0)
			return 0;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR)
				return 0;
			if (h->nlmsg_type != RTM_NEWLINK)
				continue;
			struct ifinfomsg *ifi = NLMSG_DATA(h);
			int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof(*ifi));
			for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
				if (a->rta_type == IFLA_IFNAME && strcmp((char *)RTA_DATA(a), "lo") == 0)
					return 1;
		}
	}
	return 0;
}

/* Sends an echo request with `id` and a payload, waits for the echo reply carrying them. */
static int ping_ok(int fd, int v6, uint16_t id)
{
	unsigned char pkt[64] = { 0 };
	const char payload[] = "criu-ts raw ping";
	pkt[0] = v6 ? ICMPV6_ECHO_REQUEST : ICMP_ECHO;
	memcpy(pkt + 4, &id, 2);
	memcpy(pkt + 8, payload, sizeof(payload));
	size_t len = 8 + sizeof(payload);
	if (!v6) { /* IPv4 ICMP checksum is ours to fill; the kernel fills ICMPv6's */
		uint32_t sum = 0;
		for (size_t i = 0; i < len; i += 2)
			sum += (uint32_t)(pkt[i] << 8 | pkt[i + 1]);
		while (sum >> 16)
			sum = (sum & 0xffff) + (sum >> 16);
		uint16_t c = htons((uint16_t)~sum);
		memcpy(pkt + 2, &c, 2);
	}
	ssize_t sent;
	if (v6) {
		sent = send(fd, pkt, len, 0); /* connected to ::1 */
	} else {
		struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		sent = sendto(fd, pkt, len, 0, (struct sockaddr *)&to, sizeof(to));
	}
	if (sent != (ssize_t)len)
		return 0;
	unsigned char in[256];
	for (int rounds = 0; rounds < 20; rounds++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 2000) <= 0)
			return 0;
		ssize_t n = recv(fd, in, sizeof(in), 0);
		if (n <= 0)
			return 0;
		unsigned char *icmp = in;
		if (!v6) { /* IPv4 raw sockets get the IP header too */
			size_t ihl = (size_t)(in[0] & 0x0f) * 4;
			if ((size_t)n < ihl + 8)
				continue;
			icmp = in + ihl;
			n -= (ssize_t)ihl;
		}
		if (icmp[0] == (v6 ? ICMPV6_ECHO_REPLY : ICMP_ECHOREPLY) && memcmp(icmp + 4, &id, 2) == 0 && n >= (ssize_t)len && memcmp(icmp + 8, payload, sizeof(payload)) == 0)
			return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3 || keeper_open_report(argv[1]) < 0)
		return 2;
	signal(SIGUSR1, on_usr1);

	/* PK first: its promiscuous membership changes lo's flags, a link event NL1 would otherwise queue. */
	int pk = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_LOCAL_EXP));
	MUST(pk);
	int lo_index = 1; /* the loopback device is the first of every network namespace */
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_LOCAL_EXP), .sll_ifindex = lo_index };
	MUST(bind(pk, (struct sockaddr *)&ll, sizeof(ll)));
	int v2 = TPACKET_V2;
	MUST(setsockopt(pk, SOL_PACKET, PACKET_VERSION, &v2, sizeof(v2)));
	int one = 1;
	MUST(setsockopt(pk, SOL_PACKET, PACKET_AUXDATA, &one, sizeof(one)));
	MUST(setsockopt(pk, SOL_PACKET, PACKET_ORIGDEV, &one, sizeof(one)));
	struct packet_mreq mr = { .mr_ifindex = lo_index, .mr_type = PACKET_MR_PROMISC };
	MUST(setsockopt(pk, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)));
	struct sock_filter accept_all[] = { BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0), BPF_STMT(BPF_RET | BPF_A, 0) };
	struct sock_fprog prog = { .len = 2, .filter = accept_all };
	MUST(setsockopt(pk, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)));

	int nl1 = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	MUST(nl1);
	struct sockaddr_nl a1 = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
	MUST(bind(nl1, (struct sockaddr *)&a1, sizeof(a1)));
	int brvlan = BRVLAN_GROUP;
	MUST(setsockopt(nl1, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &brvlan, sizeof(brvlan)));
	int nl2 = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	MUST(nl2);
	int nl3 = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_ROUTE);
	MUST(nl3);
	struct sockaddr_nl a3 = { .nl_family = AF_NETLINK, .nl_pid = NL3_PORTID };
	MUST(bind(nl3, (struct sockaddr *)&a3, sizeof(a3)));

	int r4 = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
	MUST(r4);
	struct sockaddr_in lo4 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	MUST(bind(r4, (struct sockaddr *)&lo4, sizeof(lo4)));
	struct icmp_filter f4 = { .data = ~(1u << ICMP_ECHOREPLY) };
	MUST(setsockopt(r4, SOL_RAW, ICMP_FILTER, &f4, sizeof(f4)));
	int r6 = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMPV6);
	MUST(r6);
	struct icmp6_filter f6;
	memset(&f6, 0xff, sizeof(f6));
	f6.data[ICMPV6_ECHO_REPLY >> 5] &= ~(1u << (ICMPV6_ECHO_REPLY & 31));
	MUST(setsockopt(r6, IPPROTO_ICMPV6, ICMPV6_FILTER, &f6, sizeof(f6)));
	struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	MUST(connect(r6, (struct sockaddr *)&lo6, sizeof(lo6)));
	int rh = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, 253);
	MUST(rh);
	MUST(setsockopt(rh, IPPROTO_IP, IP_HDRINCL, &one, sizeof(one)));
	MUST(setsockopt(rh, IPPROTO_IP, IP_NODEFRAG, &one, sizeof(one)));

	uint32_t nl1_portid = portid_of(nl1), nl1_groups[2];
	groups_of(nl1, nl1_groups);
	say("ready %d\n", getpid());

	while (!check_requested) /* polled: a restored task re-enters its sleep after a signal that came just before */
		usleep(1000);

	uint32_t g[2];
	groups_of(nl1, g);
	CHECK(portid_of(nl1) == nl1_portid, "NL1 portid %u (was %u)", portid_of(nl1), nl1_portid);
	CHECK(g[0] == nl1_groups[0] && g[1] == nl1_groups[1] && (g[0] & RTMGRP_LINK) && (g[1] & (1u << (BRVLAN_GROUP - 33))),
	      "NL1 groups %08x %08x (were %08x %08x)", g[0], g[1], nl1_groups[0], nl1_groups[1]);
	CHECK(portid_of(nl2) == 0, "NL2 still unbound (portid %u)", portid_of(nl2));
	CHECK(links_include_lo(nl2), "NL2: RTM_GETLINK dump answered, with lo");
	CHECK(portid_of(nl3) == NL3_PORTID, "NL3 portid %#x", portid_of(nl3));
	int type = 0;
	socklen_t tl = sizeof(type);
	CHECK(getsockopt(nl3, SOL_SOCKET, SO_PROTOCOL, &type, &tl) == 0 && type == NETLINK_ROUTE, "NL3 protocol NETLINK_ROUTE");

	struct icmp_filter got4 = { 0 };
	socklen_t fl = sizeof(got4);
	CHECK(getsockopt(r4, SOL_RAW, ICMP_FILTER, &got4, &fl) == 0 && got4.data == f4.data, "R4 ICMP filter %08x", got4.data);
	struct sockaddr_in b4 = { 0 };
	socklen_t bl = sizeof(b4);
	CHECK(getsockname(r4, (struct sockaddr *)&b4, &bl) == 0 && b4.sin_addr.s_addr == htonl(INADDR_LOOPBACK), "R4 bound to 127.0.0.1");
	CHECK(ping_ok(r4, 0, 0x4a4a), "R4 pings 127.0.0.1 and gets its echo");
	struct icmp6_filter got6;
	fl = sizeof(got6);
	CHECK(getsockopt(r6, IPPROTO_ICMPV6, ICMPV6_FILTER, &got6, &fl) == 0 && memcmp(&got6, &f6, sizeof(f6)) == 0, "R6 ICMPv6 filter kept");
	CHECK(ping_ok(r6, 1, 0x6a6a), "R6 pings ::1 (connected) and gets its echo");
	int hdrincl = 0, nodefrag = 0;
	socklen_t il = sizeof(int);
	getsockopt(rh, IPPROTO_IP, IP_HDRINCL, &hdrincl, &il);
	il = sizeof(int);
	getsockopt(rh, IPPROTO_IP, IP_NODEFRAG, &nodefrag, &il);
	CHECK(hdrincl == 1 && nodefrag == 1, "RH IP_HDRINCL %d, IP_NODEFRAG %d", hdrincl, nodefrag);
	CHECK(getsockopt(rh, SOL_SOCKET, SO_PROTOCOL, &type, &tl) == 0 && type == 253, "RH protocol 253");

	int ver = 0, aux = 0, orig = 0;
	il = sizeof(int);
	getsockopt(pk, SOL_PACKET, PACKET_VERSION, &ver, &il);
	il = sizeof(int);
	getsockopt(pk, SOL_PACKET, PACKET_AUXDATA, &aux, &il);
	il = sizeof(int);
	getsockopt(pk, SOL_PACKET, PACKET_ORIGDEV, &orig, &il);
	CHECK(ver == TPACKET_V2 && aux == 1 && orig == 1, "PK TPACKET version %d, AUXDATA %d, ORIGDEV %d", ver, aux, orig);
	struct sockaddr_ll got_ll = { 0 };
	socklen_t lll = sizeof(got_ll);
	CHECK(getsockname(pk, (struct sockaddr *)&got_ll, &lll) == 0 && got_ll.sll_ifindex == lo_index && got_ll.sll_protocol == htons(ETH_P_LOCAL_EXP),
	      "PK bound to lo (ifindex %d), protocol %#x", got_ll.sll_ifindex, ntohs(got_ll.sll_protocol));
	struct sock_filter back[8];
	socklen_t blocks = 8;
	CHECK(getsockopt(pk, SOL_SOCKET, SO_GET_FILTER, back, &blocks) == 0 && blocks == 2 && memcmp(back, accept_all, sizeof(accept_all)) == 0, "PK filter back (%u instructions)", blocks);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_LOCAL_EXP), .sll_ifindex = lo_index, .sll_halen = 6 };
	const char frame[] = "criu-ts packet frame";
	int echoed = 0;
	if (sendto(pk, frame, sizeof(frame), 0, (struct sockaddr *)&to, sizeof(to)) == (ssize_t)sizeof(frame)) {
		char in[128];
		for (int rounds = 0; rounds < 10 && !echoed; rounds++) {
			struct pollfd p = { .fd = pk, .events = POLLIN };
			if (poll(&p, 1, 2000) <= 0)
				break;
			ssize_t n = recv(pk, in, sizeof(in), 0);
			echoed = n == (ssize_t)sizeof(frame) && memcmp(in, frame, sizeof(frame)) == 0;
		}
	}
	CHECK(echoed, "PK sends a frame on lo and receives it");

	say("done %d\n", failures);
	return failures;
}
