/*
 * The criu-ts parasite: runs inside a seized task, serves requests from the injector over a unix
 * socket, and gets the task back to exactly where it was when the injector goes away.
 *
 * Built without libc (-nostdlib -ffreestanding), position independent (-fPIE, every data access
 * RIP-relative, no pointers in initialised data, so the flat binary needs no relocations) and
 * without SSE/AVX (-mgeneral-regs-only): the parasite never changes the task's FPU state, so the
 * injector only has to put the general registers and the signal mask back.
 */
#include "parasite.h"

#define NR_read 0
#define NR_close 3
#define NR_splice 275
#define NR_rt_sigaction 13
#define NR_getitimer 36
#define NR_getpid 39
#define NR_socket 41
#define NR_connect 42
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_getppid 110
#define NR_getpgid 121
#define NR_getsid 124
#define NR_sigaltstack 131
#define NR_personality 135
#define NR_prctl 157
#define NR_gettid 186
#define NR_munmap 11
#define NR_umask 95
#define NR_timer_gettime 224
#define NR_timer_getoverrun 225
#define NR_vmsplice 278
#define NR_rt_sigpending 127
#define NR_rt_sigtimedwait 128


#define PR_GET_PDEATHSIG 2
#define PR_GET_DUMPABLE 3
#define PR_GET_NAME 16
#define PR_GET_SECUREBITS 27
#define PR_GET_CHILD_SUBREAPER 37
#define PR_GET_NO_NEW_PRIVS 39
#define PR_GET_TID_ADDRESS 40

#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define MSG_NOSIGNAL 0x4000
#define MSG_PEEK 0x2
#define MSG_DONTWAIT 0x40
#define MSG_CMSG_CLOEXEC 0x40000000
#define MAX_FDS 16
#define SIGPIPE 13
#define SPLICE_F_NONBLOCK 0x02
#define UIO_MAXIOV 1024
#define EPIPE 32

static inline s64 sys6(s64 nr, s64 a, s64 b, s64 c, s64 d, s64 e, s64 f) {
  s64 ret;
  register s64 r10 __asm__("r10") = d;
  register s64 r8 __asm__("r8") = e;
  register s64 r9 __asm__("r9") = f;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
  return ret;
}
#define sys0(n) sys6(n, 0, 0, 0, 0, 0, 0)
#define sys1(n, a) sys6(n, (s64)(a), 0, 0, 0, 0, 0)
#define sys2(n, a, b) sys6(n, (s64)(a), (s64)(b), 0, 0, 0, 0)
#define sys3(n, a, b, c) sys6(n, (s64)(a), (s64)(b), (s64)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) sys6(n, (s64)(a), (s64)(b), (s64)(c), (s64)(d), 0, 0)

/* The compiler may emit calls to these even in freestanding code. */
void *memcpy(void *dst, const void *src, unsigned long n) {
  char *d = dst;
  const char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}
void *memset(void *dst, int c, unsigned long n) {
  char *d = dst;
  while (n--) *d++ = (char)c;
  return dst;
}

struct iovec { void *base; u64 len; };
struct msghdr { void *name; u32 namelen; struct iovec *iov; u64 iovlen; void *control; u64 controllen; s32 flags; };
struct cmsghdr { u64 len; s32 level; s32 type; };
struct stack_t { u64 sp; s32 flags; s32 pad; u64 size; };
struct itimerval { s64 i_sec, i_usec, v_sec, v_usec; };
struct itimerspec { s64 i_sec, i_nsec, v_sec, v_nsec; };

extern void parasite_jump_chain(u64 chain_sp, u64 blob, u64 len, u64 gadget) __attribute__((noreturn));
extern void parasite_sigreturn(u64 frame) __attribute__((noreturn));

static char reply_buf[sizeof(struct parasite_rep_hdr) + PARASITE_REPLY_MAX] __attribute__((aligned(16)));
static char cbuf[sizeof(struct cmsghdr) + MAX_FDS * 4] __attribute__((aligned(8)));

/* Receives one request; fds passed with it land in fds[]. Returns bytes, 0 on EOF, -errno. */
static s64 recv_req(int sock, struct parasite_req *req, s32 *fds, int *nfds) {
  struct iovec iov = {req, sizeof(*req)};
  struct msghdr mh = {0, 0, &iov, 1, cbuf, sizeof(cbuf), 0};
  s64 n = sys3(NR_recvmsg, sock, &mh, MSG_CMSG_CLOEXEC);
  *nfds = 0;
  if (n > 0 && mh.controllen >= sizeof(struct cmsghdr)) {
    struct cmsghdr *c = (struct cmsghdr *)cbuf;
    if (c->level == SOL_SOCKET && c->type == SCM_RIGHTS) {
      int k = (int)((c->len - sizeof(*c)) / 4);
      s32 *p = (s32 *)(c + 1);
      for (int i = 0; i < k && i < MAX_FDS; i++) fds[(*nfds)++] = p[i];
    }
  }
  return n;
}

static s64 send_rep(int sock, u32 cmd, s64 ret, u32 len, const s32 *fds, int nfds) {
  struct parasite_rep_hdr *h = (struct parasite_rep_hdr *)reply_buf;
  h->ret = ret;
  h->cmd = cmd;
  h->len = len;
  struct iovec iov = {reply_buf, sizeof(*h) + len};
  struct msghdr mh = {0, 0, &iov, 1, 0, 0, 0};
  if (nfds > 0) {
    struct cmsghdr *c = (struct cmsghdr *)cbuf;
    c->len = sizeof(*c) + 4 * (u64)nfds;
    c->level = SOL_SOCKET;
    c->type = SCM_RIGHTS;
    s32 *p = (s32 *)(c + 1);
    for (int i = 0; i < nfds; i++) p[i] = fds[i];
    mh.control = cbuf;
    mh.controllen = sizeof(*c) + ((4 * (u64)nfds + 7) & ~7UL);
  }
  return sys3(NR_sendmsg, sock, &mh, MSG_NOSIGNAL);
}

/* vmsplice every byte of the iovecs into the pipe, continuing after short transfers. */
static s64 do_vmsplice(int pipe_fd, struct iovec *iov, u64 n, u64 flags) {
  s64 total = 0;
  u64 i = 0;
  while (i < n) {
    s64 r = sys4(NR_vmsplice, pipe_fd, &iov[i], n - i, flags);
    if (r < 0) return total ? total : r;
    if (r == 0) break;
    total += r;
    while (i < n && (u64)r >= iov[i].len) { r -= (s64)iov[i].len; i++; }
    if (i < n && r > 0) { iov[i].base = (char *)iov[i].base + r; iov[i].len -= (u64)r; }
  }
  return total;
}

/*
 * Whether the injector closed its end of the control socket (it died): nothing to read and the
 * peer gone reads as 0; with the injector alive, the socket is empty (EAGAIN).
 */
static int injector_gone(int sock) {
  char byte;
  return sys6(NR_recvfrom, sock, (s64)&byte, 1, MSG_PEEK | MSG_DONTWAIT, 0, 0) == 0;
}

/*
 * Every byte of the iovecs to file `out` at its position, one pipeful at a time: vmsplice takes
 * what fits (the pipe references the task's pages, which stay put: the task is frozen), splice
 * copies it into the file's page cache. Running here saves the injector a round trip per pipeful
 * (the pipe holds at most 1 MiB without CAP_SYS_RESOURCE). Nothing else runs here while the
 * task is frozen: the injector starts the disk writeback from its own CPU (core's
 * writebackBehind), which kept a sync_file_range here from slowing the copy.
 */
static s64 dump_pages(int sock, int pipe_w, int pipe_r, int out, struct iovec *iov, u64 n) {
  s64 total = 0;
  u64 i = 0;
  while (i < n) {
    /* An injector killed mid-copy would leave the task copying pages for nobody, holding the
     * file and the pipe, for as long as the rest of the batch takes: stop at once instead. */
    if (injector_gone(sock)) return -103; /* ECONNABORTED (not EPIPE: no SIGPIPE was raised) */
    u64 count = n - i < UIO_MAXIOV ? n - i : UIO_MAXIOV;
    s64 r = sys4(NR_vmsplice, pipe_w, &iov[i], count, SPLICE_F_NONBLOCK);
    if (r < 0) return r;
    if (r == 0) return -5; /* EIO: no progress with an empty pipe */
    for (s64 left = r; left > 0;) {
      s64 m = sys6(NR_splice, pipe_r, 0, out, 0, left, 0);
      if (m < 0) return m;
      if (m == 0) return -5;
      left -= m;
    }
    total += r;
    while (i < n && (u64)r >= iov[i].len) { r -= (s64)iov[i].len; i++; }
    if (i < n && r > 0) { iov[i].base = (char *)iov[i].base + r; iov[i].len -= (u64)r; }
  }
  return total;
}

/* The 64 signal dispositions; one the kernel refuses to show (none does) reads as all zero. */
static void dump_sigactions(struct parasite_sigaction *sa) {
  for (int sig = 1; sig <= 64; sig++) {
    s64 r = sys4(NR_rt_sigaction, sig, 0, &sa[sig - 1], 8);
    if (r < 0) memset(&sa[sig - 1], 0, sizeof(sa[0]));
  }
}

/* ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF; 0 or the first -errno. */
static s64 dump_itimers(struct itimerval *it) {
  for (int w = 0; w < 3; w++) {
    s64 r = sys2(NR_getitimer, w, &it[w]);
    if (r < 0) return r;
  }
  return 0;
}

static s64 dump_misc(struct parasite_misc *m) {
  memset(m, 0, sizeof(*m));
  m->pid = sys0(NR_getpid);
  m->tid = sys0(NR_gettid);
  m->ppid = sys0(NR_getppid);
  m->pgid = sys1(NR_getpgid, 0);
  m->sid = sys1(NR_getsid, 0);
  /* umask has no "get": set it and put the old value straight back (the task is not running). */
  m->umask = sys1(NR_umask, 0);
  sys1(NR_umask, m->umask);
  m->dumpable = sys2(NR_prctl, PR_GET_DUMPABLE, 0);
  s32 pdeath = 0;
  sys2(NR_prctl, PR_GET_PDEATHSIG, &pdeath);
  m->pdeathsig = pdeath;
  m->personality = sys1(NR_personality, 0xffffffffUL);
  m->no_new_privs = sys2(NR_prctl, PR_GET_NO_NEW_PRIVS, 0);
  s32 sub = 0;
  sys2(NR_prctl, PR_GET_CHILD_SUBREAPER, &sub);
  m->child_subreaper = sub;
  struct stack_t ss;
  sys2(NR_sigaltstack, 0, &ss);
  m->altstack_sp = ss.sp;
  m->altstack_flags = ss.flags;
  m->altstack_size = ss.size;
  u64 tidaddr = 0;
  sys2(NR_prctl, PR_GET_TID_ADDRESS, &tidaddr);
  m->clear_child_tid = tidaddr;
  m->securebits = sys2(NR_prctl, PR_GET_SECUREBITS, 0);
  sys2(NR_prctl, PR_GET_NAME, m->comm);
  return 0;
}

/*
 * DUMP_MISC for a thread other than the daemon's: the injector runs this in that thread (through
 * parasite_entry_call, on the blob's second stack) while the daemon waits for requests, since
 * sigaltstack, the tid address, the pdeath signal, securebits and no_new_privs are per thread.
 */
s64 parasite_dump_misc(struct parasite_misc *m) {
  return dump_misc(m);
}

/*
 * The injector is gone (EOF or error on the control socket) and the task is no longer traced:
 * put it back by itself. The injector prepared, in the control area, a chain and an rt_sigreturn
 * frame holding the task's registers and signal mask as they were before infection. We copy
 * them below the task's red zone, then jump to "syscall; ret" in the task's own code with
 * RAX = munmap(blob): the blob disappears, ret pops "pop rax; ret", which loads 15, whose ret
 * lands on "syscall; ret" again: rt_sigreturn restores everything from the frame.
 */
/*
 * Descriptors the injector handed to the task (RECV_FDS) and has not closed again (a SYSCALL
 * command running close). If the injector dies, they are closed with the control socket: the
 * task gets back exactly the descriptor table it had before the injection.
 */
#define MAX_OWNED_FDS 16
static s32 owned_fds[MAX_OWNED_FDS];
static int nr_owned_fds;

static void own_fd(s32 fd) {
  if (nr_owned_fds < MAX_OWNED_FDS) owned_fds[nr_owned_fds++] = fd;
}

static void disown_fd(s32 fd) {
  for (int i = 0; i < nr_owned_fds; i++) {
    if (owned_fds[i] == fd) {
      owned_fds[i] = owned_fds[--nr_owned_fds];
      return;
    }
  }
}

/*
 * A write of ours into a pipe whose reader died (the injector's end of the page pipe, when it is
 * killed mid-dump) fails with EPIPE and raises SIGPIPE at this thread (pipe(7)). Every signal is
 * blocked while we run, so it waits, and the frame's mask would let it in right after the
 * self-cure: the task would die of a signal that is ours, not its own. We remember whether
 * SIGPIPE was already pending when we started (then any SIGPIPE is the task's: a second one
 * merges into it) and whether one of our calls got EPIPE.
 */
static int sigpipe_pending_at_start;
static int raised_sigpipe;

static int sigpipe_pending(void) {
  u64 pending = 0;
  return sys2(NR_rt_sigpending, &pending, 8) == 0 && ((pending >> (SIGPIPE - 1)) & 1);
}

static void drop_own_sigpipe(void) {
  if (!raised_sigpipe || sigpipe_pending_at_start || !sigpipe_pending()) return;
  u64 set = 1ULL << (SIGPIPE - 1);
  struct { s64 sec, nsec; } zero = { 0, 0 };
  sys4(NR_rt_sigtimedwait, &set, 0, &zero, 8);
}

static void __attribute__((noreturn)) self_cure(struct parasite_ctl *ctl) {
  ctl->state = 2;
  drop_own_sigpipe();
  if (ctl->sock >= 0) sys1(NR_close, ctl->sock);
  while (nr_owned_fds > 0) sys1(NR_close, owned_fds[--nr_owned_fds]);
  if (ctl->scratch_addr) sys2(NR_munmap, ctl->scratch_addr, ctl->scratch_len);
  struct stack_t ss;
  sys2(NR_sigaltstack, 0, &ss);
  char *src = (char *)ctl + ctl->chain_off;
  if (ctl->chain_addr) {
    memcpy(src + ctl->uc_stack_off, &ss, sizeof(ss));
    memcpy((void *)ctl->chain_addr, src, ctl->chain_len);
    parasite_jump_chain(ctl->chain_addr, ctl->blob_addr, ctl->blob_len, ctl->gadget_syscall_ret);
  }
  /* No place for the chain: restore the task and leave the blob mapped. */
  memcpy((char *)ctl->frame_in_blob + (ctl->uc_stack_off - 16), &ss, sizeof(ss));
  parasite_sigreturn(ctl->frame_in_blob);
}

/* DUMP_TASK: misc, sigactions and itimers one after the other at `out`; their length in *len. */
static s64 dump_task(char *out, u32 *len) {
  char *at = out;
  s64 ret = dump_misc((struct parasite_misc *)at);
  at += sizeof(struct parasite_misc);
  dump_sigactions((struct parasite_sigaction *)at);
  at += 64 * sizeof(struct parasite_sigaction);
  s64 r = dump_itimers((struct itimerval *)at);
  if (ret >= 0 && r < 0) ret = r;
  at += 3 * sizeof(struct itimerval);
  *len = (u32)(at - out);
  return ret;
}

s64 parasite_daemon(struct parasite_ctl *ctl) {
  static struct parasite_req req;
  s32 fds[MAX_FDS];
  int nfds;
  char *data = reply_buf + sizeof(struct parasite_rep_hdr);
  ctl->state = 1;
  sigpipe_pending_at_start = sigpipe_pending();
  raised_sigpipe = 0;
  if (ctl->sock < 0) {
    if (ctl->task_at_start_off != 0) {
      s64 *at_start = (s64 *)((char *)ctl + ctl->task_at_start_off);
      u32 unused_len;
      at_start[0] = dump_task((char *)(at_start + 1), &unused_len);
    }
    /* Our own control socket (see struct parasite_ctl). Recorded before connect, so that a
     * self-cure closes it whatever happens next; a failed connect means the injector is gone. */
    s64 fd = sys3(NR_socket, 1 /* AF_UNIX */, 5 /* SOCK_SEQPACKET */ | 02000000 /* SOCK_CLOEXEC */, 0);
    if (fd < 0) self_cure(ctl);
    ctl->sock = (s32)fd;
    if (sys3(NR_connect, fd, (s64)ctl->connect_addr, ctl->connect_len) < 0) self_cure(ctl);
  }
  int sock = ctl->sock;
  for (;;) {
    s64 n = recv_req(sock, &req, fds, &nfds);
    if (n <= 0) self_cure(ctl);
    s64 ret = 0;
    u32 len = 0;
    int send_nfds = 0;
    s32 send_fds[6];
    /* A request that is not exactly one struct is answered with an error, never acted on. */
    u32 cmd = n == (s64)sizeof(req) ? req.cmd : 0xffffffffU;
    switch (cmd) {
    case PARASITE_CMD_FINI:
      /* The daemon stays in its loop: the injector takes the thread back with PTRACE_INTERRUPT
       * while it waits for the next request. Never leaving the loop means there is no moment at
       * which the thread runs toward an int3: a trap with no tracer left would kill the task,
       * while a thread waiting here when the injector dies gets EOF and cures itself. */
      ret = req.arg[0] == PARASITE_MAGIC ? 0 : -22; /* EINVAL: not a whole FINI */
      break;
    case PARASITE_CMD_PING:
      ret = sys0(NR_gettid);
      ((s64 *)data)[0] = sys0(NR_getpid);
      len = 8;
      break;
    case PARASITE_CMD_VMSPLICE:
      ret = do_vmsplice((int)req.arg[0], (struct iovec *)((char *)ctl + req.arg[1]), req.arg[2], req.arg[3]);
      break;
    case PARASITE_CMD_DUMP_PAGES:
      if (nfds != 3) { ret = -22; break; }
      ret = dump_pages(sock, fds[2], fds[1], fds[0], (struct iovec *)((char *)ctl + req.arg[1]), req.arg[2]);
      break;
    case PARASITE_CMD_DUMP_SIGACTIONS:
      dump_sigactions((struct parasite_sigaction *)data);
      ret = 64;
      len = 64 * sizeof(struct parasite_sigaction);
      break;
    case PARASITE_CMD_DUMP_ITIMERS:
      ret = dump_itimers((struct itimerval *)data);
      len = 3 * sizeof(struct itimerval);
      break;
    case PARASITE_CMD_DUMP_TASK:
      ret = dump_task(data, &len);
      break;
    case PARASITE_CMD_DUMP_POSIX_TIMERS: {
      u64 count = req.arg[0];
      s32 *ids = (s32 *)((char *)ctl + req.arg[1]);
      struct parasite_posix_timer *out = (struct parasite_posix_timer *)data;
      if (count > PARASITE_REPLY_MAX / sizeof(*out)) { ret = -22; break; }
      for (u64 i = 0; i < count; i++) {
        struct itimerspec ts;
        s64 r = sys2(NR_timer_gettime, ids[i], &ts);
        if (r < 0) { ret = r; break; }
        out[i].id = ids[i];
        out[i].overrun = (s32)sys1(NR_timer_getoverrun, ids[i]);
        out[i].interval_sec = ts.i_sec;
        out[i].interval_nsec = ts.i_nsec;
        out[i].value_sec = ts.v_sec;
        out[i].value_nsec = ts.v_nsec;
      }
      if (ret == 0) { ret = (s64)count; len = (u32)(count * sizeof(*out)); }
      break;
    }
    case PARASITE_CMD_DUMP_MISC:
      ret = dump_misc((struct parasite_misc *)data);
      len = sizeof(struct parasite_misc);
      break;
    case PARASITE_CMD_RECV_FDS:
      for (int i = 0; i < nfds; i++) {
        ((s32 *)data)[i] = fds[i];
        own_fd(fds[i]);
      }
      ret = nfds;
      len = (u32)(4 * nfds);
      nfds = 0;
      break;
    case PARASITE_CMD_SEND_FDS:
      send_nfds = req.arg[0] > 5 ? 5 : (int)req.arg[0];
      for (int i = 0; i < send_nfds; i++) send_fds[i] = (s32)req.arg[1 + i];
      ret = send_nfds;
      break;
    case PARASITE_CMD_SYSCALL:
      ret = sys6((s64)req.arg[0], (s64)req.arg[1], (s64)req.arg[2], (s64)req.arg[3], (s64)req.arg[4], (s64)req.arg[5], 0);
      if (req.arg[0] == NR_close && ret == 0) disown_fd((s32)req.arg[1]);
      break;
    case PARASITE_CMD_CALL: {
      s64 (*fn)(s64, s64, s64, s64, s64) = (s64 (*)(s64, s64, s64, s64, s64))req.arg[0];
      ret = fn((s64)req.arg[1], (s64)req.arg[2], (s64)req.arg[3], (s64)req.arg[4], (s64)req.arg[5]);
      break;
    }
    case 0xffffffffU:
      ret = -74; /* EBADMSG: not one whole request */
      break;
    default:
      ret = -38; /* ENOSYS */
    }
    if (ret == -EPIPE) raised_sigpipe = 1;
    /* fds that came with a request other than RECV_FDS are not wanted: do not leak them. */
    for (int i = 0; i < nfds; i++) sys1(NR_close, fds[i]);
    if (send_rep(sock, req.cmd, ret, len, send_fds, send_nfds) < 0) self_cure(ctl);
  }
}
