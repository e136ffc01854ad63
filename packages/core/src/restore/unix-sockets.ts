// AF_UNIX sockets on restore: files.img UNIXSK entries (unix_sk_entry) and their queued
// messages (sk-queues.img), checked, then recreated in the task.
//
// Every socket is created by the task itself (remote socket/socketpair/bind/listen/connect/
// accept4), so it belongs to the task's network namespace and credentials; everything that does
// not need to run in the task is done by criu-ts on a duplicate of the task's fd (pidfd_getfd:
// the same socket): options (setsockopt), queued messages and shutdown.
//
// How each shape comes back:
//   connected pair, not accepted      socketpair(); a named end is bound afterwards (bind works on
//                                     an unbound connected socket)
//   accepted connection               its listener is made first; the other end connects to the
//                                     listener's name and the listener accepts: the accepted end
//                                     gets the listener's name, as it had (no socketpair can)
//   listener                          socket + bind + listen(backlog)
//   connection not accepted yet       socket (+ bind) + connect to its listener's name
//   connection whose peer was closed  socketpair(); the other end sends what was queued, then is
//                                     closed (the kernel then marks the socket shut down both
//                                     ways, as it was)
//   other (bound or not)              socket (+ bind); a dgram socket connected to a named socket
//                                     connects to that name once every socket is bound
// A path that exists where a socket is to be bound is removed first if it is a socket (the
// stale file of the dumped socket, as CRIU does); anything else there, or anything at the path
// of a socket whose file was already deleted at dump time, is refused. A socket whose
// file was deleted at dump time is bound and its file removed again.
//
// Then, in this order: options (buffer sizes before data: the sender's SO_SNDBUF bounds what
// can be queued), queued messages (sent, in order, from the socket's peer, or to its name from
// the peer or from a socket of criu-ts when it has no peer; one send per message, so datagram
// and record boundaries come back; the files a message carried go with it, SCM_RIGHTS, from
// criu-ts's duplicates of the task's fds of them: made in the task like any file, then closed
// there), shutdown (last: a shut-down end could not be written to).
import { lstatSync, unlinkSync, chmodSync, chownSync } from 'node:fs';
import { asPid, attachSocketFilter, close, getsockopt, MSG, pidfdGetfd, pidfdOpen, SO, SOL_SOCKET, setsockopt, sendmsg, shutdown, socket, AF_UNIX, SOCK, type Fd } from '@criu-ts/sys';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_SEQPACKET = 5;
const TCP_ESTABLISHED = 1;
const TCP_CLOSE = 7;
const TCP_LISTEN = 10;

export interface UnixSocketImage {
  readonly id: number;
  readonly ino: number;
  readonly type: number;
  readonly state: number;
  readonly flags: number;
  readonly backlog: number;
  readonly peer: number;
  /** sun_path bytes as the kernel reported them ('' when unbound, leading NUL when abstract). */
  readonly name: Buffer;
  /** sk_shutdown bits: 1 receive, 2 send. */
  readonly shutdown: number;
  readonly opts: Msg;
  readonly deleted: boolean;
  readonly filePerms?: { readonly mode: number; readonly uid: number; readonly gid: number };
  /** Messages waiting in the socket's receive queue, oldest first. */
  readonly queue: readonly QueuedMessage[];
  /** The name of its peer outside the dump (criu's --ext-unix-sk): connected to again by name. */
  readonly externalPeer?: Buffer;
}

/** One message of a receive queue: its bytes and the files it carries (SCM_RIGHTS), by files.img id. */
export interface QueuedMessage {
  readonly bytes: Uint8Array;
  readonly rights: readonly number[];
}

type Invalid = (message: string, evidence?: Record<string, unknown>) => never;

/** scm_entry.type: the cmsg type (socket(7)). */
const SCM_RIGHTS = 1;
/** SCM_MAX_FD: the most descriptors one message can carry (include/net/scm.h). */
const SCM_MAX_FD = 253;

/** sk-queues.img: the queued messages, by the file id of the receiving socket. */
export function readSocketQueues(entries: ReadonlyArray<{ message: Msg; bytes?: Uint8Array }>, invalid: Invalid): Map<number, QueuedMessage[]> {
  const queues = new Map<number, QueuedMessage[]>();
  for (const [i, e] of entries.entries()) {
    const idFor = Number(e.message.id_for);
    const bytes = e.bytes ?? new Uint8Array(0);
    const rights: number[] = [];
    for (const scm of (e.message.scm as Msg[] | undefined) ?? []) {
      if (Number(scm.type) !== SCM_RIGHTS) {
        invalid(`sk-queues.img entry ${i}: a message for socket id ${idFor} carries ancillary data of type ${scm.type} (only SCM_RIGHTS, type 1, is restored)`, { idFor, type: scm.type });
      }
      rights.push(...((scm.rights as number[] | undefined) ?? []).map(Number));
    }
    if (rights.length > SCM_MAX_FD) invalid(`sk-queues.img entry ${i}: a message for socket id ${idFor} carries ${rights.length} files, more than one message can (${SCM_MAX_FD})`, { idFor });
    if (bytes.byteLength !== Number(e.message.length)) invalid(`sk-queues.img entry ${i}: length ${e.message.length} but ${bytes.byteLength} bytes follow`, { idFor });
    // A stream drops a message of no bytes; the kernel would not take its files alone.
    if (rights.length > 0 && bytes.byteLength === 0) invalid(`sk-queues.img entry ${i}: a message for socket id ${idFor} carries files but no bytes`, { idFor });
    let queue = queues.get(idFor);
    if (!queue) queues.set(idFor, (queue = []));
    queue.push({ bytes, rights });
  }
  return queues;
}

/** One UNIXSK files.img entry, checked on its own (`where` names it in errors). */
export function readUnixSocket(id: number, usk: Msg, queue: readonly QueuedMessage[], where: string, invalid: Invalid): UnixSocketImage {
  const type = Number(usk.type);
  const state = Number(usk.state);
  if (type !== SOCK_STREAM && type !== SOCK_DGRAM && type !== SOCK_SEQPACKET) invalid(`${where}: unix socket type ${type} is not stream, dgram or seqpacket`, { type });
  if (state !== TCP_ESTABLISHED && state !== TCP_CLOSE && state !== TCP_LISTEN) invalid(`${where}: unix socket state ${state} is not one a unix socket has`, { state });
  if (state === TCP_LISTEN && type === SOCK_DGRAM) invalid(`${where}: a dgram socket cannot listen`, { state, type });
  if (Number(usk.uflags ?? 0) !== 0) invalid(`${where}: unix socket flags ${usk.uflags} (external or inherited socket) are not supported yet`, { uflags: usk.uflags });
  if (usk.name_dir) invalid(`${where}: unix socket bound relative to directory ${usk.name_dir} is not supported yet`);
  const name = Buffer.from((usk.name as Uint8Array | undefined) ?? new Uint8Array(0));
  if (name.length > 108) invalid(`${where}: unix socket name of ${name.length} bytes (sun_path holds 108)`);
  if (name.length > 0 && name[0] !== 0 && name[0] !== 0x2f /* '/' */) invalid(`${where}: unix socket bound to a relative path is not supported yet`, { name: name.toString() });
  if (state === TCP_LISTEN && queue.length > 0) invalid(`${where}: a listening socket has queued messages`);
  const perms = usk.file_perms as Msg | undefined;
  return {
    id, ino: Number(usk.ino), type, state, flags: Number(usk.flags), backlog: Number(usk.backlog), peer: Number(usk.peer ?? 0), name,
    shutdown: Number(usk.shutdown ?? 0) & 3, opts: (usk.opts as Msg | undefined) ?? {}, deleted: usk.deleted === true,
    ...(perms ? { filePerms: { mode: Number(perms.mode), uid: Number(perms.uid), gid: Number(perms.gid) } } : {}),
    queue,
  };
}

const named = (s: UnixSocketImage): boolean => s.name.length > 0;
const pathOf = (s: UnixSocketImage): string | undefined => (named(s) && s.name[0] !== 0 ? s.name.toString('utf8').replace(/\0+$/, '') : undefined);
const describe = (s: UnixSocketImage): string => `unix socket id ${s.id} (socket:[${s.ino}]${named(s) ? ` "${s.name.toString('utf8').replace(/\0/g, '@')}"` : ''})`;

/** How each socket of the table is made (see the module doc). */
type Plan =
  | { readonly how: 'pair'; readonly other: UnixSocketImage }
  | { readonly how: 'accepted'; readonly listener: UnixSocketImage; readonly client: UnixSocketImage }
  | { readonly how: 'client'; readonly listener: UnixSocketImage; readonly accepted: UnixSocketImage }
  | { readonly how: 'waiting'; readonly listener: UnixSocketImage }
  | { readonly how: 'peer-closed' }
  | { readonly how: 'alone' };

/** Checks that the sockets of one table fit together (peers present and consistent) and plans their creation. */
export function planUnixSockets(sockets: readonly UnixSocketImage[], invalid: Invalid): Map<number, Plan> {
  const byIno = new Map<number, UnixSocketImage>();
  for (const s of sockets) {
    if (byIno.has(s.ino)) invalid(`files.img: two unix sockets with inode ${s.ino}`, { ino: s.ino });
    byIno.set(s.ino, s);
  }
  const listeners = sockets.filter((s) => s.state === TCP_LISTEN && named(s));
  const plans = new Map<number, Plan>();
  for (const s of sockets) {
    if (plans.has(s.id)) continue;
    if (s.peer === 0) {
      // A connected stream socket with no peer: its peer was closed.
      plans.set(s.id, s.state === TCP_ESTABLISHED && s.type !== SOCK_DGRAM ? { how: 'peer-closed' } : { how: 'alone' });
      continue;
    }
    if (!byIno.has(s.peer) && s.externalPeer) {
      // Connected to a named socket outside the dump (--ext-unix-sk): connected by name again.
      if (s.type !== SOCK_DGRAM) invalid(`${describe(s)}: a ${s.type} socket connected outside the dump cannot be connected again`);
      plans.set(s.id, { how: 'alone' });
      continue;
    }
    const peer = byIno.get(s.peer) ?? invalid(`${describe(s)}: its peer socket:[${s.peer}] is not in the image (nor recorded as an external socket)`, { peer: s.peer });
    if (peer.type !== s.type) invalid(`${describe(s)}: its peer ${describe(peer)} is of another type`);
    const mutual = peer.peer === s.ino;
    if (!mutual && s.type !== SOCK_DGRAM && peer.state === TCP_LISTEN && s.state === TCP_ESTABLISHED) {
      // A connection the listener had not accepted yet (CRIU records the listener as its peer).
      if (!named(peer)) invalid(`${describe(s)}: waits to be accepted by the unnamed listening ${describe(peer)}: nothing to connect to again`);
      plans.set(s.id, { how: 'waiting', listener: peer });
      continue;
    }
    if (!mutual) {
      if (s.type !== SOCK_DGRAM) invalid(`${describe(s)}: connected to ${describe(peer)}, which is connected elsewhere`);
      if (!named(peer)) invalid(`${describe(s)}: connected to the unnamed ${describe(peer)}, which is not connected back: nothing to connect to again`);
      plans.set(s.id, { how: 'alone' });
      continue;
    }
    if (s.type === SOCK_DGRAM) {
      plans.set(s.id, { how: 'pair', other: peer });
      plans.set(peer.id, { how: 'pair', other: s });
      continue;
    }
    // A stream or seqpacket connection: accepted from a listener of the image when one end
    // carries a listener's name (an accepted socket shares its listener's address).
    const listenerOf = (end: UnixSocketImage) => (named(end) ? listeners.find((l) => l.type === end.type && l.name.equals(end.name)) : undefined);
    const sListener = listenerOf(s);
    const peerListener = listenerOf(peer);
    if (sListener || peerListener) {
      const [accepted, client, listener] = sListener ? [s, peer, sListener] : [peer, s, peerListener!];
      plans.set(accepted.id, { how: 'accepted', listener, client });
      plans.set(client.id, { how: 'client', listener, accepted });
      continue;
    }
    for (const end of [s, peer]) {
      if (named(end)) {
        invalid(`${describe(end)}: a connected socket with a name but no listening socket of that name in the image (accepted from a listener that is gone, or bound before connecting): not supported yet`);
      }
    }
    plans.set(s.id, { how: 'pair', other: peer });
    plans.set(peer.id, { how: 'pair', other: s });
  }
  return plans;
}

/** What the restorer needs from FileCreator: remote calls in the task and fd parking. */
export interface TaskFiles {
  readonly pid: number;
  call(what: string, name: 'socket' | 'socketpair' | 'bind' | 'listen' | 'connect' | 'accept4' | 'close', ...args: Array<number | bigint>): number;
  /** Copies bytes into the task's scratch space and returns their remote addresses. */
  put(...parts: Uint8Array[]): bigint[];
  /** Reads bytes back from the task. */
  read(addr: bigint, length: number): Buffer;
  /** Moves a fresh fd above every dumped fd; returns its new number. */
  park(fd: number): number;
  /** The task's fd of a file in flight (SCM_RIGHTS) that is not a unix socket, made on first use. */
  inFlight(fileId: number): number;
}

function sockaddr(name: Buffer): Buffer {
  const addr = Buffer.alloc(2 + name.length);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  return addr;
}

/** Creates every unix socket of a table in the task; returns the parked fd of each, by file id. */
export function createUnixSockets(task: TaskFiles, sockets: readonly UnixSocketImage[], plans: ReadonlyMap<number, Plan>): Map<number, number> {
  const fds = new Map<number, number>();
  /** The stand-in peers of sockets whose peer was closed, by the socket's file id (closed once the queue is in). */
  const closedPeers = new Map<number, number>();
  const byIno = new Map(sockets.map((s) => [s.ino, s]));

  const bind = (s: UnixSocketImage, fd: number): void => {
    const path = pathOf(s);
    if (path !== undefined) removeStaleSocketFile(path, describe(s), s.deleted);
    const [addr] = task.put(sockaddr(s.name));
    task.call(`bind of ${describe(s)}`, 'bind', fd, addr!, 2 + s.name.length);
    if (path !== undefined && s.filePerms && !s.deleted) {
      chmodSync(path, s.filePerms.mode & 0o7777);
      chownSync(path, s.filePerms.uid, s.filePerms.gid);
    }
  };
  const single = (s: UnixSocketImage): number => {
    const fd = task.park(task.call(`socket for ${describe(s)}`, 'socket', AF_UNIX, s.type, 0));
    if (named(s)) bind(s, fd);
    if (s.state === TCP_LISTEN) task.call(`listen of ${describe(s)}`, 'listen', fd, s.backlog);
    return fd;
  };

  // Listeners and lone sockets first: accepted connections and connected dgram sockets need them.
  for (const s of sockets) if (plans.get(s.id)!.how === 'alone') fds.set(s.id, single(s));
  for (const s of sockets) {
    const plan = plans.get(s.id)!;
    if (fds.has(s.id)) continue;
    if (plan.how === 'peer-closed') {
      const [sv] = task.put(Buffer.alloc(8));
      task.call(`socketpair for ${describe(s)}`, 'socketpair', AF_UNIX, s.type, 0, sv!);
      const got = task.read(sv!, 8);
      fds.set(s.id, task.park(got.readInt32LE(0)));
      closedPeers.set(s.id, task.park(got.readInt32LE(4)));
      if (named(s)) bind(s, fds.get(s.id)!);
    } else if (plan.how === 'pair') {
      const [sv] = task.put(Buffer.alloc(8));
      task.call(`socketpair for ${describe(s)} and ${describe(plan.other)}`, 'socketpair', AF_UNIX, s.type, 0, sv!);
      const got = task.read(sv!, 8);
      fds.set(s.id, task.park(got.readInt32LE(0)));
      fds.set(plan.other.id, task.park(got.readInt32LE(4)));
      if (named(s)) bind(s, fds.get(s.id)!);
      if (named(plan.other)) bind(plan.other, fds.get(plan.other.id)!);
    } else if (plan.how === 'accepted' || plan.how === 'client') {
      const [accepted, client, listener] = plan.how === 'accepted' ? [s, plan.client, plan.listener] : [plan.accepted, s, plan.listener];
      const clientFd = task.park(task.call(`socket for ${describe(client)}`, 'socket', AF_UNIX, client.type, 0));
      if (named(client)) bind(client, clientFd);
      const [addr] = task.put(sockaddr(listener.name));
      task.call(`connect of ${describe(client)} to its listener`, 'connect', clientFd, addr!, 2 + listener.name.length);
      const acceptedFd = task.park(task.call(`accept4 of ${describe(accepted)}`, 'accept4', fds.get(listener.id)!, 0, 0, 0));
      fds.set(client.id, clientFd);
      fds.set(accepted.id, acceptedFd);
    }
  }

  // Connections not accepted yet: connected again, in image order (the accept queue's order).
  for (const s of sockets) {
    const plan = plans.get(s.id)!;
    if (plan.how !== 'waiting') continue;
    const fd = task.park(task.call(`socket for ${describe(s)}`, 'socket', AF_UNIX, s.type, 0));
    if (named(s)) bind(s, fd);
    const [addr] = task.put(sockaddr(plan.listener.name));
    task.call(`connect of ${describe(s)} to ${describe(plan.listener)} (not accepted yet)`, 'connect', fd, addr!, 2 + plan.listener.name.length);
    fds.set(s.id, fd);
  }

  // Dgram sockets connected to a named socket (not back): connect now that every name is bound.
  for (const s of sockets) {
    if (s.peer === 0 || plans.get(s.id)!.how !== 'alone') continue;
    const peer = byIno.get(s.peer);
    const name = peer?.name ?? s.externalPeer!;
    const [addr] = task.put(sockaddr(name));
    task.call(`connect of ${describe(s)} to ${peer ? describe(peer) : `"${name.toString('utf8').replace(/\0/g, '@')}" outside the dump`}`, 'connect', fds.get(s.id)!, addr!, 2 + name.length);
  }

  const pidfd = pidfdOpen(asPid(task.pid));
  const dups = new Map<number, Fd>();
  const dupOf = (s: UnixSocketImage): Fd => {
    let fd = dups.get(s.id);
    if (fd === undefined) dups.set(s.id, (fd = pidfdGetfd(pidfd, fds.get(s.id)!)));
    return fd;
  };
  let helper: Fd | undefined;
  try {
    for (const s of sockets) applySocketOptions(dupOf(s), s.opts, describe(s));
    for (const s of sockets) {
      if (s.queue.length === 0) continue;
      const peer = s.peer !== 0 ? byIno.get(s.peer) : undefined;
      let send: (bytes: Uint8Array, carried: readonly Fd[]) => number;
      const standIn = closedPeers.get(s.id);
      if (standIn !== undefined) {
        const from = pidfdGetfd(pidfd, standIn);
        dups.set(-s.id, from); // closed with the other duplicates
        send = (bytes, carried) => sendmsg(from, bytes, carried, MSG.DONTWAIT | MSG.NOSIGNAL);
      } else if (peer && peer.peer === s.ino) {
        const from = dupOf(peer);
        send = (bytes, carried) => sendmsg(from, bytes, carried, MSG.DONTWAIT | MSG.NOSIGNAL);
      } else {
        if (!named(s)) throw new Error(`${describe(s)}: ${s.queue.length} queued message(s) but no peer to send them from and no name to send them to`);
        if (s.type !== SOCK_DGRAM) throw new Error(`${describe(s)}: queued messages on a ${s.type} socket without a connected peer`);
        // A dgram socket connected to a peer only takes that peer's datagrams.
        const from = peer ? dupOf(peer) : (helper ??= socket(AF_UNIX, SOCK.DGRAM));
        const to = sockaddr(s.name);
        send = (bytes, carried) => sendmsg(from, bytes, carried, MSG.DONTWAIT | MSG.NOSIGNAL, to);
      }
      for (const [i, { bytes: message, rights }] of s.queue.entries()) {
        const failed = (reason: string, cause?: unknown): never => {
          throw new Error(`${describe(s)}: queued message ${i + 1} of ${s.queue.length} (${message.byteLength} bytes) could not be put back: ${reason}`, cause === undefined ? {} : { cause });
        };
        // Files in flight go with the message's first bytes (SCM_RIGHTS), from criu-ts's
        // duplicates of the task's fds (the same open file descriptions).
        let carried: Fd[] = [];
        try {
          carried = rights.map((id) => {
            const fd = fds.get(id) ?? task.inFlight(id);
            return pidfdGetfd(pidfd, fd);
          });
        } catch (error) {
          for (const f of carried) close(f);
          failed(`the files it carries (ids ${rights.join(', ')}) could not be made: ${(error as Error).message}`, error);
        }
        // A stream message carrying files is a run of sends the last of which carried them (see
        // dump/files/unix-sockets.ts): they go with its last byte, so a reader meets them in the
        // read that takes the end of their message, not before.
        const carryAt = s.type === SOCK_STREAM && carried.length > 0 ? message.byteLength - 1 : 0;
        let done = 0;
        do {
          let n = 0;
          try {
            n = send(message.subarray(done, done < carryAt ? carryAt : message.byteLength), done === carryAt ? carried : []);
          } catch (error) {
            for (const f of carried) close(f);
            failed((error as Error).message, error);
          }
          // A datagram or record goes whole or not at all; a stream may take part of it.
          if (s.type !== SOCK_STREAM) break;
          if (n <= 0) failed(`the stream took ${done} bytes`);
          done += n;
        } while (done < message.byteLength);
        for (const f of carried) close(f);
      }
    }
    // Our duplicates of the stand-ins first: the peer is only closed when its last fd is.
    for (const s of sockets) {
      const standIn = dups.get(-s.id);
      if (standIn !== undefined) {
        close(standIn);
        dups.delete(-s.id);
      }
    }
    for (const [id, fd] of closedPeers) task.call(`close of the stand-in peer of unix socket id ${id}`, 'close', fd);
    for (const s of sockets) {
      if (s.shutdown === 0) continue;
      // shutdown(2)'s `how` is the sk_shutdown bits minus one: SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2.
      sysShutdown(dupOf(s), s.shutdown - 1, describe(s));
    }
  } finally {
    for (const fd of dups.values()) close(fd);
    if (helper !== undefined) close(helper);
    close(pidfd);
  }
  for (const s of sockets) {
    const path = pathOf(s);
    if (s.deleted && path !== undefined) unlinkSync(path);
  }
  return fds;
}

function sysShutdown(fd: Fd, how: number, what: string): void {
  try {
    shutdown(fd, how);
  } catch (error) {
    throw new Error(`${what}: shutdown(${how}) failed: ${(error as Error).message}`, { cause: error });
  }
}

/** A stale socket file where a socket is to be bound is removed; any other file there is refused. */
function removeStaleSocketFile(path: string, what: string, deletedAtDump: boolean): void {
  let stats;
  try {
    stats = lstatSync(path);
  } catch {
    return;
  }
  // The socket had no file at dump time, so whatever is there now belongs to someone else.
  if (deletedAtDump) throw new Error(`${what}: its file was deleted at dump time and ${path} exists now; refusing to replace it`);
  if (!stats.isSocket()) throw new Error(`${what}: ${path} exists and is not a socket; refusing to replace it`);
  unlinkSync(path);
}

/**
 * The steps of making socket `what` in criu-ts: each runs as is, and a failure says which socket
 * and which step (`<what>: <label> failed: <cause>`). Shared by the inet, netlink and packet sockets.
 */
export function socketSteps(what: string): <T>(label: string, f: () => T) => T {
  return (label, f) => {
    try {
      return f();
    } catch (error) {
      throw new Error(`${what}: ${label} failed: ${(error as Error).message}`, { cause: error });
    }
  };
}

/** SOL_SOCKET options of sk_opts_entry, set on criu-ts's duplicate of the socket (unix and inet sockets). */
export function applySocketOptions(fd: Fd, opts: Msg, what: string): void {
  const set = (name: number, value: number | Uint8Array, label: string) => {
    try {
      setsockopt(fd, SOL_SOCKET, name, value);
    } catch (error) {
      throw new Error(`${what}: setsockopt(${label}) failed: ${(error as Error).message}`, { cause: error });
    }
  };
  const current = (name: number) => getsockopt(fd, SOL_SOCKET, name).readInt32LE(0);
  // The kernel doubles what SO_SNDBUF/SO_RCVBUF set (socket(7)) and reports the doubled value;
  // the FORCE forms ignore wmem_max/rmem_max (CAP_NET_ADMIN). Set only when it differs, since
  // setting them locks the size (SO_BUF_LOCK, set from the image below).
  const sndbuf = Number(opts.so_sndbuf ?? 0);
  if (sndbuf > 0 && current(SO.SNDBUF) !== sndbuf) set(SO.SNDBUFFORCE, Math.floor(sndbuf / 2), 'SO_SNDBUFFORCE');
  const rcvbuf = Number(opts.so_rcvbuf ?? 0);
  if (rcvbuf > 0 && current(SO.RCVBUF) !== rcvbuf) set(SO.RCVBUFFORCE, Math.floor(rcvbuf / 2), 'SO_RCVBUFFORCE');
  const timeval = (sec: unknown, usec: unknown) => {
    const tv = Buffer.alloc(16);
    tv.writeBigInt64LE(BigInt((sec as bigint | number | undefined) ?? 0), 0);
    tv.writeBigInt64LE(BigInt((usec as bigint | number | undefined) ?? 0), 8);
    return tv;
  };
  if (BigInt(opts.so_snd_tmo_sec ?? 0) !== 0n || BigInt(opts.so_snd_tmo_usec ?? 0) !== 0n) set(SO.SNDTIMEO, timeval(opts.so_snd_tmo_sec, opts.so_snd_tmo_usec), 'SO_SNDTIMEO');
  if (BigInt(opts.so_rcv_tmo_sec ?? 0) !== 0n || BigInt(opts.so_rcv_tmo_usec ?? 0) !== 0n) set(SO.RCVTIMEO, timeval(opts.so_rcv_tmo_sec, opts.so_rcv_tmo_usec), 'SO_RCVTIMEO');
  const flags: Array<[string, number]> = [
    ['reuseaddr', SO.REUSEADDR], ['so_passcred', SO.PASSCRED], ['so_passsec', SO.PASSSEC], ['so_dontroute', SO.DONTROUTE],
    ['so_reuseport', SO.REUSEPORT], ['so_broadcast', SO.BROADCAST], ['so_keepalive', SO.KEEPALIVE],
  ];
  for (const [field, name] of flags) if (opts[field] === true) set(name, 1, field);
  if (Number(opts.so_oobinline ?? 0) !== 0) set(SO.OOBINLINE, 1, 'SO_OOBINLINE');
  if (Number(opts.so_priority ?? 0) !== 0) set(SO.PRIORITY, Number(opts.so_priority), 'SO_PRIORITY');
  if (opts.so_rcvlowat !== undefined && Number(opts.so_rcvlowat) !== 1) set(SO.RCVLOWAT, Number(opts.so_rcvlowat), 'SO_RCVLOWAT');
  if (Number(opts.so_mark ?? 0) !== 0) set(SO.MARK, Number(opts.so_mark), 'SO_MARK');
  if (opts.so_buf_lock !== undefined && current(SO.BUF_LOCK) !== Number(opts.so_buf_lock)) set(SO.BUF_LOCK, Number(opts.so_buf_lock), 'SO_BUF_LOCK');
  const filter = (opts.so_filter as unknown[] | undefined) ?? [];
  if (filter.length > 0) {
    const program = Buffer.alloc(filter.length * 8);
    filter.forEach((w, i) => program.writeBigUInt64LE(BigInt.asUintN(64, BigInt(w as bigint)), i * 8));
    try {
      attachSocketFilter(fd, program);
    } catch (error) {
      throw new Error(`${what}: SO_ATTACH_FILTER (${filter.length} instructions) failed: ${(error as Error).message}`, { cause: error });
    }
  }
}
