/* Prints the parasite ABI (native/parasite.h) as the C compiler lays it out, as JSON, so that
 * @criu-ts/compel's parasite-abi.ts is checked against the header the blob is built from. */
#include <stddef.h>
#include <stdio.h>
#include "../native/parasite.h"

#define F(m) printf("\"%s\":%zu,", #m, offsetof(struct parasite_ctl, m))

int main(void) {
  printf("{\"ctl\":{");
  F(magic); F(sock); F(blob_addr); F(blob_len); F(scratch_addr); F(scratch_len); F(chain_addr);
  F(chain_len); F(chain_off); F(gadget_syscall_ret); F(uc_stack_off); F(frame_in_blob); F(state);
  F(call_ret); F(call_done); F(call_byte); F(connect_len); F(connect_addr); F(task_at_start_off);
  printf("\"connect_addr_max\":%zu,", sizeof(((struct parasite_ctl *)0)->connect_addr));
  printf("\"size\":%zu},", sizeof(struct parasite_ctl));
  printf("\"req\":%zu,\"rep_hdr\":%zu,\"reply_max\":%d,\"sigaction\":%zu,\"posix_timer\":%zu,\"misc\":%zu,",
         sizeof(struct parasite_req), sizeof(struct parasite_rep_hdr), PARASITE_REPLY_MAX,
         sizeof(struct parasite_sigaction), sizeof(struct parasite_posix_timer), sizeof(struct parasite_misc));
  printf("\"cmd\":{\"FINI\":%d,\"PING\":%d,\"VMSPLICE\":%d,\"DUMP_SIGACTIONS\":%d,\"DUMP_ITIMERS\":%d,"
         "\"DUMP_POSIX_TIMERS\":%d,\"DUMP_MISC\":%d,\"RECV_FDS\":%d,\"SEND_FDS\":%d,\"SYSCALL\":%d,\"CALL\":%d,\"DUMP_PAGES\":%d,\"DUMP_TASK\":%d},",
         PARASITE_CMD_FINI, PARASITE_CMD_PING, PARASITE_CMD_VMSPLICE, PARASITE_CMD_DUMP_SIGACTIONS,
         PARASITE_CMD_DUMP_ITIMERS, PARASITE_CMD_DUMP_POSIX_TIMERS, PARASITE_CMD_DUMP_MISC, PARASITE_CMD_RECV_FDS,
         PARASITE_CMD_SEND_FDS, PARASITE_CMD_SYSCALL, PARASITE_CMD_CALL, PARASITE_CMD_DUMP_PAGES, PARASITE_CMD_DUMP_TASK);
  printf("\"magic\":\"%llx\"}\n", (unsigned long long)PARASITE_MAGIC);
  return 0;
}
