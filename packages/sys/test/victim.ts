// Starts tests/bin/compel-victim as a grandchild (through sh), so that Node's own child reaper
// (libuv's waitpid on SIGCHLD, which also returns ptrace stops of children) never steals the
// wait statuses the tests wait for. The victim prints its pid in its "ready" line.
// sh gives a background job /dev/null as stdin unless redirected explicitly (POSIX, job control
// off): hence the 3<&0 dance that hands our pipe through.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const VICTIM_BIN = fileURLToPath(new URL('../../../../tests/bin/compel-victim', import.meta.url));
export const TESTS_BIN = fileURLToPath(new URL('../../../../tests/bin/', import.meta.url));

export function requireRootAndBinaries(ctx: Mocha.Context): void {
  if (process.getuid?.() !== 0) {
    if (process.env.CI) throw new Error('CI runs as root; these tests must not skip there');
    ctx.skip();
  }
  if (!existsSync(VICTIM_BIN)) throw new Error(`${VICTIM_BIN} missing: run npm run build (make -C tests)`);
}

export class Victim {
  readonly lines: string[] = [];
  private waiters: Array<() => void> = [];
  pid = 0;
  data = 0n;
  dataLen = 0;
  zombie = 0;

  private constructor(readonly proc: ChildProcess) {
    let buf = '';
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        this.lines.push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async start(mode: string, mib = 1): Promise<Victim> {
    const proc = spawn('/bin/sh', ['-c', 'exec 3<&0; "$0" "$@" <&3 3<&- & wait', VICTIM_BIN, mode, String(mib)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const v = new Victim(proc);
    live.add(v);
    const ready = await v.waitLine(/ready pid=(\d+) data=(0x[0-9a-f]+) len=(\d+)/, 10_000);
    const m = /ready pid=(\d+) data=(0x[0-9a-f]+) len=(\d+)/.exec(ready)!;
    v.pid = Number(m[1]);
    v.data = BigInt(m[2]!);
    v.dataLen = Number(m[3]);
    const z = /zombie=(\d+)/.exec(ready);
    if (z) v.zombie = Number(z[1]);
    return v;
  }

  /** Resolves with the first line (from the start) matching `re` that was not consumed yet. */
  async waitLine(re: RegExp, timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.lines.findIndex((l) => re.test(l));
      if (i >= 0) return this.lines.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`victim ${this.pid}: no line matching ${re} within ${timeoutMs} ms; got ${JSON.stringify(this.lines)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  send(line: string): void {
    this.proc.stdin!.write(`${line}\n`);
  }

  /** The whole data area as the victim wrote it. */
  expectedData(offset = 0, len = this.dataLen): Buffer {
    const out = Buffer.alloc(len);
    for (let i = 0; i < len; i++) out[i] = this.expectedByte(offset + i);
    return out;
  }

  /** Expected byte i of the data area (same formula as the C program). */
  expectedByte(i: number): number {
    return Number(((BigInt(i) * 2654435761n) >> 13n) & 0xffn) ^ (this.pid & 0xff);
  }

  state(): string {
    try {
      const stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
    } catch {
      return 'gone';
    }
  }

  /** State letter of one thread of the victim. */
  stateOf(tid: number): string {
    try {
      const stat = readFileSync(`/proc/${this.pid}/task/${tid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
    } catch {
      return 'gone';
    }
  }

  kill(): void {
    live.delete(this);
    for (const pid of [this.pid, this.zombie]) {
      if (pid > 0) try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    }
    try { this.proc.kill('SIGKILL'); } catch { /* already gone */ }
    this.proc.stdin?.destroy();
    this.proc.stdout?.destroy();
  }
}

const live = new Set<Victim>();
/** Kills every victim still alive (root hooks call this after each test, failed or not). */
export function killAllVictims(): void {
  for (const v of [...live]) v.kill();
}
