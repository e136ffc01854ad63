/*
 * The report protocol the end-to-end test programs share (see state-keeper.c for the whole of
 * it): lines appended to REPORT_FILE, "ready <pid>" once set up, then on SIGUSR1 one
 * "ok <what>" or "FAIL <what> (errno N)" line per check and "done <failures>".
 *
 * Header-only (each program is one .c file built on its own by tests/Makefile); every program
 * includes it once.
 */
#ifndef CRIU_TS_TESTS_KEEPER_H
#define CRIU_TS_TESTS_KEEPER_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int report_fd = -1;
static int failures;
static volatile sig_atomic_t check_requested;
static pthread_mutex_t say_lock = PTHREAD_MUTEX_INITIALIZER;

/* One whole line to the report, in one write (threads of a program may report at once). */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&say_lock);
	if (n > 0 && write(report_fd, line, (size_t)n) < 0)
		_exit(100);
	pthread_mutex_unlock(&say_lock);
}

/* "ok <what>" or "FAIL <what> (errno N)"; a trailing newline in the format is not doubled. */
static void keeper_check(int good, const char *fmt, ...) __attribute__((format(printf, 2, 3), unused));
static void keeper_check(int good, const char *fmt, ...)
{
	int saved_errno = errno;
	char what[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	size_t len = strlen(what);
	if (len > 0 && what[len - 1] == '\n')
		what[len - 1] = '\0';
	if (good) {
		say("ok %s\n", what);
	} else {
		say("FAIL %s (errno %d)\n", what, saved_errno);
		__sync_fetch_and_add(&failures, 1);
	}
}

#define CHECK(cond, ...) keeper_check((cond) ? 1 : 0, __VA_ARGS__)

/* A setup step that must work: otherwise the program says why and exits 99. */
#define MUST(x)                                                                            \
	do {                                                                               \
		if ((x) < 0) {                                                             \
			dprintf(report_fd, "setup failed: %s: %s\n", #x, strerror(errno)); \
			_exit(99);                                                         \
		}                                                                          \
	} while (0)

static void on_usr1(int sig) __attribute__((unused));
static void on_usr1(int sig)
{
	(void)sig;
	check_requested = 1;
}

/*
 * Closes what the starter leaked (test runners leave pipes and sockets open), so that the fd
 * table is the program's own, then opens REPORT_FILE for appending. Returns 0, or -1.
 */
static int keeper_open_report(const char *path) __attribute__((unused));
static int keeper_open_report(const char *path)
{
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	report_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	return report_fd < 0 ? -1 : 0;
}

#endif
