/*
 * packet-ring-keeper: packet sockets with memory-mapped rings (PACKET_RX_RING / PACKET_TX_RING)
 * part-way through their rings, waiting to be checkpointed (and restored); then checks each ring
 * goes on from exactly where it was.
 *
 *   packet-ring-keeper REPORT_FILE [DIR [closed-fd | split-mapping]]
 *
 * closed-fd: V1's descriptor is closed once its ring is mapped (the mapping keeps the socket);
 * split-mapping: MADV_DONTFORK on the second half of V1's mapping splits it in two VMAs. A dump
 * must refuse both (restore could not map the rings again), and the program run on.
 *
 * Held:
 *   A   SOCK_RAW, TPACKET_V2, an RX ring and a TX ring of 8 frames each (2 blocks of 4 frames),
 *       one mapping, bound to lo for ethertype 0x88B7. What A sends through its TX ring comes
 *       back into its RX ring (loopback). Before the checkpoint: messages 0-4 sent (tx head 5),
 *       received in frames 0-4; 0-2 read by the program (its rx index 3), 3-4 waiting; message
 *       5 written in TX frame 5 and marked for sending, send() not called yet.
 *   V1  SOCK_DGRAM, TPACKET_V1 (8-byte tp_status), an RX ring of 8 frames, its own mapping,
 *       bound to lo for ethertype 0x88B9; six messages received and read (rx index 6, every
 *       frame the kernel's again).
 *   V3  SOCK_RAW, TPACKET_V3, an RX ring of 4 blocks of 4096 bytes (retire timeout 60 s, so
 *       only a full block is closed), bound to lo for ethertype 0x88BA; messages of 1000 bytes
 *       (1088 in a block: 3 per block). Messages 0-4 received: block 0 (0-2) closed and read,
 *       block 1 the kernel's active block, holding 3 and 4.
 *   F1, F2  SOCK_RAW sockets bound to lo for ethertype 0x88BE, in fanout group 0x5A5A with
 *       PACKET_FANOUT_LB (round robin) and PACKET_FANOUT_FLAG_ROLLOVER.
 *   S   a plain packet socket that sends V1's, V3's and the fanout group's frames.
 * On SIGUSR1 (keeper.h's report protocol):
 *   A   frames 3 and 4 still hold messages 3 and 4; send() sends message 5; messages 6-9 follow
 *       through TX frames 6, 7, 0, 1 (the ring wraps); each arrives in the RX frame after the
 *       previous one, in order, with its content.
 *   V1  messages 6-9 from S arrive in frames 6, 7, 0, 1.
 *   V3  messages 5-15 from S: blocks 1, 2, 3, 0 close in turn holding 3-5, 6-8, 9-11, 12-14.
 *   F1, F2  still in the group with the same mode and flags; 10 frames from S are shared 5 and 5.
 *   Both mappings are at their old addresses (the program never maps them again).
 */
#define _GNU_SOURCE
#include "keeper.h"
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>

#define ETH_A 0x88B7
#define ETH_V1 0x88B9
#define ETH_V3 0x88BA
#define ETH_FANOUT 0x88BE
#define FANOUT_GROUP 0x5A5A
#define V3_BLOCKS 4
#define V3_BLOCK_SIZE 4096
#define V3_MESSAGE_BYTES 1000
#define FRAMES 8
#define FRAME_SIZE 2048
#define BLOCK_SIZE (4 * FRAME_SIZE)
#define LO 1

static uint8_t *a_rx, *a_tx, *v1_rx, *v3_rx;
static int a, v1, v3, s;
static unsigned a_rx_next, a_tx_next, v1_next, v3_next_block;

static uint8_t *frame(uint8_t *ring, unsigned i)
{
	return ring + (size_t)i * FRAME_SIZE; /* 4 frames per block, blocks back to back */
}

static void message(char *out, size_t len, const char *who, unsigned n)
{
	snprintf(out, len, "criu-ts %s message %u", who, n);
}

static int wait_status(volatile uint32_t *status, uint32_t want_nonzero)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if ((*status != 0) == (want_nonzero != 0))
			return 1;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > 2000)
			return 0;
		usleep(200);
	}
}

/* A's next RX frame: waits for it, checks it holds message n, gives it back to the kernel. */
static int a_read(unsigned n)
{
	struct tpacket2_hdr *h = (struct tpacket2_hdr *)frame(a_rx, a_rx_next);
	if (!wait_status(&h->tp_status, 1))
		return 0;
	char want[64];
	message(want, sizeof(want), "A", n);
	const char *data = (const char *)h + h->tp_mac + ETH_HLEN;
	int good = h->tp_snaplen >= ETH_HLEN + strlen(want) && memcmp(data, want, strlen(want)) == 0;
	__sync_synchronize();
	h->tp_status = TP_STATUS_KERNEL;
	a_rx_next = (a_rx_next + 1) % FRAMES;
	return good;
}

/* Writes message n into A's next TX frame and marks it for sending. */
static void a_queue(unsigned n)
{
	struct tpacket2_hdr *h = (struct tpacket2_hdr *)frame(a_tx, a_tx_next);
	uint8_t *pkt = (uint8_t *)h + TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);
	memset(pkt, 0, ETH_HLEN);
	pkt[12] = ETH_A >> 8;
	pkt[13] = ETH_A & 0xff;
	char text[64];
	message(text, sizeof(text), "A", n);
	memcpy(pkt + ETH_HLEN, text, strlen(text) + 1);
	h->tp_len = (uint32_t)(ETH_HLEN + strlen(text) + 1);
	__sync_synchronize();
	h->tp_status = TP_STATUS_SEND_REQUEST;
	a_tx_next = (a_tx_next + 1) % FRAMES;
}

static int v1_read(unsigned n)
{
	struct tpacket_hdr *h = (struct tpacket_hdr *)frame(v1_rx, v1_next);
	volatile unsigned long *status = &h->tp_status;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (*status == TP_STATUS_KERNEL) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > 2000)
			return 0;
		usleep(200);
	}
	char want[64];
	message(want, sizeof(want), "V1", n);
	const char *data = (const char *)h + h->tp_net; /* SOCK_DGRAM: from the network header */
	int good = h->tp_snaplen >= strlen(want) && memcmp(data, want, strlen(want)) == 0;
	__sync_synchronize();
	*status = TP_STATUS_KERNEL;
	v1_next = (v1_next + 1) % FRAMES;
	return good;
}

static int s_send(unsigned n)
{
	uint8_t pkt[ETH_HLEN + 64] = { 0 };
	pkt[12] = ETH_V1 >> 8;
	pkt[13] = ETH_V1 & 0xff;
	char text[64];
	message(text, sizeof(text), "V1", n);
	memcpy(pkt + ETH_HLEN, text, strlen(text) + 1);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_V1), .sll_ifindex = LO };
	size_t len = ETH_HLEN + strlen(text) + 1;
	return sendto(s, pkt, len, 0, (struct sockaddr *)&to, sizeof(to)) == (ssize_t)len;
}

static int fanout_socket(void)
{
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_FANOUT));
	if (fd < 0)
		return -1;
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_FANOUT), .sll_ifindex = LO };
	int arg = FANOUT_GROUP | (PACKET_FANOUT_LB | PACKET_FANOUT_FLAG_ROLLOVER) << 16;
	if (bind(fd, (struct sockaddr *)&ll, sizeof(ll)) < 0 || setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof(arg)) < 0)
		return -1;
	return fd;
}

static unsigned drain_count(int fd)
{
	unsigned n = 0;
	char buf[256];
	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		n++;
	return n;
}

static int s_send_v3(unsigned n)
{
	uint8_t pkt[V3_MESSAGE_BYTES] = { 0 };
	pkt[12] = ETH_V3 >> 8;
	pkt[13] = ETH_V3 & 0xff;
	message((char *)pkt + ETH_HLEN, sizeof(pkt) - ETH_HLEN, "V3", n);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_V3), .sll_ifindex = LO };
	return sendto(s, pkt, sizeof(pkt), 0, (struct sockaddr *)&to, sizeof(to)) == (ssize_t)sizeof(pkt);
}

/* V3's next block: waits until the kernel closes it, checks it holds messages first..first+2 in order, gives it back. */
static int v3_read_block(unsigned first)
{
	struct tpacket_block_desc *b = (struct tpacket_block_desc *)(v3_rx + (size_t)v3_next_block * V3_BLOCK_SIZE);
	if (!wait_status(&b->hdr.bh1.block_status, 1))
		return 0;
	int good = b->hdr.bh1.num_pkts == 3;
	struct tpacket3_hdr *p = (struct tpacket3_hdr *)((uint8_t *)b + b->hdr.bh1.offset_to_first_pkt);
	for (unsigned i = 0; good && i < 3; i++) {
		char want[64];
		message(want, sizeof(want), "V3", first + i);
		const char *data = (const char *)p + p->tp_mac + ETH_HLEN;
		good = p->tp_snaplen == V3_MESSAGE_BYTES && memcmp(data, want, strlen(want) + 1) == 0;
		p = (struct tpacket3_hdr *)((uint8_t *)p + p->tp_next_offset);
	}
	__sync_synchronize();
	b->hdr.bh1.block_status = TP_STATUS_KERNEL;
	v3_next_block = (v3_next_block + 1) % V3_BLOCKS;
	return good;
}

int main(int argc, char **argv)
{
	if (argc < 2 || keeper_open_report(argv[1]) < 0)
		return 2;
	signal(SIGUSR1, on_usr1);

	a = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_A));
	MUST(a);
	int v2 = TPACKET_V2;
	MUST(setsockopt(a, SOL_PACKET, PACKET_VERSION, &v2, sizeof(v2)));
	struct tpacket_req req = { .tp_block_size = BLOCK_SIZE, .tp_block_nr = FRAMES * FRAME_SIZE / BLOCK_SIZE, .tp_frame_size = FRAME_SIZE, .tp_frame_nr = FRAMES };
	MUST(setsockopt(a, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)));
	MUST(setsockopt(a, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)));
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_A), .sll_ifindex = LO };
	MUST(bind(a, (struct sockaddr *)&ll, sizeof(ll)));
	a_rx = mmap(NULL, 2 * FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
	if (a_rx == MAP_FAILED)
		MUST(-1);
	a_tx = a_rx + FRAMES * FRAME_SIZE;

	v1 = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_V1));
	MUST(v1);
	int ver1 = TPACKET_V1;
	MUST(setsockopt(v1, SOL_PACKET, PACKET_VERSION, &ver1, sizeof(ver1)));
	MUST(setsockopt(v1, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)));
	struct sockaddr_ll ll1 = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_V1), .sll_ifindex = LO };
	MUST(bind(v1, (struct sockaddr *)&ll1, sizeof(ll1)));
	v1_rx = mmap(NULL, FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, v1, 0);
	if (v1_rx == MAP_FAILED)
		MUST(-1);
	v3 = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_V3));
	MUST(v3);
	int ver3 = TPACKET_V3;
	MUST(setsockopt(v3, SOL_PACKET, PACKET_VERSION, &ver3, sizeof(ver3)));
	struct tpacket_req3 req3 = {
		.tp_block_size = V3_BLOCK_SIZE, .tp_block_nr = V3_BLOCKS, .tp_frame_size = 2048, .tp_frame_nr = V3_BLOCKS * V3_BLOCK_SIZE / 2048,
		.tp_retire_blk_tov = 60000,
	};
	MUST(setsockopt(v3, SOL_PACKET, PACKET_RX_RING, &req3, sizeof(req3)));
	struct sockaddr_ll ll3 = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_V3), .sll_ifindex = LO };
	MUST(bind(v3, (struct sockaddr *)&ll3, sizeof(ll3)));
	v3_rx = mmap(NULL, V3_BLOCKS * V3_BLOCK_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, v3, 0);
	if (v3_rx == MAP_FAILED)
		MUST(-1);
	s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	MUST(s);
	for (unsigned n = 0; n < 5; n++)
		MUST(s_send_v3(n) ? 0 : -1);
	if (!v3_read_block(0)) /* block 0 (messages 0-2), closed by message 3 */
		MUST(-1);
	usleep(20000); /* message 4 in block 1 too */

	for (unsigned n = 0; n < 5; n++)
		a_queue(n);
	MUST(send(a, NULL, 0, 0));
	for (unsigned n = 0; n < 3; n++)
		if (!a_read(n))
			MUST(-1);
	struct tpacket2_hdr *f4 = (struct tpacket2_hdr *)frame(a_rx, 4);
	if (!wait_status(&f4->tp_status, 1)) /* messages 3 and 4 are in the ring, unread */
		MUST(-1);
	a_queue(5); /* marked, not sent */
	for (unsigned n = 0; n < 6; n++) {
		MUST(s_send(n) ? 0 : -1);
		if (!v1_read(n))
			MUST(-1);
	}
	int f1 = fanout_socket(), f2 = fanout_socket();
	MUST(f1);
	MUST(f2);
	int fanout_arg = 0;
	socklen_t fl = sizeof(fanout_arg);
	MUST(getsockopt(f1, SOL_PACKET, PACKET_FANOUT, &fanout_arg, &fl));
	const char *mode = argc > 3 ? argv[3] : "";
	if (strcmp(mode, "closed-fd") == 0)
		MUST(close(v1));
	else if (strcmp(mode, "split-mapping") == 0)
		MUST(madvise(v1_rx + FRAMES * FRAME_SIZE / 2, FRAMES * FRAME_SIZE / 2, MADV_DONTFORK));
	uint8_t *a_at = a_rx, *v1_at = v1_rx, *v3_at = v3_rx;
	say("ready %d\n", getpid());

	while (!check_requested) /* polled: a restored task re-enters its sleep after a signal that came just before */
		usleep(1000);

	CHECK(a_rx == a_at && v1_rx == v1_at && v3_rx == v3_at, "ring mappings at %p, %p and %p", (void *)a_rx, (void *)v1_rx, (void *)v3_rx);
	CHECK(a_read(3), "A: message 3 still in RX frame 3");
	CHECK(a_read(4), "A: message 4 still in RX frame 4");
	struct tpacket2_hdr *t5 = (struct tpacket2_hdr *)frame(a_tx, 5);
	CHECK(t5->tp_status == TP_STATUS_SEND_REQUEST, "A: TX frame 5 still waits to be sent (status %u)", t5->tp_status);
	CHECK(send(a, NULL, 0, 0) >= 0, "A: send() of the waiting frame");
	CHECK(a_read(5), "A: message 5 sent from TX frame 5, received in RX frame 5");
	for (unsigned n = 6; n < 10; n++) {
		unsigned tx_frame = a_tx_next, rx_frame = a_rx_next;
		a_queue(n);
		int sent = send(a, NULL, 0, 0) >= 0;
		CHECK(sent && a_read(n), "A: message %u sent from TX frame %u, received in RX frame %u", n, tx_frame, rx_frame);
	}
	for (unsigned n = 6; n < 10; n++) {
		unsigned at = v1_next;
		CHECK(s_send(n) && v1_read(n), "V1: message %u received in frame %u", n, at);
	}
	for (unsigned n = 5; n < 16; n++)
		if (!s_send_v3(n))
			break;
	for (unsigned first = 3; first < 15; first += 3) {
		unsigned block = v3_next_block;
		CHECK(v3_read_block(first), "V3: block %u closed with messages %u-%u", block, first, first + 2);
	}
	int got1 = 0, got2 = 0;
	socklen_t l1 = sizeof(got1), l2 = sizeof(got2);
	getsockopt(f1, SOL_PACKET, PACKET_FANOUT, &got1, &l1);
	getsockopt(f2, SOL_PACKET, PACKET_FANOUT, &got2, &l2);
	CHECK(got1 == fanout_arg && got2 == fanout_arg, "F1, F2: fanout %#x and %#x (were %#x)", got1, got2, fanout_arg);
	uint8_t frame[64] = { 0 };
	frame[12] = ETH_FANOUT >> 8;
	frame[13] = ETH_FANOUT & 0xff;
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_FANOUT), .sll_ifindex = LO };
	for (int i = 0; i < 10; i++)
		sendto(s, frame, sizeof(frame), 0, (struct sockaddr *)&to, sizeof(to));
	usleep(50000);
	unsigned n1 = drain_count(f1), n2 = drain_count(f2);
	CHECK(n1 == 5 && n2 == 5, "F1, F2: 10 frames shared round robin (%u and %u)", n1, n2);
	say("done %d\n", failures);
	return 0;
}
