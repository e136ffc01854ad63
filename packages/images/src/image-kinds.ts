// The catalogue of CRIU image kinds: file-name pattern, magic, message type(s), and what raw
// bytes follow an entry.
//
// File layout (CRIU images v1.1, little-endian):
//
//   +------------------+------------------+----------------------------------------+
//   | u32 IMG_COMMON   | u32 kind magic   | entries ...                            |
//   |  (IMG_SERVICE    |                  |   u32 length | protobuf message | raw  |
//   |   for stats-*,   |                  |              | (length bytes)   | pay- |
//   |   irmap-cache)   |                  |              |                  | load |
//   +------------------+------------------+----------------------------------------+
//
// inventory.img has only its own magic word. pages-N.img and the other RAW kinds have no magic
// at all: they hold bytes described by another image (pagemap-N.img for pages).
// PAGEMAP and SHMEM_PAGEMAP share a magic, as do SIGNAL and PSIGNAL: the file name tells them
// apart. Magic numbers and name patterns are CRIU 4.2's (criu/include/magic.h, image-desc.c).

export const IMG_COMMON_MAGIC = 0x54564319;
export const IMG_SERVICE_MAGIC = 0x55105940;

/** What follows an entry's protobuf message in the file. */
export type PayloadRule =
  | { readonly type: 'none' }
  /** `bytes` raw bytes, `bytes` read from a field of the entry (pipe/fifo data, socket queues). */
  | { readonly type: 'sized'; readonly sizeField: string }
  /** The receive queue then the send queue of a TCP connection (`inq_len`, `outq_len` bytes). */
  | { readonly type: 'tcp-queues' }
  /** A BPF map's keys then values (`keys_bytes` + `values_bytes`). */
  | { readonly type: 'bpf-map' }
  /** A SysV shared memory segment: `size` bytes, padded to 4. */
  | { readonly type: 'ipc-shm' }
  /** A SysV semaphore set: `nsems` u16 values, padded to 8. */
  | { readonly type: 'ipc-sem' }
  /** A SysV message queue: `qnum` (ipc_msg, text padded to 8) pairs. */
  | { readonly type: 'ipc-msg' };

/** How the entries of a file map to message types. */
export type EntryLayout =
  /** Every entry is the same message. */
  | { readonly type: 'uniform'; readonly message: string }
  /** A head message, then entries of another type (pagemap). */
  | { readonly type: 'head-then'; readonly head: string; readonly message: string }
  /** ghost-file: one ghost_file_entry, then either the raw file contents up to the end of the
   * file, or (when `chunks` is set) ghost_chunk_entry messages, each followed by `len` bytes. */
  | { readonly type: 'ghost-file' }
  /** No entries: raw bytes (pages-N.img, iptables dumps, tmpfs tarballs ...). */
  | { readonly type: 'raw' };

export interface ImageKind {
  /** crit's name for the kind (the "magic" key of the JSON form). */
  readonly name: string;
  /** Second magic word (first for inventory); 0 for raw images. */
  readonly magic: number;
  /** Leading magic word: IMG_COMMON, IMG_SERVICE, or none (inventory, raw). */
  readonly leadingMagic: number | undefined;
  /** File name pattern as in CRIU, `%d`-style placeholders shown as N. */
  readonly pattern: string;
  readonly fileName: RegExp;
  readonly entries: EntryLayout;
  readonly payload: PayloadRule;
}

const NONE: PayloadRule = { type: 'none' };
const uniform = (message: string): EntryLayout => ({ type: 'uniform', message });

interface KindSpec {
  name: string;
  magic: number;
  pattern: string;
  entries: EntryLayout;
  payload?: PayloadRule;
  service?: boolean;
  bare?: boolean;
}

// Patterns: N is a decimal id (pid, ns id), X a hex id, T any text; everything else literal.
const SPECS: readonly KindSpec[] = [
  { name: 'INVENTORY', magic: 0x58313116, pattern: 'inventory.img', entries: uniform('inventory_entry'), bare: true },
  { name: 'PSTREE', magic: 0x50273030, pattern: 'pstree.img', entries: uniform('pstree_entry') },
  { name: 'CORE', magic: 0x55053847, pattern: 'core-N.img', entries: uniform('core_entry') },
  { name: 'IDS', magic: 0x54432030, pattern: 'ids-N.img', entries: uniform('task_kobj_ids_entry') },
  { name: 'MM', magic: 0x57492820, pattern: 'mm-N.img', entries: uniform('mm_entry') },
  { name: 'VMAS', magic: 0x54123737, pattern: 'vmas-N.img', entries: uniform('vma_entry') },
  { name: 'PAGEMAP', magic: 0x56084025, pattern: 'pagemap-N.img', entries: { type: 'head-then', head: 'pagemap_head', message: 'pagemap_entry' } },
  { name: 'PAGEMAP', magic: 0x56084025, pattern: 'pagemap-shmem-N.img', entries: { type: 'head-then', head: 'pagemap_head', message: 'pagemap_entry' } },
  { name: 'FDINFO', magic: 0x56213732, pattern: 'fdinfo-N.img', entries: uniform('fdinfo_entry') },
  { name: 'FILES', magic: 0x56303138, pattern: 'files.img', entries: uniform('file_entry') },
  { name: 'FS', magic: 0x51403912, pattern: 'fs-N.img', entries: uniform('fs_entry') },
  { name: 'REG_FILES', magic: 0x50363636, pattern: 'reg-files.img', entries: uniform('reg_file_entry') },
  { name: 'EXT_FILES', magic: 0x59255641, pattern: 'ext-files.img', entries: uniform('ext_file_entry') },
  { name: 'NS_FILES', magic: 0x61394011, pattern: 'ns-files.img', entries: uniform('ns_file_entry') },
  { name: 'REMAP_FPATH', magic: 0x59133954, pattern: 'remap-fpath.img', entries: uniform('remap_file_path_entry') },
  { name: 'GHOST_FILE', magic: 0x52583605, pattern: 'ghost-file-X.img', entries: { type: 'ghost-file' } },
  { name: 'PIPES', magic: 0x56513555, pattern: 'pipes.img', entries: uniform('pipe_entry') },
  { name: 'PIPES_DATA', magic: 0x56453709, pattern: 'pipes-data.img', entries: uniform('pipe_data_entry'), payload: { type: 'sized', sizeField: 'bytes' } },
  { name: 'FIFO', magic: 0x58364939, pattern: 'fifo.img', entries: uniform('fifo_entry') },
  { name: 'FIFO_DATA', magic: 0x59333054, pattern: 'fifo-data.img', entries: uniform('pipe_data_entry'), payload: { type: 'sized', sizeField: 'bytes' } },
  { name: 'SIGACT', magic: 0x55344201, pattern: 'sigacts-N.img', entries: uniform('sa_entry') },
  { name: 'UNIXSK', magic: 0x54373943, pattern: 'unixsk.img', entries: uniform('unix_sk_entry') },
  { name: 'INETSK', magic: 0x56443851, pattern: 'inetsk.img', entries: uniform('inet_sk_entry') },
  { name: 'PACKETSK', magic: 0x60454618, pattern: 'packetsk.img', entries: uniform('packet_sock_entry') },
  { name: 'NETLINK_SK', magic: 0x58005614, pattern: 'netlinksk.img', entries: uniform('netlink_sk_entry') },
  { name: 'SK_QUEUES', magic: 0x56264026, pattern: 'sk-queues.img', entries: uniform('sk_packet_entry'), payload: { type: 'sized', sizeField: 'length' } },
  { name: 'TCP_STREAM', magic: 0x51465506, pattern: 'tcp-stream-X.img', entries: uniform('tcp_stream_entry'), payload: { type: 'tcp-queues' } },
  { name: 'ITIMERS', magic: 0x57464056, pattern: 'itimers-N.img', entries: uniform('itimer_entry') },
  { name: 'POSIX_TIMERS', magic: 0x52603957, pattern: 'posix-timers-N.img', entries: uniform('posix_timer_entry') },
  { name: 'CREDS', magic: 0x54023547, pattern: 'creds-N.img', entries: uniform('creds_entry') },
  { name: 'UTSNS', magic: 0x54473203, pattern: 'utsns-N.img', entries: uniform('utsns_entry') },
  { name: 'IPC_VAR', magic: 0x53115007, pattern: 'ipcns-var-N.img', entries: uniform('ipc_var_entry') },
  { name: 'IPCNS_SHM', magic: 0x46283044, pattern: 'ipcns-shm-N.img', entries: uniform('ipc_shm_entry'), payload: { type: 'ipc-shm' } },
  { name: 'IPCNS_MSG', magic: 0x55453737, pattern: 'ipcns-msg-N.img', entries: uniform('ipc_msg_entry'), payload: { type: 'ipc-msg' } },
  { name: 'IPCNS_SEM', magic: 0x59573019, pattern: 'ipcns-sem-N.img', entries: uniform('ipc_sem_entry'), payload: { type: 'ipc-sem' } },
  { name: 'EVENTFD_FILE', magic: 0x44523722, pattern: 'eventfd.img', entries: uniform('eventfd_file_entry') },
  { name: 'EVENTPOLL_FILE', magic: 0x45023858, pattern: 'eventpoll.img', entries: uniform('eventpoll_file_entry') },
  { name: 'EVENTPOLL_TFD', magic: 0x44433746, pattern: 'eventpoll-tfd.img', entries: uniform('eventpoll_tfd_entry') },
  { name: 'SIGNALFD', magic: 0x57323820, pattern: 'signalfd.img', entries: uniform('signalfd_entry') },
  { name: 'INOTIFY_FILE', magic: 0x48424431, pattern: 'inotify.img', entries: uniform('inotify_file_entry') },
  { name: 'INOTIFY_WD', magic: 0x54562009, pattern: 'inotify-wd.img', entries: uniform('inotify_wd_entry') },
  { name: 'FANOTIFY_FILE', magic: 0x55096122, pattern: 'fanotify.img', entries: uniform('fanotify_file_entry') },
  { name: 'FANOTIFY_MARK', magic: 0x56506035, pattern: 'fanotify-mark.img', entries: uniform('fanotify_mark_entry') },
  { name: 'MNTS', magic: 0x55563928, pattern: 'mountpoints-N.img', entries: uniform('mnt_entry') },
  { name: 'NETDEV', magic: 0x57373951, pattern: 'netdev-N.img', entries: uniform('net_device_entry') },
  { name: 'NETNS', magic: 0x55933752, pattern: 'netns-N.img', entries: uniform('netns_entry') },
  { name: 'TTY_FILES', magic: 0x59433025, pattern: 'tty.img', entries: uniform('tty_file_entry') },
  { name: 'TTY_INFO', magic: 0x59453036, pattern: 'tty-info.img', entries: uniform('tty_info_entry') },
  { name: 'TTY_DATA', magic: 0x59413026, pattern: 'tty-data.img', entries: uniform('tty_data_entry') },
  { name: 'FILE_LOCKS', magic: 0x54323616, pattern: 'filelocks.img', entries: uniform('file_lock_entry') },
  { name: 'RLIMIT', magic: 0x57113925, pattern: 'rlimit-N.img', entries: uniform('rlimit_entry') },
  { name: 'SIGNAL', magic: 0x59255647, pattern: 'signal-s-N.img', entries: uniform('siginfo_entry') },
  { name: 'PSIGNAL', magic: 0x59255647, pattern: 'signal-p-N.img', entries: uniform('siginfo_entry') },
  { name: 'TUNFILE', magic: 0x57143751, pattern: 'tunfile.img', entries: uniform('tunfile_entry') },
  { name: 'CGROUP', magic: 0x59383330, pattern: 'cgroup.img', entries: uniform('cgroup_entry') },
  { name: 'TIMERFD', magic: 0x50493712, pattern: 'timerfd.img', entries: uniform('timerfd_entry') },
  { name: 'CPUINFO', magic: 0x61404013, pattern: 'cpuinfo.img', entries: uniform('cpuinfo_entry') },
  { name: 'USERNS', magic: 0x55474906, pattern: 'userns-N.img', entries: uniform('userns_entry') },
  { name: 'SECCOMP', magic: 0x64413049, pattern: 'seccomp.img', entries: uniform('seccomp_entry') },
  { name: 'BINFMT_MISC', magic: 0x67343323, pattern: 'binfmt-misc.img', entries: uniform('binfmt_misc_entry') },
  { name: 'BINFMT_MISC', magic: 0x67343323, pattern: 'binfmt-misc-N.img', entries: uniform('binfmt_misc_entry') },
  { name: 'PIDFD', magic: 0x54435556, pattern: 'pidfd.img', entries: uniform('pidfd_entry') },
  { name: 'AUTOFS', magic: 0x49353943, pattern: 'autofs-N.img', entries: uniform('autofs_entry') },
  { name: 'MEMFD_INODE', magic: 0x48453499, pattern: 'memfd.img', entries: uniform('memfd_inode_entry') },
  { name: 'TIMENS', magic: 0x43114433, pattern: 'timens-N.img', entries: uniform('timens_entry') },
  { name: 'PIDNS', magic: 0x61157326, pattern: 'pidns-N.img', entries: uniform('pidns_entry') },
  { name: 'BPFMAP_FILE', magic: 0x57506142, pattern: 'bpfmap-file.img', entries: uniform('bpfmap_file_entry') },
  { name: 'BPFMAP_DATA', magic: 0x64324033, pattern: 'bpfmap-data.img', entries: uniform('bpfmap_data_entry'), payload: { type: 'bpf-map' } },
  { name: 'APPARMOR', magic: 0x59423047, pattern: 'apparmor.img', entries: uniform('apparmor_entry') },
  { name: 'STATS', magic: 0x57093306, pattern: 'stats-T', entries: uniform('stats_entry'), service: true },
  { name: 'IRMAP_CACHE', magic: 0x57004059, pattern: 'irmap-cache.img', entries: uniform('irmap_cache_entry'), service: true },
  // Raw images: no magic, no entries.
  { name: 'PAGES', magic: 0, pattern: 'pages-N.img', entries: { type: 'raw' } },
  { name: 'IFADDR', magic: 0, pattern: 'ifaddr-N.img', entries: { type: 'raw' } },
  { name: 'ROUTE', magic: 0, pattern: 'route-N.img', entries: { type: 'raw' } },
  { name: 'ROUTE6', magic: 0, pattern: 'route6-N.img', entries: { type: 'raw' } },
  { name: 'RULE', magic: 0, pattern: 'rule-N.img', entries: { type: 'raw' } },
  { name: 'IPTABLES', magic: 0, pattern: 'iptables-N.img', entries: { type: 'raw' } },
  { name: 'IP6TABLES', magic: 0, pattern: 'ip6tables-N.img', entries: { type: 'raw' } },
  { name: 'NFTABLES', magic: 0, pattern: 'nftables-N.img', entries: { type: 'raw' } },
  { name: 'NETNF_CT', magic: 0, pattern: 'netns-ct-N.img', entries: { type: 'raw' } },
  { name: 'NETNF_EXP', magic: 0, pattern: 'netns-exp-N.img', entries: { type: 'raw' } },
  { name: 'TMPFS_IMG', magic: 0, pattern: 'tmpfs-N.tar.gz.img', entries: { type: 'raw' } },
  { name: 'TMPFS_DEV', magic: 0, pattern: 'tmpfs-dev-N.tar.gz.img', entries: { type: 'raw' } },
  // criu-ts's own: a packet socket's rings as its program left them (packet_sock_entry
  // rx_ring_head/tx_ring_head say where the kernel was); N is the socket's file id.
  { name: 'PACKET_RING', magic: 0, pattern: 'packet-ring-N.img', entries: { type: 'raw' } },
];

function patternToRegExp(pattern: string): RegExp {
  const body = pattern
    .split(/(N|X|T)/)
    .map((part) => (part === 'N' ? '\\d+' : part === 'X' ? '[0-9a-f]+' : part === 'T' ? '.+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${body}$`);
}

export const IMAGE_KINDS: readonly ImageKind[] = SPECS.map((spec) => ({
  name: spec.name,
  magic: spec.magic,
  leadingMagic: spec.entries.type === 'raw' || spec.bare ? undefined : spec.service ? IMG_SERVICE_MAGIC : IMG_COMMON_MAGIC,
  pattern: spec.pattern,
  fileName: patternToRegExp(spec.pattern),
  entries: spec.entries,
  payload: spec.payload ?? NONE,
}));

/** The kind a file name says, if any (the base name is what counts). */
export function kindForFileName(path: string): ImageKind | undefined {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return IMAGE_KINDS.find((k) => k.fileName.test(base));
}

/** Kinds with a given magic word (more than one for the shared magics). */
export function kindsForMagic(magic: number): ImageKind[] {
  return IMAGE_KINDS.filter((k) => k.magic === magic && k.entries.type !== 'raw');
}

/** The kind crit's JSON names (`"magic": "CORE"`); for a shared name, the first in the table. */
export function kindForName(name: string): ImageKind | undefined {
  return IMAGE_KINDS.find((k) => k.name === name && k.entries.type !== 'raw');
}

/** The message type of entry `index` in a file of this kind. */
export function entryMessageName(kind: ImageKind, index: number, headHasChunks = false): string {
  switch (kind.entries.type) {
    case 'uniform':
      return kind.entries.message;
    case 'head-then':
      return index === 0 ? kind.entries.head : kind.entries.message;
    case 'ghost-file':
      return index === 0 || !headHasChunks ? 'ghost_file_entry' : 'ghost_chunk_entry';
    case 'raw':
      throw new Error(`${kind.name} images hold raw bytes, not entries`);
  }
}
