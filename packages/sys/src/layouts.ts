// koffi declarations of the kernel structs this package encodes by hand. They are not used to
// marshal calls (the wrappers write bytes at fixed offsets); they exist so that tests can check
// the offsets the wrappers assume against koffi's C layout rules and the C compiler's.
import { layout, type LayoutType } from './ffi.js';
import { UserRegsStruct } from './regs.js';

export const STRUCTS: Record<string, LayoutType> = {
  user_regs_struct: UserRegsStruct,
  iovec: layout.struct('iovec', { iov_base: 'void *', iov_len: 'size_t' }),
  msghdr: layout.struct('msghdr', {
    msg_name: 'void *', msg_namelen: 'uint32_t', msg_iov: 'void *', msg_iovlen: 'size_t',
    msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int',
  }),
  cmsghdr: layout.struct('cmsghdr', { cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' }),
  sockaddr_un: layout.struct('sockaddr_un', { sun_family: 'uint16_t', sun_path: layout.array('char', 108) }),
  ptrace_peeksiginfo_args: layout.struct('ptrace_peeksiginfo_args', { off: 'uint64_t', flags: 'uint32_t', nr: 'int32_t' }),
  timeval: layout.struct('timeval', { tv_sec: 'long', tv_usec: 'long' }),
};
