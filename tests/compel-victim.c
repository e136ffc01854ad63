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
 *   xstate     spinning (pause) with known values in xmm0, ymm15 and, if the CPU has AVX-512,
 *              zmm31 and k7 (low 16 bits); prints "avx512=0|1 sigframe=XFEATURES/SIZE " (the
 *              kernel's own signal-frame xstate header for it) before "ready"; on SIGUSR1 reports
 *          "ok xstate ..." or "bad xstate xmm0=.. ymm15=.. zmm31=.. k7=.." (each ok/bad)
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
#include <alloca.h>
#include <cpuid.h>
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
#include <ucontext.h>
#include <unistd.h>

static uint8_t *data;
static size_t data_len;
static volatile sig_atomic_t want_check;

/* The low byte of our pid, read once: a getpid() per byte made a 64 MiB area take over 10 s to fill. */
static uint8_t pid_byte;
static uint8_t pattern(size_t i) { return (uint8_t)((i * 2654435761u) >> 13) ^ pid_byte; }

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

/*
 * The xstate mode: xmm0, ymm15 (both halves), zmm31 and k7 hold values derived from the pid,
 * written, spun on and read back inside one asm block so that no compiled code touches them in
 * between. Anything that loses the extended state (an rt_sigreturn restoring only the FXSAVE
 * part, say) shows up as a changed upper half.
 */
static int have_avx512(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 16))) return 0; /* AVX512F */
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;          /* OSXSAVE */
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xe6) == 0xe6;
}

/* Only called when the CPU has AVX-512; the target attribute lets the asm name zmm31 and k7. */
static void __attribute__((noinline, target("avx512f"))) spin_avx512(const uint8_t *want, uint8_t *seen) {
  __asm__ volatile(
      "vmovdqu (%[w]), %%xmm0\n\t"
      "vmovdqu 16(%[w]), %%ymm15\n\t"
      "vmovdqu64 48(%[w]), %%zmm31\n\t"
      "kmovw 112(%[w]), %%k7\n\t"
      "1: pause\n\t"
      "cmpl $0, %[flag]\n\t"
      "je 1b\n\t"
      "vmovdqu %%xmm0, (%[s])\n\t"
      "vmovdqu %%ymm15, 16(%[s])\n\t"
      "vmovdqu64 %%zmm31, 48(%[s])\n\t"
      "kmovw %%k7, 112(%[s])\n\t"
      "vzeroupper"
      : [flag] "+m"(want_check)
      : [w] "r"(want), [s] "r"(seen)
      : "xmm0", "xmm15", "xmm31", "k7", "memory", "cc");
}

/* What the kernel writes in its own signal frames for this task (struct _fpx_sw_bytes): the
 * extended state and size its rt_sigreturn accepts. Printed in the xstate mode's ready line. */
static unsigned long long sw_xfeatures;
static unsigned sw_xstate_size;
static void on_probe(int sig, siginfo_t *si, void *uc_) {
  ucontext_t *uc = uc_;
  const uint8_t *fp = (const uint8_t *)uc->uc_mcontext.fpregs;
  if (*(const uint32_t *)(fp + 464) != 0x46505853) return; /* FP_XSTATE_MAGIC1 */
  memcpy(&sw_xfeatures, fp + 464 + 8, 8);
  memcpy(&sw_xstate_size, fp + 464 + 16, 4);
}

static void xstate(void) {
  int avx512 = have_avx512();
  uint8_t want[16 + 32 + 64 + 8] __attribute__((aligned(64)));
  uint8_t seen[sizeof want] __attribute__((aligned(64)));
  for (size_t i = 0; i < sizeof want; i++) want[i] = (uint8_t)(0x5a ^ (i * 37) ^ (getpid() >> (i & 7)));
  for (;;) {
    memset(seen, 0, sizeof seen);
    if (avx512) {
      spin_avx512(want, seen);
    } else {
      __asm__ volatile(
      "vmovdqu (%[w]), %%xmm0\n\t"
      "vmovdqu 16(%[w]), %%ymm15\n\t"
      "1: pause\n\t"
      "cmpl $0, %[flag]\n\t"
      "je 1b\n\t"
      "vmovdqu %%xmm0, (%[s])\n\t"
      "vmovdqu %%ymm15, 16(%[s])\n\t"
      "vzeroupper"
      : [flag] "+m"(want_check)
      : [w] "r"(want), [s] "r"(seen)
      : "xmm0", "xmm15", "memory", "cc");
    }
    want_check = 0;
    int x0 = !memcmp(seen, want, 16), y15 = !memcmp(seen + 16, want + 16, 32);
    int z31 = !avx512 || !memcmp(seen + 48, want + 48, 64), k7 = !avx512 || !memcmp(seen + 112, want + 112, 2);
    int ok = x0 && y15 && z31 && k7 && check_data();
    printf("%s xstate xmm0=%s ymm15=%s ymm15hi=%s zmm31=%s k7=%s avx512=%d sigframe=%llx/%u\n", ok ? "ok" : "bad",
           x0 ? "ok" : "bad", y15 ? "ok" : "bad", !memcmp(seen + 32, want + 32, 16) ? "ok" : "bad", z31 ? "ok" : "bad",
           k7 ? "ok" : "bad", avx512, sw_xfeatures, sw_xstate_size);
    fflush(stdout);
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
  pid_byte = (uint8_t)getpid();
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
  if (!strcmp(mode, "xstate")) {
    struct sigaction sa = {.sa_sigaction = on_probe, .sa_flags = SA_SIGINFO};
    sigaction(SIGUSR2, &sa, NULL);
    raise(SIGUSR2);
    printf("avx512=%d sigframe=%llx/%u ", have_avx512(), sw_xfeatures, sw_xstate_size);
  }
  printf("ready pid=%d data=%p len=%zu\n", getpid(), (void *)data, data_len);
  fflush(stdout);

  if (!strcmp(mode, "busy") || !strcmp(mode, "zombie")) {
    busy(42);
  } else if (!strcmp(mode, "xstate")) {
    /* The spin's stack moves down by a pid-derived amount (0-4080 bytes): the return chain compel
     * writes below it then starts at other page offsets from one victim to the next. */
    size_t shift = ((size_t)getpid() * 2654435761u) % 4096 & ~(size_t)15;
    volatile char *pad = alloca(shift + 16);
    pad[0] = 0;
    xstate();
    pad[0] = 1;
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
