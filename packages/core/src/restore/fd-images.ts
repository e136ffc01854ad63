// The fd table of a task (fdinfo-N.img) with the open files it points at (files.img and, for
// pipes and FIFOs, their buffered bytes from pipes-data.img / fifo-data.img; for unix sockets,
// their queued messages from sk-queues.img; for TCP connections, tcp-stream-<ino>.img), checked and turned
// into what restore needs to recreate each kind (see files.ts for how).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PagesReader, PE_PRESENT } from '@criu-ts/images';
import { readNetlinkSocket, type NetlinkSocketImage } from './netlink-sockets.js';
import { readPacketSocket, type PacketSocketImage } from './packet-sockets.js';
import { RestoreError } from './errors.js';
import { pathOfHandle } from '../proc/file-handles.js';
import { planUnixSockets, readSocketQueues, readUnixSocket, type UnixSocketImage } from './unix-sockets.js';
import { readDatagramQueues, readInetSocket, type InetRestoreOptions, type InetSocketImage } from './inet-sockets.js';
import { isPtyMasterRdev, readPtyInfo, type PtyFileImage } from './ptys.js';
import { readFanotify, type FanotifyImage } from './fanotify.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** fd_types from fdinfo.proto. */
export const FD_TYPE = {
  REG: 1, PIPE: 2, FIFO: 3, INETSK: 4, UNIXSK: 5, EVENTFD: 6, EVENTPOLL: 7, INOTIFY: 8, SIGNALFD: 9, PACKETSK: 10, TTY: 11, FANOTIFY: 12, NETLINKSK: 13, TIMERFD: 17, MEMFD: 18,
} as const;

/**
 * tty-info.img and tty-data.img (one per tree), and the pty indexes whose master files.img has:
 * a slave of such a pty is made again with it; any other terminal is the shell job's.
 */
interface TtyImages {
  readonly infos: Map<number, Msg>;
  readonly data: Map<number, Uint8Array>;
  readonly masterIndexes: Set<number>;
  /** Sessions whose controlling terminal is one of those ptys (their /dev/tty opens it again). */
  readonly ptySessions: Set<number>;
}

function ttyImagesOf(input: FdTableInput<unknown>): TtyImages {
  const infos = new Map<number, Msg>();
  const data = new Map<number, Uint8Array>();
  const masterIndexes = new Set<number>();
  const ptySessions = new Set<number>();
  if (existsSync(join(input.dir, 'tty-info.img'))) {
    for (const [i, { message: e }] of input.readEntries(input.dir, 'tty-info.img').entries()) {
      if (infos.has(Number(e.id))) invalid(`tty-info.img entry ${i}: id ${e.id} appears twice`, { id: e.id });
      infos.set(Number(e.id), e);
    }
  }
  if (existsSync(join(input.dir, 'tty-data.img'))) {
    for (const [i, { message: e }] of input.readEntries(input.dir, 'tty-data.img').entries()) {
      const id = Number(e.tty_id);
      if (!infos.has(id)) invalid(`tty-data.img entry ${i}: bytes for tty-info id ${id}, which tty-info.img does not have`, { id });
      if (data.has(id)) invalid(`tty-data.img entry ${i}: tty-info id ${id} has bytes twice`, { id });
      data.set(id, e.data as Uint8Array);
    }
  }
  for (const f of input.files.values()) {
    if (Number(f.type) !== FD_TYPE.TTY || !f.tty) continue;
    const info = infos.get(Number((f.tty as Msg).tty_info_id));
    if (info && Number(info.type) === 1 && info.pty && isPtyMasterRdev(Number(info.rdev))) {
      masterIndexes.add(Number((info.pty as Msg).index));
      if (Number(info.sid) !== 0) ptySessions.add(Number(info.sid));
    }
  }
  return { infos, data, masterIndexes, ptySessions };
}

/** Bit 0 of an eventfd's flags: EFD_SEMAPHORE (criu-ts records it there; see dump/files/anon-inodes.ts). */
export const EVENTFD_SEMAPHORE_FLAG = 1;

export interface PipeData {
  readonly bytes: Uint8Array;
  /** Capacity to restore (F_SETPIPE_SZ); absent in images that did not record it. */
  readonly size?: number;
}

/** A memfd inode (memfd.img) and where its contents are (pagemap-shmem-<shmid>.img + pages). */
export interface MemfdInode {
  readonly inodeId: number;
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly mode: number;
  readonly size: number;
  readonly seals: number;
  readonly pagesFile?: string;
  /** [offset in the memfd, offset in pagesFile, bytes]. */
  readonly runs: ReadonlyArray<readonly [number, number, number]>;
}

/** One inotify watch: the watch descriptor number to get back, its mask, the watched path. */
export interface InotifyWatch {
  readonly wd: number;
  readonly mask: number;
  readonly path: string;
}

export interface EpollTarget {
  readonly tfd: number;
  readonly events: number;
  readonly data: bigint;
}

/** What one files.img entry asks restore to create, by kind. */
export type OpenFileImage<Reg> =
  | { readonly kind: 'reg'; readonly id: number; readonly reg: Reg }
  | { readonly kind: 'tty'; readonly id: number; readonly flags: number }
  | { readonly kind: 'ctty'; readonly id: number; readonly flags: number }
  | PtyFileImage
  | FanotifyImage
  | { readonly kind: 'pipe'; readonly id: number; readonly pipeId: number; readonly flags: number; readonly data?: PipeData }
  | { readonly kind: 'fifo'; readonly id: number; readonly pipeId: number; readonly reg: Reg; readonly data?: PipeData }
  | { readonly kind: 'eventfd'; readonly id: number; readonly flags: number; readonly counter: bigint; readonly semaphore: boolean }
  | { readonly kind: 'eventpoll'; readonly id: number; readonly flags: number; readonly targets: readonly EpollTarget[] }
  | { readonly kind: 'signalfd'; readonly id: number; readonly flags: number; readonly mask: bigint }
  | { readonly kind: 'memfd'; readonly id: number; readonly flags: number; readonly pos: bigint; readonly inode: MemfdInode }
  | { readonly kind: 'inotify'; readonly id: number; readonly flags: number; readonly watches: readonly InotifyWatch[] }
  | { readonly kind: 'unixsk'; readonly id: number; readonly sk: UnixSocketImage }
  | { readonly kind: 'inetsk'; readonly id: number; readonly sk: InetSocketImage }
  | { readonly kind: 'netlinksk'; readonly id: number; readonly sk: NetlinkSocketImage }
  | { readonly kind: 'packetsk'; readonly id: number; readonly sk: PacketSocketImage }
  | {
      readonly kind: 'timerfd'; readonly id: number; readonly flags: number; readonly clockid: number; readonly ticks: bigint;
      readonly settimeFlags: number; readonly value: readonly [bigint, bigint]; readonly interval: readonly [bigint, bigint];
    };

/** fown_entry: who gets SIGIO/SIGURG from the file (F_SETOWN_EX) and with which signal (F_SETSIG). */
export interface FileOwner {
  /** F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2. */
  readonly type: number;
  readonly pid: number;
  readonly signum: number;
}

export interface FdSlot<Reg> {
  /** Set when the file had an owner or a signal (F_SETOWN/F_SETSIG). */
  readonly owner?: FileOwner;
  readonly fd: number;
  readonly cloexec: boolean;
  readonly type: number;
  readonly fileId: number;
  readonly file: OpenFileImage<Reg>;
}

export interface FdTableInput<Reg> {
  readonly dir: string;
  readonly pid: number;
  /** fdinfo-N.img's name. */
  readonly fdinfoName: string;
  readonly fdinfo: readonly Msg[];
  readonly files: ReadonlyMap<number, Msg>;
  /** Resolves a REG file id (with its ghost file, if any). */
  readonly reg: (id: number, what: string) => Reg;
  readonly readEntries: (dir: string, name: string) => Array<{ message: Msg; bytes?: Uint8Array }>;
  readonly shellJob: boolean;
  /** How established TCP connections come back (--tcp-established / --tcp-close). */
  readonly inet?: InetRestoreOptions;
  /** memfd.img, when the caller read it already (mappings of memfds): the same inode objects. */
  readonly memfds?: Map<number, MemfdInode>;
}

const CLOCKS = new Set([0 /* REALTIME */, 1 /* MONOTONIC */, 7 /* BOOTTIME */, 8 /* REALTIME_ALARM */, 9 /* BOOTTIME_ALARM */]);
/** The largest pipe the kernel lets root make is /proc/sys/fs/pipe-max-size (1 MiB by default); images over 64 MiB are refused as damaged. */
const PIPE_SIZE_LIMIT = 64 << 20;

function invalid(message: string, evidence: Record<string, unknown> = {}): never {
  throw new RestoreError('validate', message, evidence);
}

function pipeDataOf(input: FdTableInput<unknown>, name: string): Map<number, PipeData> {
  const data = new Map<number, PipeData>();
  if (!existsSync(join(input.dir, name))) return data;
  for (const [i, e] of input.readEntries(input.dir, name).entries()) {
    const pipeId = Number(e.message.pipe_id);
    const size = e.message.size === undefined ? undefined : Number(e.message.size);
    const bytes = e.bytes ?? new Uint8Array(0);
    if (data.has(pipeId)) invalid(`${name} entry ${i}: pipe ${pipeId} has data twice`, { file: join(input.dir, name), pipeId });
    if (size !== undefined && (size <= 0 || size > PIPE_SIZE_LIMIT || bytes.byteLength > size)) {
      invalid(`${name} entry ${i}: pipe ${pipeId} holds ${bytes.byteLength} bytes in a pipe of ${size}`, { file: join(input.dir, name), pipeId, size });
    }
    data.set(pipeId, { bytes, ...(size !== undefined ? { size } : {}) });
  }
  return data;
}

const MEMFD_SIZE_LIMIT = 2 ** 40;

/** memfd.img, checked, with where each inode's contents are; by inode id. */
export function memfdInodesOf(input: Pick<FdTableInput<unknown>, 'dir' | 'readEntries'>): Map<number, MemfdInode> {
  const inodes = new Map<number, MemfdInode>();
  if (!existsSync(join(input.dir, 'memfd.img'))) return inodes;
  for (const [i, { message: e }] of input.readEntries(input.dir, 'memfd.img').entries()) {
    const where = `memfd.img entry ${i}`;
    const inodeId = Number(e.inode_id);
    const size = Number(e.size);
    if (inodes.has(inodeId)) invalid(`${where}: inode id ${inodeId} appears twice`);
    if (!Number.isSafeInteger(size) || size < 0 || size > MEMFD_SIZE_LIMIT) invalid(`${where}: size ${e.size} is not plausible`);
    if (Buffer.byteLength(String(e.name)) > 249) invalid(`${where}: name is longer than memfd_create accepts (249 bytes)`);
    if (e.hugetlb_flag) invalid(`${where}: hugetlbfs memfds are not supported yet`);
    const runs: Array<readonly [number, number, number]> = [];
    let pagesFile: string | undefined;
    const pagemap = join(input.dir, `pagemap-shmem-${e.shmid}.img`);
    if (existsSync(pagemap)) {
      let pages: PagesReader | undefined;
      try {
        pages = PagesReader.open(pagemap);
        pagesFile = pages.pagesFile;
        for (const run of pages.runs()) {
          if (!(run.flags & PE_PRESENT) || !run.pages) continue;
          const offset = Number(run.vaddr);
          if (offset + run.pages.length > size + 4095) invalid(`${pagemap}: pages at ${offset} lie beyond the memfd's size ${size}`);
          runs.push([offset, run.pages.offset, run.pages.length]);
        }
      } catch (err) {
        if (err instanceof RestoreError) throw err;
        throw new RestoreError('read-images', `${pagemap} or its pages file cannot be read`, { file: pagemap }, err);
      } finally {
        pages?.close();
      }
    }
    inodes.set(inodeId, {
      inodeId, name: String(e.name), uid: Number(e.uid), gid: Number(e.gid), mode: Number(e.mode ?? 0o100600), size,
      seals: Number(e.seals), ...(pagesFile ? { pagesFile } : {}), runs,
    });
  }
  return inodes;
}

/** The owner recorded in a files.img entry (whatever its kind), when there is one. */
function ownerOf(entry: Msg | undefined, where: string): FileOwner | undefined {
  if (!entry) return undefined;
  const member = Object.values(entry).find((v): v is Msg => typeof v === 'object' && v !== null && 'fown' in (v as object));
  const fown = member?.fown as Msg | undefined;
  if (!fown) return undefined;
  const owner = { type: Number(fown.pid_type), pid: Number(fown.pid), signum: Number(fown.signum) };
  if (owner.pid === 0 && owner.signum === 0) return undefined;
  if (owner.type < 0 || owner.type > 2) invalid(`${where}: file owner type ${owner.type} is not a thread, process or group`);
  if (owner.signum < 0 || owner.signum > 64) invalid(`${where}: file signal ${owner.signum} is not a signal`);
  return owner;
}

/** Names of the unix sockets files.img records as outside the dump (uflags USK_EXTERN), by inode. */
function externalUnixNames(files: ReadonlyMap<number, Msg>): Map<number, Buffer> {
  const names = new Map<number, Buffer>();
  for (const f of files.values()) {
    const usk = f.usk as Msg | undefined;
    if (Number(f.type) === FD_TYPE.UNIXSK && usk && (Number(usk.uflags) & 1) !== 0) names.set(Number(usk.ino), Buffer.from(usk.name as Uint8Array));
  }
  return names;
}

/**
 * Reads and checks every fd slot of one task's table; `inFlight`: the files in flight in the
 * queues of its unix sockets (fd -1: no fd of the task is theirs).
 */
export function readFdTable<Reg>(input: FdTableInput<Reg>): FdSlot<Reg>[] & { readonly inFlight: readonly FdSlot<Reg>[] } {
  const { fdinfoName, files, pid } = input;
  const pipes = pipeDataOf(input, 'pipes-data.img');
  const fifos = pipeDataOf(input, 'fifo-data.img');
  let memfds: Map<number, MemfdInode> | undefined = input.memfds;
  let ttys: TtyImages | undefined;
  const queueEntries = existsSync(join(input.dir, 'sk-queues.img')) ? input.readEntries(input.dir, 'sk-queues.img') : [];
  // Unix sockets' messages have no source address; UDP datagrams carry theirs (inet-sockets.ts).
  const socketQueues = readSocketQueues(queueEntries.filter((e) => e.message.addr === undefined), invalid);
  const datagramQueues = readDatagramQueues(queueEntries, invalid);
  const slots: FdSlot<Reg>[] = [];
  const seen = new Set<number>();
  const byFile = new Map<number, OpenFileImage<Reg>>();

  const fileOf = (fileId: number, type: number, where: string): OpenFileImage<Reg> => {
    const known = byFile.get(fileId);
    if (known) return known;
    const f = files.get(fileId);
    if (!f) invalid(`${where}: file id ${fileId} is missing from files.img`, { fileId });
    if (Number(f.type) !== type) invalid(`${where}: fdinfo says type ${type}, files.img id ${fileId} is of type ${f.type}`, { fileId });
    const id = fileId;
    const member = (name: string): Msg => {
      if (!f[name]) invalid(`${where}: files.img id ${fileId} has no "${name}" member for its type ${type}`, { fileId });
      return f[name] as Msg;
    };
    let file: OpenFileImage<Reg>;
    switch (type) {
      case FD_TYPE.REG:
        file = { kind: 'reg', id, reg: input.reg(fileId, where) };
        break;
      case FD_TYPE.TTY: {
        const tfe = member('tty');
        ttys ??= ttyImagesOf(input);
        const tie = ttys.infos.get(Number(tfe.tty_info_id));
        if (!tie) invalid(`${where}: tty-info id ${tfe.tty_info_id} is missing from tty-info.img`, { ttyInfoId: tfe.tty_info_id });
        if (Number(tie.type) === 1 && tie.pty && ttys.masterIndexes.has(Number((tie.pty as Msg).index))) {
          // A pty of the tree: made again by criu-ts (ptys.ts).
          const info = readPtyInfo(tie, `${where} (tty-info.img)`, invalid);
          const queued = ttys.data.get(info.infoId);
          file = { kind: 'pty', id, flags: Number(tfe.flags), info, ...(queued && queued.byteLength > 0 ? { queued } : {}) };
          break;
        }
        if (Number(tie.type) === 4 /* CTTY */ && ttys.ptySessions.has(Number(tie.sid))) {
          // /dev/tty of a session whose controlling terminal is a pty of the tree: opened again once it is.
          file = { kind: 'ctty', id, flags: Number(tfe.flags) };
          break;
        }
        if (!input.shellJob) invalid(`${where} is a terminal from outside the dump; restore it with shellJob (--shell-job) to give it criu-ts's terminal`);
        file = { kind: 'tty', id, flags: Number(tfe.flags) };
        break;
      }
      case FD_TYPE.FANOTIFY:
        file = readFanotify(id, member('ffy'), where, invalid);
        break;
      case FD_TYPE.PIPE: {
        const p = member('pipe');
        const data = pipes.get(Number(p.pipe_id));
        file = { kind: 'pipe', id, pipeId: Number(p.pipe_id), flags: Number(p.flags), ...(data ? { data } : {}) };
        break;
      }
      case FD_TYPE.FIFO: {
        const p = member('fifo');
        const data = fifos.get(Number(p.pipe_id));
        file = { kind: 'fifo', id, pipeId: Number(p.pipe_id), reg: input.reg(Number(p.regf_id), `${where} (FIFO path)`), ...(data ? { data } : {}) };
        break;
      }
      case FD_TYPE.EVENTFD: {
        const e = member('efd');
        const counter = BigInt(e.counter);
        if (counter > 0xffff_ffff_ffff_fffen) invalid(`${where}: eventfd counter ${counter} is above the kernel's maximum`);
        const flags = Number(e.flags);
        file = { kind: 'eventfd', id, flags: flags & ~EVENTFD_SEMAPHORE_FLAG, counter, semaphore: (flags & EVENTFD_SEMAPHORE_FLAG) !== 0 };
        break;
      }
      case FD_TYPE.EVENTPOLL: {
        const e = member('epfd');
        const targets = ((e.tfd as Msg[] | undefined) ?? []).map((t) => ({ tfd: Number(t.tfd), events: Number(t.events) >>> 0, data: BigInt(t.data) }));
        file = { kind: 'eventpoll', id, flags: Number(e.flags), targets };
        break;
      }
      case FD_TYPE.UNIXSK:
      {
        const sk = readUnixSocket(id, member('usk'), socketQueues.get(id) ?? [], where, invalid);
        const externalPeer = sk.peer !== 0 ? externalUnixNames(files).get(sk.peer) : undefined;
        file = { kind: 'unixsk', id, sk: externalPeer ? { ...sk, externalPeer } : sk };
      }
        break;
      case FD_TYPE.MEMFD: {
        const e = member('memfd');
        memfds ??= memfdInodesOf(input);
        const inode = memfds.get(Number(e.inode_id));
        if (!inode) invalid(`${where}: memfd inode ${e.inode_id} is missing from memfd.img`, { inodeId: e.inode_id });
        file = { kind: 'memfd', id, flags: Number(e.flags), pos: BigInt(e.pos), inode };
        break;
      }
      case FD_TYPE.INOTIFY: {
        const e = member('ify');
        const watches = ((e.wd as Msg[] | undefined) ?? []).map((w) => {
          const wd = Number(w.wd);
          if (!Number.isInteger(wd) || wd <= 0 || wd > 1 << 20) invalid(`${where}: inotify watch descriptor ${w.wd} is out of range`);
          const fh = w.f_handle as Msg;
          let path = fh.path as string | undefined;
          if (path === undefined) {
            // CRIU keeps only the handle for most watches: find the inode's path the same way dump does.
            const words = (fh.handle as bigint[]).map((v) => BigInt(v));
            const bytes = Buffer.alloc(words.length * 8);
            words.forEach((v, i) => bytes.writeBigUInt64LE(BigInt.asUintN(64, v), i * 8));
            try {
              path = pathOfHandle(Number(w.s_dev), Number(fh.type), bytes.subarray(0, Number(fh.bytes)), `${where}: inotify watch ${wd}`);
            } catch (err) {
              // A failed syscall's message names the call only: say which image entry it was for.
              const message = (err as Error).message;
              invalid(message.startsWith(where) ? message : `${where}: inotify watch ${wd}: ${message}`, { wd });
            }
          }
          return { wd, mask: Number(w.mask) >>> 0, path: path! };
        });
        if (new Set(watches.map((w) => w.wd)).size !== watches.length) invalid(`${where}: an inotify watch descriptor appears twice`);
        file = { kind: 'inotify', id, flags: Number(e.flags), watches };
        break;
      }
      case FD_TYPE.INETSK:
        file = { kind: 'inetsk', id, sk: readInetSocket(id, member('isk'), input.dir, where, invalid, input.inet ?? {}, datagramQueues.get(id) ?? []) };
        break;
      case FD_TYPE.PACKETSK:
        file = { kind: 'packetsk', id, sk: readPacketSocket(id, member('psk'), where, invalid, input.dir) };
        break;
      case FD_TYPE.NETLINKSK:
        file = { kind: 'netlinksk', id, sk: readNetlinkSocket(id, member('nlsk'), where, invalid) };
        break;
      case FD_TYPE.SIGNALFD: {
        const e = member('sgfd');
        file = { kind: 'signalfd', id, flags: Number(e.flags), mask: BigInt(e.sigmask) };
        break;
      }
      case FD_TYPE.TIMERFD: {
        const e = member('tfd');
        const clockid = Number(e.clockid);
        if (!CLOCKS.has(clockid)) invalid(`${where}: timerfd clock ${clockid} is not one timerfd_create accepts`, { clockid });
        const ns = (v: unknown, name: string): bigint => {
          const n = BigInt(v as bigint);
          if (n >= 1_000_000_000n) invalid(`${where}: timerfd ${name} ${n} is not below one second`);
          return n;
        };
        file = {
          kind: 'timerfd', id, flags: Number(e.flags), clockid, ticks: BigInt(e.ticks), settimeFlags: Number(e.settime_flags),
          value: [BigInt(e.vsec), ns(e.vnsec, 'vnsec')], interval: [BigInt(e.isec), ns(e.insec, 'insec')],
        };
        break;
      }
      default:
        return invalid(`${where}: file type ${type} is not supported yet`, { type });
    }
    byFile.set(fileId, file);
    return file;
  };

  for (const e of input.fdinfo) {
    const fd = Number(e.fd);
    const type = Number(e.type);
    const fileId = Number(e.id);
    const where = `${fdinfoName} fd ${fd} of process ${pid}`;
    if (!Number.isInteger(fd) || fd < 0 || fd > 1 << 20) invalid(`${where}: not a valid fd number`, { fd });
    if (seen.has(fd)) invalid(`${fdinfoName}: fd ${fd} appears twice`, { fd });
    seen.add(fd);
    const owner = ownerOf(files.get(fileId), where);
    slots.push({ fd, cloexec: (Number(e.flags) & 1) !== 0, type, fileId, file: fileOf(fileId, type, where), ...(owner ? { owner } : {}) });
  }

  // Files in flight in the queues of the table's unix sockets (SCM_RIGHTS), and in the queues of
  // the unix sockets among them, in turn: files.img entries no fd points at, made at restore only
  // to be sent again. A file also open in the table is the same object (one open file description).
  const inFlight: FdSlot<Reg>[] = [];
  const pending = [...byFile.values()];
  for (let file = pending.shift(); file; file = pending.shift()) {
    if (file.kind !== 'unixsk') continue;
    for (const [i, message] of file.sk.queue.entries()) {
      for (const fileId of message.rights) {
        const where = `sk-queues.img: file id ${fileId} in flight in message ${i + 1} of unix socket id ${file.id}`;
        // Listed even when the table also has it open: the process that makes the tree's unix
        // sockets (and sends the files in flight) may be another one (see SharedFiles).
        if (inFlight.some((f) => f.fileId === fileId)) continue;
        const entry = files.get(fileId);
        if (!entry) invalid(`${where} is missing from files.img`, { fileId });
        const type = Number(entry.type);
        if (!IN_FLIGHT_TYPES.has(type)) invalid(`${where} is of type ${type}, which restore cannot send again (files, pipes, FIFOs, unix sockets, eventfds, signalfds and memfds only)`, { fileId, type });
        const known = byFile.has(fileId);
        const inflight = fileOf(fileId, type, where);
        const owner = ownerOf(entry, where);
        inFlight.push({ fd: -1, cloexec: false, type, fileId, file: inflight, ...(owner ? { owner } : {}) });
        if (!known) pending.push(inflight);
      }
    }
  }

  // Queued messages belong to a socket the table has.
  // (sk-queues.img serves the whole tree: a socket of another process is checked with that process.)
  for (const idFor of socketQueues.keys()) {
    if (Number(files.get(idFor)?.type) !== FD_TYPE.UNIXSK) invalid(`sk-queues.img: messages for file id ${idFor}, which is no unix socket in files.img`, { idFor });
  }
  for (const idFor of datagramQueues.keys()) {
    if (Number(files.get(idFor)?.type) !== FD_TYPE.INETSK) invalid(`sk-queues.img: datagrams for file id ${idFor}, which is no inet socket in files.img`, { idFor });
  }
  // Unix peers are checked for the whole tree (checkTreeUnixSockets): a peer may be in another process.

  // Every epoll target must be an fd of the restored table: that is what gets registered.
  for (const slot of slots) {
    if (slot.file.kind !== 'eventpoll') continue;
    for (const t of slot.file.targets) {
      if (!seen.has(t.tfd)) invalid(`${fdinfoName}: epoll fd ${slot.fd} watches fd ${t.tfd}, which the task does not have`, { epfd: slot.fd, tfd: t.tfd });
    }
  }
  return Object.assign(slots, { inFlight });
}

/** Kinds of files.img entries restore can send again in flight (SCM_RIGHTS). */
const IN_FLIGHT_TYPES = new Set<number>([FD_TYPE.REG, FD_TYPE.PIPE, FD_TYPE.FIFO, FD_TYPE.UNIXSK, FD_TYPE.EVENTFD, FD_TYPE.SIGNALFD, FD_TYPE.MEMFD]);

/**
 * Peers present and consistent across the whole tree (the two ends of a connection may be in two
 * processes); throws otherwise. Restore plans again from the same images.
 */
export function checkTreeUnixSockets(dir: string, tables: ReadonlyArray<readonly FdSlot<unknown>[]>): void {
  // (tables include the files in flight: a socket in flight is planned with its peer)
  planUnixSockets(unixSocketsOf(tables.flat()), (message, evidence = {}) => invalid(`files.img: ${message}`, { file: join(dir, 'files.img'), ...evidence }));
}

/** The unix sockets of a table (or of several), once each (fds sharing a socket share its file). */
export function unixSocketsOf<Reg>(slots: readonly FdSlot<Reg>[]): UnixSocketImage[] {
  const seen = new Map<number, UnixSocketImage>();
  for (const slot of slots) if (slot.file.kind === 'unixsk' && !seen.has(slot.fileId)) seen.set(slot.fileId, slot.file.sk);
  return [...seen.values()];
}

/** A file lock to take again (file-lock.img): on fd `fd` of the process that held it. */
export interface FileLockImage {
  /** CRIU's lock kinds (criu/include/file-lock.h): FL_POSIX 1, FL_FLOCK 2, FL_OFD 4, FL_LEASE 8. */
  readonly flag: number;
  /**
   * F_RDLCK 0, F_WRLCK 1 (for a lease, the lease type F_SETLEASE takes); for a lease being
   * broken, LEASE_BREAKING (4) | the type it goes down to (F_RDLCK 0 or F_UNLCK 2).
   */
  readonly type: number;
  readonly fd: number;
  readonly start: bigint;
  readonly len: bigint;
}

export const LOCK_KIND = { POSIX: 1, FLOCK: 2, OFD: 4, LEASE: 8 } as const;
const LOCK_FLAGS = new Set<number>(Object.values(LOCK_KIND));
/** CRIU's bit in a lease's type for a lease being broken (criu/include/file-lock.h). */
export const LEASE_BREAKING = 4;

/** The locks of process `pid` from filelocks.img (none when the image is absent), checked against its fd table. */
export function readFileLocks(
  dir: string, pid: number, slots: readonly FdSlot<unknown>[], readEntries: FdTableInput<unknown>['readEntries'],
): FileLockImage[] {
  if (!existsSync(join(dir, 'filelocks.img'))) return [];
  const fds = new Set(slots.map((s) => s.fd));
  const locks: FileLockImage[] = [];
  for (const [i, { message: e }] of readEntries(dir, 'filelocks.img').entries()) {
    if (Number(e.pid) !== pid) continue;
    const where = `filelocks.img entry ${i} (process ${pid})`;
    const lock = { flag: Number(e.flag), type: Number(e.type), fd: Number(e.fd), start: BigInt(e.start), len: BigInt(e.len) };
    if (!LOCK_FLAGS.has(lock.flag)) invalid(`${where}: lock kind ${lock.flag} is not POSIX (1), flock (2), OFD (4) or lease (8)`, { flag: lock.flag });
    if (lock.flag === LOCK_KIND.LEASE && (lock.type & LEASE_BREAKING)) {
      // Being broken: the type is where the lease goes, a read lease (0) or none (2).
      const target = lock.type & ~LEASE_BREAKING;
      if (target !== 0 && target !== 2) invalid(`${where}: the lease on fd ${lock.fd} is being broken to type ${target}, neither read (0) nor none (2)`, { type: lock.type });
    } else if (lock.type !== 0 && lock.type !== 1) {
      invalid(`${where}: lock type ${lock.type} is neither read (0) nor write (1)`, { type: lock.type });
    }
    if (!fds.has(lock.fd)) invalid(`${where}: fd ${lock.fd} is not in the process's fd table`, { fd: lock.fd });
    if (lock.flag === LOCK_KIND.LEASE && slots.find((s) => s.fd === lock.fd)?.file.kind !== 'reg') {
      invalid(`${where}: the lease on fd ${lock.fd} is on a ${slots.find((s) => s.fd === lock.fd)?.file.kind} file; leases are taken on regular files only`, { fd: lock.fd });
    }
    if (lock.start < 0n || lock.len < 0n) invalid(`${where}: range ${lock.start}+${lock.len} is negative`);
    locks.push(lock);
  }
  return locks;
}
