/*
 * A victim for the compel tests: sets up one kind of state, prints "ready ..." on stdout, and
 * afterwards proves that an infection left nothing behind.
 *
 *   compel-victim MODE [MiB]
 *
 * MODE is where the main thread sits while it is infected:
 *   busy       computing in registers (integer and SSE) in user space
 *   read       blocked in read(0)
 *   nanosleep  blocked in a 1.5 s nanosleep (restarts through restart_syscall)
 *   futex      a second thread blocked in FUTEX_WAIT, the main thread in read(0)
 *   epoll      blocked in epoll_wait on stdin
 *   threads    8 threads computing, the main thread in read(0)
 *   zombie     like busy, with an unreaped (zombie) child
 *
 * Every mode arms ITIMER_REAL (interval 1000 s, value 2000 s) and one POSIX timer (CLOCK_MONOTONIC,
 * SIGEV_NONE, interval 300 s, value 600 s), for the timer commands.
 * Every mode fills a data area of MiB mebibytes (default 1) with a pattern derived from the
 * pid and prints its address: "ready pid=P data=0xADDR len=N". A line "check" on stdin (or
 * SIGUSR1 in the busy modes) makes it verify its registers-visible work and the data area and
 * print "ok ..." or "bad ...". In read/futex/epoll/nanosleep modes the blocked call's result is
 * printed first ("read rc=... data=...", "woke rc=...", "epoll n=...", "slept rc=... ms=...").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint8_t *data;
static size_t data_len;
static volatile sig_atomic_t want_check;

static uint8_t pattern(size_t i) { return (uint8_t)((i * 2654435761u) >> 13) ^ (uint8_t)getpid(); }

static int check_data(void) {
  uint8_t pid = (uint8_t)getpid();
  for (size_t i = 0; i < data_len; i++)
    if (data[i] != (((uint8_t)((i * 2654435761u) >> 13)) ^ pid)) return 0;
  return 1;
}

#define K 6364136223846793005ULL
static uint64_t expected_acc(uint64_t n, uint64_t seed) {
  uint64_t acc = seed;
  for (uint64_t i = 0; i < n; i++) acc = acc * K + i;
  return acc;
}

static void on_usr1(int sig) { want_check = 1; }

/* The busy loop: acc and d live in registers (acc in a GPR, d in an XMM register). A remote call
 * that changed any of them would make the recomputation below disagree. */
static void busy(uint64_t seed) {
  uint64_t acc = seed;
  double d = 0;
  for (uint64_t i = 0;; i++) {
    acc = acc * K + i;
    d += 0.5;
    if (want_check) {
      want_check = 0;
      uint64_t n = i + 1;
      int ok = acc == expected_acc(n, seed) && d == (double)n * 0.5 && check_data();
      printf("%s iters=%llu\n", ok ? "ok" : "bad", (unsigned long long)n);
      fflush(stdout);
    }
  }
}

struct worker { pthread_t th; uint64_t seed; volatile uint64_t iters; volatile int ok; };
static struct worker workers[8];
static volatile int stop_workers;

static void *worker_main(void *arg) {
  struct worker *w = arg;
  uint64_t acc = w->seed;
  double d = 0;
  uint64_t i;
  for (i = 0; !stop_workers; i++) {
    acc = acc * K + i;
    d += 0.5;
  }
  w->ok = acc == expected_acc(i, w->seed) && d == (double)i * 0.5;
  w->iters = i;
  return NULL;
}

static uint32_t futex_word;
static void *futex_waiter(void *arg) {
  long rc = syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, NULL, NULL, 0);
  printf("woke rc=%ld errno=%d word=%u\n", rc, rc ? errno : 0, futex_word);
  fflush(stdout);
  return NULL;
}

static void wait_check_line(void) {
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (strncmp(line, "check", 5) == 0) {
      printf("%s\n", check_data() ? "ok data" : "bad data");
      fflush(stdout);
      return;
    }
  }
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "busy";
  size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
  data_len = mib << 20;
  data = mmap(NULL, data_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) return 2;
  for (size_t i = 0; i < data_len; i++) data[i] = pattern(i);
  signal(SIGUSR1, on_usr1);
  signal(SIGALRM, SIG_IGN);
  setvbuf(stdin, NULL, _IONBF, 0);
  /* Timers for the parasite's timer commands: far in the future, so they never fire in a test. */
  struct itimerval itv = {{1000, 0}, {2000, 0}};
  setitimer(ITIMER_REAL, &itv, NULL);
  struct sigevent sev = {.sigev_notify = SIGEV_NONE};
  timer_t timer;
  struct itimerspec its = {{300, 0}, {600, 0}};
  if (timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0) timer_settime(timer, 0, &its, NULL);

  if (!strcmp(mode, "zombie")) {
    pid_t child = fork();
    if (child == 0) _exit(0);
    /* wait until the child is a zombie (without reaping it) */
    siginfo_t si;
    waitid(P_PID, child, &si, WEXITED | WNOWAIT);
    printf("zombie=%d ", child);
  }
  printf("ready pid=%d data=%p len=%zu\n", getpid(), (void *)data, data_len);
  fflush(stdout);

  if (!strcmp(mode, "busy") || !strcmp(mode, "zombie")) {
    busy(42);
  } else if (!strcmp(mode, "read")) {
    char buf[64] = {0};
    ssize_t rc = read(0, buf, sizeof buf - 1);
    if (rc > 0 && buf[rc - 1] == '\n') buf[rc - 1] = 0;
    printf("read rc=%zd errno=%d data=%s\n", rc, rc < 0 ? errno : 0, buf);
    fflush(stdout);
    wait_check_line();
  } else if (!strcmp(mode, "nanosleep")) {
    struct timespec t0, t1, req = {1, 500000000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long rc = syscall(SYS_nanosleep, &req, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    printf("slept rc=%ld errno=%d ms=%ld\n", rc, rc ? errno : 0, ms);
    fflush(stdout);
    wait_check_line();
  } else if (!strcmp(mode, "futex")) {
    pthread_t th;
    pthread_create(&th, NULL, futex_waiter, NULL);
    char line[64];
    if (fgets(line, sizeof line, stdin)) {
      __atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
      syscall(SYS_futex, &futex_word, FUTEX_WAKE, 1, NULL, NULL, 0);
    }
    pthread_join(th, NULL);
    wait_check_line();
  } else if (!strcmp(mode, "epoll")) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7}, out[4];
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    int n = epoll_wait(ep, out, 4, -1);
    printf("epoll n=%d errno=%d tag=%llu\n", n, n < 0 ? errno : 0, n > 0 ? (unsigned long long)out[0].data.u64 : 0ULL);
    fflush(stdout);
    wait_check_line();
  } else if (!strcmp(mode, "threads")) {
    for (int i = 0; i < 8; i++) {
      workers[i].seed = 1000 + i;
      pthread_create(&workers[i].th, NULL, worker_main, &workers[i]);
    }
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
      if (strncmp(line, "check", 5) == 0) break;
    }
    stop_workers = 1;
    int ok = check_data();
    for (int i = 0; i < 8; i++) {
      pthread_join(workers[i].th, NULL);
      ok = ok && workers[i].ok && workers[i].iters > 0;
    }
    printf("%s threads=8\n", ok ? "ok" : "bad");
    fflush(stdout);
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  return 0;
}
