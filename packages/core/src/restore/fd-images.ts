// The fd table of a task (fdinfo-N.img) with the open files it points at (files.img and, for
// pipes and FIFOs, their buffered bytes from pipes-data.img / fifo-data.img; for unix sockets,
// their queued messages from sk-queues.img; for TCP connections, tcp-stream-<ino>.img), checked and turned
// into what restore needs to recreate each kind (see files.ts for how).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { RestoreError } from './errors.js';
import { planUnixSockets, readSocketQueues, readUnixSocket, type UnixSocketImage } from './unix-sockets.js';
import { readDatagramQueues, readInetSocket, type InetRestoreOptions, type InetSocketImage } from './inet-sockets.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** fd_types from fdinfo.proto. */
export const FD_TYPE = {
  REG: 1, PIPE: 2, FIFO: 3, INETSK: 4, UNIXSK: 5, EVENTFD: 6, EVENTPOLL: 7, SIGNALFD: 9, TTY: 11, TIMERFD: 17, MEMFD: 18,
} as const;

/** Bit 0 of an eventfd's flags: EFD_SEMAPHORE (criu-ts records it there; see dump/files/anon-inodes.ts). */
export const EVENTFD_SEMAPHORE_FLAG = 1;

export interface PipeData {
  readonly bytes: Uint8Array;
  /** Capacity to restore (F_SETPIPE_SZ); absent in images that did not record it. */
  readonly size?: number;
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
  | { readonly kind: 'pipe'; readonly id: number; readonly pipeId: number; readonly flags: number; readonly data?: PipeData }
  | { readonly kind: 'fifo'; readonly id: number; readonly pipeId: number; readonly reg: Reg; readonly data?: PipeData }
  | { readonly kind: 'eventfd'; readonly id: number; readonly flags: number; readonly counter: bigint; readonly semaphore: boolean }
  | { readonly kind: 'eventpoll'; readonly id: number; readonly flags: number; readonly targets: readonly EpollTarget[] }
  | { readonly kind: 'signalfd'; readonly id: number; readonly flags: number; readonly mask: bigint }
  | { readonly kind: 'unixsk'; readonly id: number; readonly sk: UnixSocketImage }
  | { readonly kind: 'inetsk'; readonly id: number; readonly sk: InetSocketImage }
  | {
      readonly kind: 'timerfd'; readonly id: number; readonly flags: number; readonly clockid: number; readonly ticks: bigint;
      readonly settimeFlags: number; readonly value: readonly [bigint, bigint]; readonly interval: readonly [bigint, bigint];
    };

export interface FdSlot<Reg> {
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

/** Reads and checks every fd slot of one task's table. */
export function readFdTable<Reg>(input: FdTableInput<Reg>): FdSlot<Reg>[] {
  const { fdinfoName, files, pid } = input;
  const pipes = pipeDataOf(input, 'pipes-data.img');
  const fifos = pipeDataOf(input, 'fifo-data.img');
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
      case FD_TYPE.TTY:
        if (!input.shellJob) invalid(`${where} is a terminal; restore it with shellJob (--shell-job) to give it criu-ts's terminal`);
        file = { kind: 'tty', id, flags: Number(member('tty').flags) };
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
        file = { kind: 'unixsk', id, sk: readUnixSocket(id, member('usk'), socketQueues.get(id) ?? [], where, invalid) };
        break;
      case FD_TYPE.INETSK:
        file = { kind: 'inetsk', id, sk: readInetSocket(id, member('isk'), input.dir, where, invalid, input.inet ?? {}, datagramQueues.get(id) ?? []) };
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
    slots.push({ fd, cloexec: (Number(e.flags) & 1) !== 0, type, fileId, file: fileOf(fileId, type, where) });
  }

  // Queued messages belong to a socket the table has.
  // (sk-queues.img serves the whole tree: a socket of another process is checked with that process.)
  for (const idFor of socketQueues.keys()) {
    if (Number(files.get(idFor)?.type) !== FD_TYPE.UNIXSK) invalid(`sk-queues.img: messages for file id ${idFor}, which is no unix socket in files.img`, { idFor });
  }
  for (const idFor of datagramQueues.keys()) {
    if (Number(files.get(idFor)?.type) !== FD_TYPE.INETSK) invalid(`sk-queues.img: datagrams for file id ${idFor}, which is no inet socket in files.img`, { idFor });
  }
  // Peers present and consistent (throws otherwise); restore plans again from the same images.
  planUnixSockets(unixSocketsOf(slots), invalid);

  // Every epoll target must be an fd of the restored table: that is what gets registered.
  for (const slot of slots) {
    if (slot.file.kind !== 'eventpoll') continue;
    for (const t of slot.file.targets) {
      if (!seen.has(t.tfd)) invalid(`${fdinfoName}: epoll fd ${slot.fd} watches fd ${t.tfd}, which the task does not have`, { epfd: slot.fd, tfd: t.tfd });
    }
  }
  return slots;
}

/** The unix sockets of a table, once each (fds sharing a socket share its file). */
export function unixSocketsOf<Reg>(slots: readonly FdSlot<Reg>[]): UnixSocketImage[] {
  const seen = new Map<number, UnixSocketImage>();
  for (const slot of slots) if (slot.file.kind === 'unixsk' && !seen.has(slot.fileId)) seen.set(slot.fileId, slot.file.sk);
  return [...seen.values()];
}
