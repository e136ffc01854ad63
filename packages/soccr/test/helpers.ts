// Shared helpers for soccr's end-to-end tests: child processes that print
// JSON lines, network namespaces that are always removed, lock leftovers.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';

export const fixturesDir = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');

export interface Child {
  proc: ChildProcess;
  /** The next JSON line the child prints (bounded wait). */
  line(timeoutMs?: number): Promise<Record<string, any>>;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  stderr(): string;
}

/** Starts `node <fixture> args...`, optionally inside network namespace `netns`. */
export function startChild(script: string, args: string[], netns?: string): Child {
  const cmd = netns ? 'ip' : process.execPath;
  const full = [join(fixturesDir, script), ...args];
  const argv = netns ? ['netns', 'exec', netns, process.execPath, ...full] : full;
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => {
    const w = waiters.shift();
    if (w) w(l);
    else lines.push(l);
  });
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  return {
    proc,
    exited,
    stderr: () => err,
    line(timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${script}: no output within ${timeoutMs} ms; stderr: ${err}`)), timeoutMs);
        const take = (l: string) => {
          clearTimeout(t);
          try {
            resolve(JSON.parse(l));
          } catch {
            reject(new Error(`${script}: not JSON: ${l}; stderr: ${err}`));
          }
        };
        const l = lines.shift();
        if (l !== undefined) take(l);
        else {
          waiters.push(take);
          exited.then(() => setTimeout(() => reject(new Error(`${script} exited; stderr: ${err}`)), 50));
        }
      });
    },
  };
}

export function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** True when running as root (repair mode and netfilter need it). */
export const isRoot = process.getuid?.() === 0;
