// What the reliability tests check after a failed (or killed) dump or restore.
import { spawnSync } from 'node:child_process';
import { expect } from 'chai';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { isParasiteMapping } from '@criu-ts/compel';
import { ImageReader } from '@criu-ts/images';
import { procState, waitFor } from './restore-helpers.js';
import { reapIfOurs } from './programs.js';

/** Every PID and TID pstree.img of `images` lists (processes first, then their other threads). */
export function dumpedIds(images: string): { pids: number[]; tids: number[] } {
  const reader = ImageReader.open(join(images, 'pstree.img'));
  try {
    const entries = [...reader.entries()].map((e) => e.message as { pid: number; threads?: number[] });
    const pids = entries.map((e) => Number(e.pid));
    const tids = entries.flatMap((e) => (e.threads ?? []).map(Number).filter((t) => !pids.includes(t)));
    return { pids, tids };
  } finally {
    reader.close();
  }
}

/** No task with any of these ids exists (zombies included): reaps what is ours, bounded. */
export function expectIdsFree(ids: readonly number[], what: string, timeoutMs = 10_000): void {
  try {
    waitFor(`${what}: PIDs ${ids.join(',')} to be free`, () => {
      for (const id of ids) reapIfOurs(id);
      return ids.every((id) => procState(id) === undefined && !existsSync(`/proc/${id}`));
    }, timeoutMs);
  } catch (error) {
    const left = ids.filter((id) => existsSync(`/proc/${id}`)).map((id) => `${id} (${procState(id)})`);
    throw new Error(`${(error as Error).message}; still there: ${left.join(', ')}`);
  }
}

export function tracerOf(pid: number): number {
  return Number(/^TracerPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? -1);
}

/** The state letter of every thread of `pid`. */
export function threadStates(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  });
}

/** "tid SigBlk" of every thread of `pid`, sorted: the blocked masks. */
export function blockedMasksOf(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    return `${tid} ${/^SigBlk:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '?'}`;
  }).sort();
}

/** /proc/PID/maps, one normalized line per VMA. */
export function mapsOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean).map((l) => l.split(/\s+/).join(' '));
}

/** "fd -> target" for every fd of `pid`, sorted. */
export function fdLinksOf(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`).map((fd) => {
    try {
      return `${fd} -> ${readlinkSync(`/proc/${pid}/fd/${fd}`)}`;
    } catch {
      return `${fd} -> ?`;
    }
  }).sort();
}

/**
 * A task after a failed or interrupted dump: alive, untraced, no thread in a ptrace or group
 * stop (it was running before), no parasite mapping, and (when given) the same maps and fds.
 */
export function expectRunningUntouched(pid: number, what: string, before?: { maps: string[]; fds: string[]; masks?: string[] }): void {
  waitFor(`${what}: ${pid} untraced`, () => tracerOf(pid) === 0);
  const states = threadStates(pid);
  expect(states.filter((s) => s === 't' || s === 'T' || s === 'Z' || s === 'X'), `${what}: thread states ${states.join('')}`).to.deep.equal([]);
  const maps = mapsOf(pid);
  expect(maps.filter(isParasiteMapping), `${what}: parasite or control mappings`).to.deep.equal([]);
  if (before) {
    expect(maps, `${what}: /proc/${pid}/maps`).to.deep.equal(before.maps);
    expect(fdLinksOf(pid), `${what}: fds`).to.deep.equal(before.fds);
    if (before.masks) expect(blockedMasksOf(pid), `${what}: blocked signal masks`).to.deep.equal(before.masks);
  }
}

/** No temporary file restore makes for ghost files is left in `dir` (and `names` do not exist). */
export function expectNoGhostLeftovers(dir: string, names: readonly string[], what: string): void {
  const leftovers = readdirSync(dir).filter((n) => n.includes('criu-ts-ghost'));
  expect(leftovers, `${what}: temporary ghost files in ${dir}`).to.deep.equal([]);
  for (const name of names) expect(existsSync(join(dir, name)), `${what}: ${name} recreated and left`).to.equal(false);
}

/**
 * Dumps `pid` (with --tcp-established) into `imagesDir` from a separate Node.js process that
 * SIGKILLs itself when the dump reaches `stage`, then waits until `pid` is free of its dead
 * tracer. Returns the signal the dumper died of.
 */
export function dumpKilledAtStage(pid: number, imagesDir: string, stage: string): NodeJS.Signals | null {
  const dumperCode =
    `import { dumpSync } from '@criu-ts/core';\n` +
    `dumpSync({ pid: ${pid}, imagesDir: process.argv[1], tcpEstablished: true,\n` +
    `  onStage: (stage) => { if (stage === ${JSON.stringify(stage)}) process.kill(process.pid, 'SIGKILL'); } });\n`;
  const cwd = new URL('../../../../', import.meta.url).pathname;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', dumperCode, imagesDir], { cwd, stdio: 'ignore' });
  waitFor('the program to be free of its dead dumper', () => /TracerPid:\s+0\b/.test(readFileSync(`/proc/${pid}/status`, 'utf8')));
  return r.signal;
}
