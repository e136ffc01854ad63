/*
 * log-client: a process whose datagram socket is connected to a named socket outside it, the way
 * syslog(3) clients are connected to /dev/log; for criu's --ext-unix-sk. Also the sink it talks
 * to, run as a separate process (outside the dumped tree).
 *
 *   log-client sink PATH OUT_FILE        binds a datagram socket at PATH and appends every
 *                                        datagram to OUT_FILE (10 minutes at most)
 *   log-client REPORT_FILE WORK_DIR SINK connects to SINK, sends "before <pid>"; on
 *                                        SIGUSR1 sends "after <pid>" with send() (no address:
 *                                        the connection must be there) and reports
 *
 * Protocol of the second form as tests/state-keeper.c.
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include "keeper.h"

static int run_sink(const char *path, const char *out_path)
{
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	int out = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	int sock = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
	unlink(path);
	if (out < 0 || sock < 0 || bind(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return 3;
	struct timeval tick = { 1, 0 };
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof(tick));
	time_t end = time(NULL) + 600;
	char buf[512];
	while (time(NULL) < end) {
		ssize_t n = recv(sock, buf, sizeof(buf) - 1, 0);
		if (n > 0) {
			buf[n++] = '\n';
			if (write(out, buf, (size_t)n) < 0)
				return 4;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "sink") == 0)
		return run_sink(argv[2], argv[3]);
	if (argc != 4 || keeper_open_report(argv[1]) < 0)
		return 2;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", argv[3]);
	int sock = socket(AF_UNIX, SOCK_DGRAM, 0);
	MUST(sock);
	MUST(connect(sock, (struct sockaddr *)&addr, sizeof(addr)));
	char line[64];
	int n = snprintf(line, sizeof(line), "before %d", getpid());
	MUST(send(sock, line, (size_t)n, 0));
	signal(SIGUSR1, on_usr1);
	say("ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);
	n = snprintf(line, sizeof(line), "after %d", getpid());
	CHECK(send(sock, line, (size_t)n, 0) == n, "send on the socket connected to the sink");
	struct sockaddr_un peer;
	socklen_t len = sizeof(peer);
	CHECK(getpeername(sock, (struct sockaddr *)&peer, &len) == 0 && strcmp(peer.sun_path, addr.sun_path) == 0, "connected to the sink's name");
	say("done %d\n", failures);
	return failures;
}
