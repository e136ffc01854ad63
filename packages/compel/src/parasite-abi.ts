// The parasite's ABI as native/parasite.h defines it (a test compiles a C program against the
// header and compares every offset and size listed here).

export const PARASITE_MAGIC = 0x63726975747321n;

/** Offsets in struct parasite_ctl. */
export const CTL = {
  magic: 0, sock: 8, blob_addr: 16, blob_len: 24, scratch_addr: 32, scratch_len: 40, chain_addr: 48,
  chain_len: 56, chain_off: 64, gadget_syscall_ret: 72, uc_stack_off: 80, frame_in_blob: 88, state: 96,
  call_ret: 104, call_done: 112, call_byte: 120, connect_len: 128, connect_addr: 136, connect_addr_max: 112, task_at_start_off: 248,
  size: 256,
} as const;

export const CMD = {
  FINI: 0, PING: 1, VMSPLICE: 2, DUMP_SIGACTIONS: 3, DUMP_ITIMERS: 4, DUMP_POSIX_TIMERS: 5,
  DUMP_MISC: 6, RECV_FDS: 7, SEND_FDS: 8, SYSCALL: 9, CALL: 10, DUMP_PAGES: 11, DUMP_TASK: 12,
} as const;
export type ParasiteCommand = (typeof CMD)[keyof typeof CMD];

export const REQ_SIZE = 56;
export const REP_HDR_SIZE = 16;
export const REPLY_MAX = 8192;
export const SIGACTION_SIZE = 32;
export const POSIX_TIMER_SIZE = 40;
/** struct parasite_misc: 16 eight-byte fields, then comm[16]. */
export const MISC_SIZE = 16 * 8 + 16;
export const MISC_FIELDS = [
  'pid', 'tid', 'ppid', 'pgid', 'sid', 'umask', 'dumpable', 'pdeathsig', 'personality', 'no_new_privs',
  'child_subreaper', 'altstack_sp', 'altstack_flags', 'altstack_size', 'clear_child_tid', 'securebits',
] as const;

// x86_64 rt_sigframe as the kernel's rt_sigreturn reads it (arch/x86/include/asm/sigframe.h,
// uapi/asm/sigcontext.h, uapi/asm-generic/ucontext.h). Offsets from the frame start, which is the
// pretcode slot; rt_sigreturn finds the frame at RSP - 8.
export const SIGFRAME = {
  pretcode: 0,
  uc_flags: 8,
  uc_link: 16,
  uc_stack: 24, // stack_t: ss_sp, ss_flags (int + pad), ss_size
  mcontext: 48, // struct sigcontext_64, 256 bytes
  uc_sigmask: 304,
  size: 440, // + struct siginfo (128) after uc_sigmask
} as const;

/** sigcontext_64 members in order, 8 bytes each, from SIGFRAME.mcontext. */
export const SIGCONTEXT_GPRS = [
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rdi', 'rsi', 'rbp', 'rbx', 'rdx', 'rax', 'rcx', 'rsp', 'rip', 'eflags',
] as const;
export const SIGCONTEXT_CSGSFSSS = 18 * 8; // cs, gs, fs, ss as four u16
export const SIGCONTEXT_FPSTATE = 23 * 8; // after err, trapno, oldmask, cr2 (and 18 GPRs + segs)

/** uc_flags: the frame has XSAVE state, and SS is saved and must be restored as is. */
export const UC_FP_XSTATE = 1;
export const UC_SIGCONTEXT_SS = 2;
export const UC_STRICT_RESTORE_SS = 4;
