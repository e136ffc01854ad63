/* Prints the C compiler's sizes and member offsets of the kernel structs @criu-ts/sys encodes by
 * hand, as JSON, so that the layout test compares koffi's view and the wrappers' constants with
 * the system headers. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/user.h>
#include <linux/ptrace.h>

#define S(t) printf("%s\"%s\":{\"size\":%zu", first ? "" : ",", #t, sizeof(struct t)); first = 0
#define M(t, m) printf(",\"%s\":%zu", #m, offsetof(struct t, m))
#define E() printf("}")

int main(void) {
  int first = 1;
  printf("{");
  S(user_regs_struct); M(user_regs_struct, r15); M(user_regs_struct, rax); M(user_regs_struct, orig_rax);
  M(user_regs_struct, rip); M(user_regs_struct, eflags); M(user_regs_struct, rsp); M(user_regs_struct, fs_base);
  M(user_regs_struct, gs_base); M(user_regs_struct, gs); E();
  S(user_fpregs_struct); M(user_fpregs_struct, mxcsr); M(user_fpregs_struct, xmm_space); E();
  S(iovec); M(iovec, iov_base); M(iovec, iov_len); E();
  S(msghdr); M(msghdr, msg_name); M(msghdr, msg_namelen); M(msghdr, msg_iov); M(msghdr, msg_iovlen);
  M(msghdr, msg_control); M(msghdr, msg_controllen); M(msghdr, msg_flags); E();
  S(cmsghdr); M(cmsghdr, cmsg_len); M(cmsghdr, cmsg_level); M(cmsghdr, cmsg_type); E();
  S(sockaddr_un); M(sockaddr_un, sun_family); M(sockaddr_un, sun_path); E();
  S(ptrace_peeksiginfo_args); M(ptrace_peeksiginfo_args, off); M(ptrace_peeksiginfo_args, flags);
  M(ptrace_peeksiginfo_args, nr); E();
  S(timeval); M(timeval, tv_sec); M(timeval, tv_usec); E();
  printf("}\n");
  return 0;
}
