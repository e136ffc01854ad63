/*
 * move-server: a TCP server with live client connections, the program of the move test
 * (packages/core/test/netns-move-e2e.test.ts), which dumps it in one network namespace and
 * restores it in another with the same addresses.
 *
 *   move-server REPORT_FILE WORK_DIR ADDRESS PORT CLIENTS
 *
 * Listens on ADDRESS:PORT (IPv4), says "ready <pid>", accepts CLIENTS connections, says
 * "accepted <count>". Then, on every connection, sends STREAM_LEN bytes of the stream seeded with the
 * client's port and checks the client's stream (seeded with the client's port + 1) byte by byte,
 * as fast as the client takes and gives: the test's clients go slowly before the dump, so the
 * checkpoint finds data in flight both ways. Once every connection is through both ways it says,
 * per client, "ok client <port>: sent N, received N, bad 0, fnv <hash of what it received>" (or
 * FAIL), then "done <failures>", and exits with the number of failures. Stops by itself after
 * 10 minutes (a test that died leaves nothing running for long).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "keeper.h"

#define STREAM_LEN (3u << 20)
#define MAX_CLIENTS 16

/* Byte i of stream `seed`: the generator of tests/inet-keeper.c (the test computes the same). */
static uint8_t stream_byte(uint32_t seed, uint32_t i)
{
	uint32_t v = (i ^ seed) * 0x9E3779B1u;
	v ^= v >> 15;
	v *= 0x85EBCA77u;
	v ^= v >> 13;
	return (uint8_t)v;
}

struct client {
	int fd;
	unsigned port;
	uint32_t sent, received;
	int bad;
	uint32_t fnv; /* FNV-1a of every byte received */
};

static void pump_send(struct client *c)
{
	static uint8_t buf[65536];
	while (c->sent < STREAM_LEN) {
		uint32_t n = STREAM_LEN - c->sent < sizeof(buf) ? STREAM_LEN - c->sent : (uint32_t)sizeof(buf);
		for (uint32_t i = 0; i < n; i++)
			buf[i] = stream_byte(c->port, c->sent + i);
		ssize_t w = send(c->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w <= 0)
			return;
		c->sent += (uint32_t)w;
	}
}

static void pump_recv(struct client *c)
{
	static uint8_t buf[65536];
	while (c->received < STREAM_LEN) {
		ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r <= 0)
			return;
		for (ssize_t i = 0; i < r; i++) {
			if (buf[i] != stream_byte(c->port + 1, c->received + (uint32_t)i))
				c->bad++;
			c->fnv = (c->fnv ^ buf[i]) * 16777619u;
		}
		c->received += (uint32_t)r;
	}
}

int main(int argc, char **argv)
{
	if (argc != 6 || keeper_open_report(argv[1]) < 0)
		return 98;
	int count = atoi(argv[5]);
	if (count < 1 || count > MAX_CLIENTS)
		return 98;
	alarm(600);

	int listener = socket(AF_INET, SOCK_STREAM, 0);
	MUST(listener);
	int one = 1;
	MUST(setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[4]))};
	if (inet_pton(AF_INET, argv[3], &a.sin_addr) != 1) {
		dprintf(report_fd, "setup failed: %s is no IPv4 address\n", argv[3]);
		return 99;
	}
	MUST(bind(listener, (struct sockaddr *)&a, sizeof(a)));
	MUST(listen(listener, MAX_CLIENTS));
	say("ready %d\n", getpid());

	struct client clients[MAX_CLIENTS];
	for (int i = 0; i < count; i++) {
		struct sockaddr_in peer;
		socklen_t len = sizeof(peer);
		int fd = accept(listener, (struct sockaddr *)&peer, &len);
		MUST(fd);
		clients[i] = (struct client){.fd = fd, .port = ntohs(peer.sin_port), .fnv = 2166136261u};
	}
	say("accepted %d\n", count);

	for (;;) {
		struct pollfd pfds[MAX_CLIENTS];
		int open = 0;
		for (int i = 0; i < count; i++) {
			struct client *c = &clients[i];
			pump_send(c);
			pump_recv(c);
			short events = (c->sent < STREAM_LEN ? POLLOUT : 0) | (c->received < STREAM_LEN ? POLLIN : 0);
			pfds[i] = (struct pollfd){.fd = events ? c->fd : -1, .events = events};
			open += events != 0;
		}
		if (open == 0)
			break;
		/* A timeout too: a poll interrupted by the checkpoint resumes into the loop either way. */
		poll(pfds, (nfds_t)count, 100);
	}
	for (int i = 0; i < count; i++) {
		struct client *c = &clients[i];
		CHECK(c->bad == 0, "client %u: sent %u, received %u, bad %d, fnv %08x", c->port, c->sent, c->received, c->bad, c->fnv);
	}
	say("done %d\n", failures);
	return failures;
}
