/*
 * The parasite's ABI, shared by native/parasite.c and packages/compel/src/parasite-abi.ts (which
 * mirrors every offset below and is checked against this header by a test).
 *
 * The blob is mapped MAP_SHARED from a memfd that the injector also holds, so the control area
 * (struct parasite_ctl and the buffers after it) is written by one side and read by the other
 * without copies. Requests and replies travel over a SOCK_SEQPACKET unix socket.
 */
#ifndef CRIU_TS_PARASITE_H
#define CRIU_TS_PARASITE_H

typedef unsigned long u64;
typedef long s64;
typedef unsigned int u32;
typedef int s32;

#define PARASITE_MAGIC 0x63726975747321ULL /* "criuts!" */

struct parasite_ctl {
  u64 magic;              /*   0 */
  s32 sock;               /*   8: control socket fd in the task, -1 until connected */
  s32 pad0;               /*  12 */
  u64 blob_addr;          /*  16: start of the blob mapping in the task */
  u64 blob_len;           /*  24 */
  u64 scratch_addr;       /*  32: the injector's scratch mapping, unmapped on self-cure (0: none) */
  u64 scratch_len;        /*  40 */
  u64 chain_addr;         /*  48: where the self-cure chain goes (below the task's red zone); 0: no unmap */
  u64 chain_len;          /*  56 */
  u64 chain_off;          /*  64: offset from ctl of the chain bytes the injector prepared */
  u64 gadget_syscall_ret; /*  72: address of "syscall; ret" in the task's own code */
  u64 uc_stack_off;       /*  80: offset in the chain of the frame's uc_stack (patched at self-cure) */
  u64 frame_in_blob;      /*  88: address of a copy of the frame inside the blob (fallback sigreturn) */
  u64 state;              /*  96: 1 daemon running, 2 self-cure started */
  /* parasite_entry_call (parasite-entry.S) reports through these: the function's result, then
   * call_done = 1; call_byte is the buffer of the read it then waits in. */
  s64 call_ret;           /* 104 */
  u64 call_done;          /* 112 */
  u64 call_byte;          /* 120 */
  /* The daemon opens its control socket itself (one ptrace round trip less per call saved is
   * what makes infection cheap): socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC), then connect to
   * this address of the injector's listening socket, before it serves requests. */
  u32 connect_len;        /* 128: sockaddr_un length */
  u32 pad1;               /* 132 */
  char connect_addr[112]; /* 136: struct sockaddr_un (110 bytes) */
  /* When not 0: at its first start, before it connects, the daemon writes what DUMP_TASK would
   * answer at this offset from ctl (s64 result, then the reply's data), so that the injector has
   * it with the connection instead of a request and its round trip while the task is frozen. */
  u64 task_at_start_off;  /* 248 */
};

enum parasite_cmd {
  PARASITE_CMD_FINI = 0,
  PARASITE_CMD_PING = 1,
  PARASITE_CMD_VMSPLICE = 2,
  PARASITE_CMD_DUMP_SIGACTIONS = 3,
  PARASITE_CMD_DUMP_ITIMERS = 4,
  PARASITE_CMD_DUMP_POSIX_TIMERS = 5,
  PARASITE_CMD_DUMP_MISC = 6,
  PARASITE_CMD_RECV_FDS = 7,
  PARASITE_CMD_SEND_FDS = 8,
  PARASITE_CMD_SYSCALL = 9,
  PARASITE_CMD_CALL = 10,
  PARASITE_CMD_DUMP_PAGES = 11,
  PARASITE_CMD_DUMP_TASK = 12,
};

/* DUMP_TASK: the answers of DUMP_MISC, DUMP_SIGACTIONS and DUMP_ITIMERS in one reply, one after
 * the other (struct parasite_misc, 64 struct parasite_sigaction, 3 struct itimerval): one round
 * trip instead of three while the task is frozen. Returns 0 or the first -errno. */

/* FINI (arg0 = PARASITE_MAGIC) is answered and the daemon waits for the next request: the
 * injector then takes the thread back with PTRACE_INTERRUPT (see Parasite.stopSync). */

/*
 * DUMP_PAGES: arg0 unused (0), arg1 offset from ctl of the iovecs, arg2 their count. The
 * request carries three fds: the output file and the pipe's read and write ends (closed again
 * after the request, like every fd a request brings). The parasite moves every iovec's pages to
 * the file at its position, pipeful by pipeful (vmsplice, then splice). Returns the bytes
 * written or -errno.
 */

struct parasite_req {  /* 56 bytes */
  u32 cmd;
  u32 pad;
  u64 arg[6];
};

#define PARASITE_REPLY_MAX 8192
struct parasite_rep_hdr { /* 16 bytes, then len bytes of data */
  s64 ret;
  u32 cmd;
  u32 len;
};

/* DUMP_SIGACTIONS: 64 of these, for signals 1..64 (the kernel's struct sigaction on x86_64). */
struct parasite_sigaction {
  u64 handler;
  u64 flags;
  u64 restorer;
  u64 mask;
};

/* DUMP_POSIX_TIMERS: one per requested id. */
struct parasite_posix_timer {
  s32 id;
  s32 overrun;
  s64 interval_sec, interval_nsec, value_sec, value_nsec;
};

/* DUMP_MISC. */
struct parasite_misc {
  s64 pid, tid, ppid, pgid, sid;
  s64 umask;
  s64 dumpable, pdeathsig, personality, no_new_privs, child_subreaper;
  u64 altstack_sp;
  s64 altstack_flags;
  u64 altstack_size;
  u64 clear_child_tid;
  s64 securebits;
  char comm[16];
};

#endif
