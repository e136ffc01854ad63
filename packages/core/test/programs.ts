// The small C programs from tests/ that the end-to-end tests checkpoint, and their cleanup.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dumpSync, type DumpOptions } from '@criu-ts/core';
import { asPid, prctl, wait4, WNOHANG } from '@criu-ts/sys';
import { killQuietly, procState, sleepMs, waitFor } from './restore-helpers.js';
import { ImageReader } from '@criu-ts/images';

const here = dirname(fileURLToPath(import.meta.url));
export const TEST_BIN = resolve(here, '..', '..', '..', '..', 'tests', 'bin');
const PR_SET_CHILD_SUBREAPER = 36;

/**
 * Makes this process the subreaper of the programs the tests start: they are orphaned on purpose
 * (see StateKeeper), and this machine's init does not reap, so dead ones would keep their PID.
 */
export function becomeSubreaper(on = true): void {
  prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0);
}

/**
 * The hooks of an end-to-end suite: it needs root (ptrace of other processes, clone3 with
 * set_tid, PR_SET_MM_MAP; CI runs as root, so it never skips there), and this process is the
 * child subreaper of the programs it starts while the suite runs (see becomeSubreaper).
 * Call inside describe().
 */
export function rootWithSubreaper(): void {
  before(function () {
    if (process.getuid?.() !== 0) this.skip(); // stated reason: not root (ptrace, clone3 set_tid, PR_SET_MM_MAP)
    becomeSubreaper();
  });
  after(() => {
    if (process.getuid?.() === 0) becomeSubreaper(false);
  });
}

/** Every message of one image file, in order (payloads left out). */
export function imageEntries(path: string): Array<Record<string, any>> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const reader = ImageReader.open(path);
  try {
    return [...reader.entries()].map((e) => e.message as Record<string, any>); // eslint-disable-line @typescript-eslint/no-explicit-any
  } finally {
    reader.close();
  }
}

/** Every PID pstree.img of `images` lists. */
export function dumpedPids(images: string): number[] {
  return imageEntries(join(images, 'pstree.img')).map((e) => Number(e.pid));
}

/** Reaps `pid` if it is a zombie child of ours. */
export function reapIfOurs(pid: number): void {
  try {
    wait4(asPid(pid), WNOHANG);
  } catch {
    /* not ours */
  }
}

/** Dumps `pid` into `images` (replacing them); in kill mode, waits until the PID is free again. */
export function dumpAndWait(pid: number, images: string, options: Partial<DumpOptions> = {}): void {
  rmSync(images, { recursive: true, force: true });
  dumpSync({ pid, imagesDir: images, ...options });
  if ((options.leave ?? 'kill') !== 'kill') return;
  waitDumpedGone(pid);
}

/**
 * Waits until `pid`, killed by a dump, is reaped: a test program's parent is the test process
 * (a subreaper), so after a `criu-ts dump` command it stays a zombie, holding its PID against the
 * restore, until reaped here.
 */
export function waitDumpedGone(pid: number): void {
  waitFor('the dumped task to be gone', () => {
    reapIfOurs(pid);
    return !existsSync(`/proc/${pid}`);
  });
}

/** Kills a test program, reaps it (bounded), and removes its directory. */
export function killAndReap(pid: number, dir: string): void {
  killQuietly(pid);
  for (let i = 0; i < 200 && procState(pid) !== undefined; i++) {
    reapIfOurs(pid);
    sleepMs(5);
  }
  rmSync(dir, { recursive: true, force: true });
}

/**
 * A running tests/bin/state-keeper (or another program with its protocol, such as fd-keeper) in its own session (a dump without --shell-job needs that),
 * started through `setsid -f` so that it is not a child_process of ours: Node would otherwise
 * keep a handle on its PID, reap ptrace stops meant for compel and, after a restore, the
 * restored process (same PID) behind our back.
 */
export class StateKeeper {
  readonly dir = mkdtempSync(join(tmpdir(), 'criu-ts-sk-'));
  readonly report = join(this.dir, 'report');
  readonly images = join(this.dir, 'images');
  readonly pid: number;

  /** `launcher`: a command the program is started through (e.g. tests/bin/pty-run LOG). */
  constructor(program = 'state-keeper', extraArgs: readonly string[] = [], launcher: readonly string[] = []) {
    const binary = join(TEST_BIN, program);
    if (!existsSync(binary)) throw new Error(`${binary} is missing: run npm run build`);
    const child = spawn('setsid', ['-f', ...launcher, binary, this.report, this.dir, ...extraArgs], { stdio: 'ignore', env: { ...process.env, STATE_KEEPER_ENV: 'kept' } });
    child.unref();
    waitFor(`${program} to be ready`, () => this.lines().some((l) => l.startsWith('ready') || l.startsWith('setup failed')));
    const setupFailure = this.lines().find((l) => l.startsWith('setup failed'));
    if (setupFailure) throw new Error(`${program}: ${setupFailure}`);
    this.pid = Number(this.lines().find((l) => l.startsWith('ready'))!.split(' ')[1]);
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** SIGUSR1, then the program's report lines. */
  check(): { failures: string[]; checks: string[] } {
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    waitFor('state-keeper to report', () => this.lines().slice(before).some((l) => l.startsWith('done')));
    const lines = this.lines().slice(before);
    return { failures: lines.filter((l) => l.startsWith('FAIL')), checks: lines.filter((l) => l.startsWith('ok')) };
  }

  /** Dumps into `images` (killing the task, as criu does by default) and waits until its PID is free. */
  dump(options: Partial<DumpOptions> = {}): void {
    dumpAndWait(this.pid, this.images, options);
  }

  cleanup(): void {
    killAndReap(this.pid, this.dir);
  }
}

/** Where each process of tests/bin/tree-keeper sits, by slot (see tests/tree-keeper.c). */
export const TREE_SLOTS = ['R', 'A', 'A1', 'A2', 'B', 'B1', 'B2', 'C', 'C1', 'C2'] as const;
/** The slot of the zombie (B2: exited with status 7, never reaped by B). */
export const TREE_ZOMBIE_SLOT = 6;

/** A process as /proc/PID/stat shows it: state, parent, group, session. */
export interface ProcLayout {
  readonly pid: number;
  readonly state: string | undefined;
  readonly ppid: number;
  readonly pgid: number;
  readonly sid: number;
}

export function procLayout(pid: number): ProcLayout {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { pid, state: f[0], ppid: Number(f[1]), pgid: Number(f[2]), sid: Number(f[3]) };
  } catch {
    return { pid, state: undefined, ppid: 0, pgid: 0, sid: 0 };
  }
}

/**
 * A running tests/bin/tree-keeper: 10 processes on 3 levels, two sessions, five groups, a
 * zombie, shared anonymous and copy-on-write memory. Started through `setsid -f` (not a
 * child_process of ours, see StateKeeper); its root is re-parented to us, the subreaper.
 */
export class TreeKeeper {
  readonly dir = mkdtempSync(join(tmpdir(), 'criu-ts-tree-'));
  readonly report = join(this.dir, 'report');
  readonly images = join(this.dir, 'images');
  /** PIDs by slot, as the program reported them (for tree-keeper: TREE_SLOTS order, which is also CRIU's pstree order). */
  readonly pids: number[];

  /** `name`: tree-keeper, or another program with the same protocol (orphan-keeper). */
  constructor(name = 'tree-keeper') {
    const program = join(TEST_BIN, name);
    if (!existsSync(program)) throw new Error(`${program} is missing: run npm run build`);
    spawn('setsid', ['-f', program, this.report], { stdio: 'ignore' }).unref();
    waitFor('tree-keeper to be ready', () => this.lines().some((l) => l.startsWith('ready')));
    this.pids = this.lines().find((l) => l.startsWith('ready'))!.split(' ').slice(1).map(Number);
  }

  get root(): number {
    return this.pids[0]!;
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** State, parent, group and session of every process, by slot. */
  layout(): ProcLayout[] {
    return this.pids.map(procLayout);
  }

  /** SIGUSR1 to the root: every process checks itself, the root checks what they wrote. */
  check(): { failures: string[]; checks: string[]; done: string } {
    const before = this.lines().length;
    process.kill(this.root, 'SIGUSR1');
    waitFor('tree-keeper to report', () => this.lines().slice(before).some((l) => l.startsWith('done')), 20_000);
    const lines = this.lines().slice(before);
    return {
      failures: lines.filter((l) => l.startsWith('FAIL')),
      checks: lines.filter((l) => l.startsWith('ok')),
      done: lines.find((l) => l.startsWith('done'))!,
    };
  }

  /** Reaps what is ours until no process of the tree exists (zombies included). */
  waitGone(what = 'every process of the tree to be gone'): void {
    waitFor(what, () => {
      for (const pid of this.pids) reapIfOurs(pid);
      return this.pids.every((pid) => !existsSync(`/proc/${pid}`));
    });
  }

  /** Dumps the tree into `images` (replacing them); in kill mode, waits until every PID is free. */
  dump(options: Partial<DumpOptions> = {}): void {
    rmSync(this.images, { recursive: true, force: true });
    dumpSync({ pid: this.root, imagesDir: this.images, ...options });
    if ((options.leave ?? 'kill') === 'kill') this.waitGone();
  }

  cleanup(): void {
    for (const pid of this.pids) killQuietly(pid);
    try {
      this.waitGone();
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}
