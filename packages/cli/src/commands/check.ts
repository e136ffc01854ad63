// `criu-ts check`: the kernel and system features criu-ts relies on, each probed for real on
// this machine (a call made, a file read), one line each. `--feature NAME` checks one and exits
// 0 when it is there, 1 when not. `--faults` lists the fault-injection points.
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { accept4, asPid, close, listen as listenSocket, pollOne, POLL, memfdCreate, open, O, pidfdGetfd, pidfdOpen, pipe2, prctl, sock, syscall, tiocgptpeer, tiocsptlck, vmsplice, isSysError, type Fd } from '@criu-ts/sys';
import { nativeDir as compelNativeDir } from '@criu-ts/compel';
import { acceptQueueRefillUnsupported, pause as pauseConnection, requeueConnection, save as saveConnection } from '@criu-ts/soccr';
import { DUMP_FAULT_POINTS, probePacketRingPosition, RESTORE_FAULT_POINTS, restoreStubPath } from '@criu-ts/core';
import { UsageError, type CommandIo } from './command-io.js';

interface Feature {
  readonly name: string;
  readonly what: string;
  /** true when present; otherwise the reason it is not. */
  readonly probe: () => true | string;
}

function capabilities(): bigint {
  const line = readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith('CapEff:'));
  return BigInt('0x' + (line?.split(/\s+/)[1] ?? '0'));
}
const hasCap = (bit: number) => (capabilities() & (1n << BigInt(bit))) !== 0n;
const CAP_NET_ADMIN = 12;
const CAP_SYS_PTRACE = 19;
const CAP_SYS_ADMIN = 21;
const CAP_CHECKPOINT_RESTORE = 40;

function kernelAtLeast(major: number, minor: number): boolean {
  const [a, b] = readFileSync('/proc/sys/kernel/osrelease', 'utf8').split('.').map((x) => parseInt(x, 10));
  return a! > major || (a === major && b! >= minor);
}

const FEATURES: readonly Feature[] = [
  {
    name: 'ptrace',
    what: 'PTRACE_SEIZE of other processes (CAP_SYS_PTRACE, Yama scope)',
    probe: () => {
      if (!hasCap(CAP_SYS_PTRACE)) return 'no CAP_SYS_PTRACE';
      const yama = '/proc/sys/kernel/yama/ptrace_scope';
      if (existsSync(yama) && Number(readFileSync(yama, 'utf8')) > 2) return 'ptrace disabled by Yama (scope 3)';
      return true;
    },
  },
  {
    name: 'clone3_set_tid',
    what: 'clone3 with set_tid, for restoring exact PIDs (kernel 5.5+, CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE)',
    probe: () => (!kernelAtLeast(5, 5) ? 'kernel older than 5.5' : hasCap(CAP_SYS_ADMIN) || hasCap(CAP_CHECKPOINT_RESTORE) ? true : 'no CAP_SYS_ADMIN/CAP_CHECKPOINT_RESTORE'),
  },
  {
    name: 'mm_map',
    what: 'prctl(PR_SET_MM, PR_SET_MM_MAP) for mm fields, auxv and exe',
    probe: () => {
      const PR_SET_MM = 35;
      const PR_SET_MM_MAP_SIZE = 15;
      const size = Buffer.alloc(4);
      try {
        prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, size);
      } catch (error) {
        return `PR_SET_MM_MAP_SIZE failed: ${(error as Error).message}`;
      }
      return size.readUInt32LE(0) > 0 ? true : 'PR_SET_MM_MAP_SIZE returned 0';
    },
  },
  {
    name: 'vdso_map',
    what: 'a [vdso] block that arch_prctl(ARCH_MAP_VDSO_64) can place (x86_64)',
    probe: () => (process.arch !== 'x64' ? `not x86_64 (${process.arch})` : /\[vdso\]/.test(readFileSync('/proc/self/maps', 'utf8')) ? true : 'no [vdso] mapping'),
  },
  {
    name: 'pagemap',
    what: '/proc/PID/pagemap with page frame numbers (to skip zero pages)',
    probe: () => {
      const fd = openSync('/proc/self/pagemap', 'r');
      try {
        const entry = Buffer.alloc(8);
        // Our own stack page is present: its PFN must be visible.
        const stackPage = BigInt(readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ')[25]!) / 4096n;
        readSync(fd, entry, 0, 8, Number(stackPage) * 8);
        const value = entry.readBigUInt64LE(0);
        return (value & ((1n << 55n) - 1n)) !== 0n || !(value >> 63n) ? true : 'page frame numbers hidden (needs CAP_SYS_ADMIN)';
      } finally {
        closeSync(fd);
      }
    },
  },
  {
    name: 'memfd',
    what: 'memfd_create, for loading the parasite',
    probe: () => {
      try {
        close(memfdCreate('criu-ts-check'));
        return true;
      } catch (error) {
        return (error as Error).message;
      }
    },
  },
  {
    name: 'vmsplice',
    what: 'vmsplice + splice, for moving pages without copies',
    probe: () => {
      const [r, w] = pipe2();
      try {
        return vmsplice(w, [Buffer.alloc(4096, 1)]) === 4096 ? true : 'short vmsplice';
      } catch (error) {
        return (error as Error).message;
      } finally {
        close(r);
        close(w);
      }
    },
  },
  {
    name: 'tcp_repair',
    what: 'TCP_REPAIR on sockets (CAP_NET_ADMIN), for TCP connections',
    probe: () => {
      if (!hasCap(CAP_NET_ADMIN)) return 'no CAP_NET_ADMIN';
      const fd = sock.socket(2 /* AF_INET */, 1 /* SOCK_STREAM */, 0);
      try {
        sock.setsockoptInt(fd, 6 /* IPPROTO_TCP */, 19 /* TCP_REPAIR */, 1);
        return true;
      } catch (error) {
        return isSysError(error) ? error.message : String(error);
      } finally {
        sock.close(fd);
      }
    },
  },
  {
    name: 'pidfd_getfd',
    what: 'pidfd_open + pidfd_getfd, for handing files shared between processes at restore (kernel 5.6+)',
    probe: () => {
      const [r, w] = pipe2();
      let pidfd: Fd | undefined;
      try {
        pidfd = pidfdOpen(asPid(process.pid));
        close(pidfdGetfd(pidfd, r));
        return true;
      } catch (error) {
        return (error as Error).message;
      } finally {
        if (pidfd !== undefined) close(pidfd);
        close(r);
        close(w);
      }
    },
  },
  {
    name: 'pty_peer',
    what: 'a pty from /dev/ptmx and its slave through TIOCGPTPEER, for ptys in the dumped tree',
    probe: () => {
      let master: Fd | undefined;
      try {
        master = open('/dev/ptmx', O.RDWR | O.NOCTTY | O.CLOEXEC);
        tiocsptlck(master, false); // a new pty's slave is locked until unlockpt
        close(tiocgptpeer(master, O.RDWR | O.NOCTTY | O.CLOEXEC));
        return true;
      } catch (error) {
        return (error as Error).message;
      } finally {
        if (master !== undefined) close(master);
      }
    },
  },
  {
    name: 'fanotify',
    what: 'fanotify_init, for fanotify groups (CAP_SYS_ADMIN)',
    probe: () => {
      try {
        close(Number(syscall('fanotify_init', 0 /* FAN_CLASS_NOTIF */, O.RDONLY)) as Fd);
        return true;
      } catch (error) {
        return (error as Error).message;
      }
    },
  },
  {
    name: 'tcp_accept_queue',
    what: 'connections not accepted yet put back into a listener\'s queue (TC BPF + bpf_sk_assign_tcp_reqsk, kernel 6.9+): tried on loopback',
    probe: probeAcceptQueueRefill,
  },
  {
    name: 'packet_rings',
    what: 'where the kernel stands in a packet socket\'s rings, read through BTF and a BPF task_file iterator (packet sockets with rings): tried on a ring of this process',
    probe: probePacketRingPosition,
  },
  {
    name: 'parasite',
    what: 'the parasite blob built from native/ (npm run build)',
    probe: () => (existsSync(join(compelNativeDir(), 'build', 'parasite.bin')) ? true : `missing ${join(compelNativeDir(), 'build', 'parasite.bin')}`),
  },
  {
    name: 'restore_stub',
    what: 'the restore stub built from native/ (npm run build)',
    probe: () => (existsSync(restoreStubPath()) ? true : `missing ${restoreStubPath()}`),
  },
];

/**
 * A connection on loopback, accepted, saved, dropped silently and queued back; then accepted
 * again with its byte. What a dump with --tcp-established does to a listener's queue.
 */
function probeAcceptQueueRefill(): true | string {
  const unsupported = acceptQueueRefillUnsupported();
  if (unsupported) return unsupported;
  const fds: number[] = [];
  try {
    const listener = sock.socket(sock.AF_INET, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP);
    fds.push(listener);
    sock.bind(listener, { family: 4, address: '127.0.0.1', port: 0 });
    listenSocket(listener as Fd, 1);
    const client = sock.socket(sock.AF_INET, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP);
    fds.push(client);
    sock.connect(client, sock.getsockname(listener));
    sock.send(client, Buffer.from('?'), 0);
    const first = accept4(listener as Fd) as number;
    pauseConnection(first);
    const saved = saveConnection(first);
    sock.close(first);
    requeueConnection(listener, saved);
    if ((pollOne(listener as Fd, POLL.IN, 1000) & POLL.IN) === 0) return 'nothing came back into the queue';
    const again = accept4(listener as Fd) as number;
    fds.push(again);
    const byte = Buffer.alloc(1);
    return sock.recv(again, byte, 0x40 /* MSG_DONTWAIT */) === 1 && byte[0] === 0x3f ? true : 'the queued byte did not come back';
  } catch (error) {
    return (error as Error).message;
  } finally {
    for (const fd of fds) sock.close(fd);
  }
}

const HELP = `usage: criu-ts check [--feature NAME] [--faults]

Check that this machine has what criu-ts needs, one line per feature.

options:
  --feature NAME   check one feature; exit 0 if present, 1 if not
  --faults         list the fault-injection points (CRIU_TS_FAULT=dump:POINT or restore:POINT)
  -h, --help       show this help

features: ${FEATURES.map((f) => f.name).join(', ')}
`;

export function runCheck(argv: string[], io: CommandIo): number {
  let feature: string | undefined;
  let faults = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-h' || arg === '--help') return io.print(HELP), 0;
    if (arg === '--faults') faults = true;
    else if (arg === '--feature') feature = argv[++i];
    else if (arg.startsWith('--feature=')) feature = arg.slice('--feature='.length);
    else if (arg === '--no-default-config' || arg.startsWith('-v')) continue;
    else throw new UsageError(`check: unknown option ${arg}`, HELP);
  }
  if (faults) {
    for (const point of DUMP_FAULT_POINTS) io.write(`dump:${point}\n`);
    for (const point of RESTORE_FAULT_POINTS) io.write(`restore:${point}\n`);
    return 0;
  }
  if (feature !== undefined) {
    const f = FEATURES.find((x) => x.name === feature);
    if (!f) throw new UsageError(`check: unknown feature ${JSON.stringify(feature)} (known: ${FEATURES.map((x) => x.name).join(', ')})`, HELP);
    const result = runProbe(f);
    io.write(result === true ? `${f.name} is supported\n` : `${f.name} is NOT supported: ${result}\n`);
    return result === true ? 0 : 1;
  }
  let missing = 0;
  for (const f of FEATURES) {
    const result = runProbe(f);
    if (result !== true) missing++;
    io.write(`${result === true ? 'ok  ' : 'MISS'} ${f.name.padEnd(16)} ${f.what}${result === true ? '' : `: ${result}`}\n`);
  }
  io.write(missing === 0 ? 'Looks good.\n' : `${missing} feature(s) missing.\n`);
  return missing === 0 ? 0 : 1;
}

function runProbe(f: Feature): true | string {
  try {
    return f.probe();
  } catch (error) {
    return (error as Error).message;
  }
}
