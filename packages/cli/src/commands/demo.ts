// `criu-ts demo`: checkpoint and restore a running program, start to end, on this machine.
//
// A small C program counts (with some memory it checks on every step) and prints each value to
// a log; criu-ts dumps it (the process is killed, as criu does by default), shows the images,
// restores it with the same PID, and the log shows it counting on from where it stopped.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { explore } from '@criu-ts/images';
import { asPid, prctl, sleepSync, wait4, WNOHANG } from '@criu-ts/sys';
import type { CommandIo } from './command-io.js';

const COUNTER_SOURCE = String.raw`
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
/* Counts forever; 4 MiB of memory hold a pattern derived from the count, checked every step,
 * so a restore that lost or mixed up memory shows up as "memory BROKEN". */
#define _GNU_SOURCE
int close_range(unsigned int first, unsigned int last, int flags);
int main(void)
{
	/* Only stdio: whatever the launcher leaked stays out of the checkpoint. */
	close_range(3, ~0U, 0);
	size_t size = 4 << 20;
	unsigned char *memory = malloc(size);
	unsigned long count = 0;
	memset(memory, 0, size);
	for (;;) {
		int ok = 1;
		for (size_t i = 0; i < size; i += 4096)
			if (memory[i] != (unsigned char)(count + i / 4096))
				ok = 0;
		count++;
		for (size_t i = 0; i < size; i += 4096)
			memory[i] = (unsigned char)(count + i / 4096);
		printf("count %lu (pid %d), memory %s\n", count, getpid(), ok || count == 1 ? "ok" : "BROKEN");
		fflush(stdout);
		struct timespec pause = { 0, 200 * 1000 * 1000 };
		nanosleep(&pause, NULL);
	}
}
`;

const PR_SET_CHILD_SUBREAPER = 36;
const sleepMs = sleepSync;

function waitFor(what: string, predicate: () => boolean, timeoutMs = 10_000): void {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    sleepMs(20);
  }
}

function reap(pid: number): void {
  try {
    wait4(asPid(pid), WNOHANG);
  } catch {
    /* not our child */
  }
}

export function runDemo(argv: string[], io: CommandIo): number {
  if (argv.includes('-h') || argv.includes('--help')) {
    io.print('usage: criu-ts demo [--keep]\n\nStart a counting program, checkpoint it, show the images, restore it and watch it count on.\n  --keep   keep the demo directory (program, log, images)');
    return 0;
  }
  const keep = argv.includes('--keep');
  const dir = mkdtempSync(join(tmpdir(), 'criu-ts-demo-'));
  const images = join(dir, 'images');
  const log = join(dir, 'counter.log');
  const say = (text: string) => io.write(text + '\n');
  let pid: number | undefined;
  // The program is started detached from us (its parent exits at once), so when it dies it is
  // orphaned: as subreaper we get it back and reap it, and its PID is free for the restore even
  // where init does not reap.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  try {
    say(`== criu-ts demo, in ${dir}`);
    writeFileSync(join(dir, 'counter.c'), COUNTER_SOURCE);
    execFileSync(process.env.CC ?? 'cc', ['-O2', '-o', join(dir, 'counter'), join(dir, 'counter.c')], { stdio: 'inherit' });
    // Its own session (setsid -f), stdout to a log file: what a dump without --shell-job takes.
    spawn('sh', ['-c', `exec setsid -f "${join(dir, 'counter')}" </dev/null >"${log}" 2>&1`], { stdio: 'ignore' });
    const lines = () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean) : []);
    waitFor('the counter to count to 5', () => lines().length >= 5);
    pid = Number(/pid (\d+)/.exec(lines()[0]!)![1]);
    say(`== the program runs as pid ${pid}:`);
    for (const line of lines().slice(-3)) say(`   ${line}`);

    say(`== criu-ts dump -t ${pid} -D ${images}`);
    const dumped = dumpSync({ pid, imagesDir: images });
    const countAtDump = lines().length;
    say(`   frozen for ${((dumped.freezingTime + dumped.frozenTime) / 1000).toFixed(1)} ms (freezing included), ${dumped.pagesWritten} pages written; the process is gone:`);
    waitFor('the dumped process to be gone', () => {
      reap(pid!);
      return !existsSync(`/proc/${pid}`);
    });
    say(`   /proc/${pid} exists: ${existsSync(`/proc/${pid}`)}`);
    say('== the images:');
    for (const name of readdirSync(images).sort()) say(`   ${name.padEnd(24)} ${String(statSync(join(images, name)).size).padStart(9)} bytes`);
    say(`== criu-ts x ${images} ps`);
    for (const line of explore(images, 'ps')) say(`   ${line}`);

    sleepMs(600);
    const idle = lines().length === countAtDump;
    say(idle ? `   0.6 s later the log still ends at count ${countAtDump}: nothing runs` : '   the log grew while the program was dumped: something is off');
    if (!idle) return 1;
    say(`== criu-ts restore -d -D ${images}`);
    const restored = restoreSync({ imagesDir: images, detached: true });
    say(`   restored as pid ${restored.pid} in ${Object.values(restored.timings).reduce((a, b) => a + b, 0).toFixed(1)} ms`);
    waitFor('the restored counter to count on', () => lines().length >= countAtDump + 5);
    say('== the log after the restore:');
    for (const line of lines().slice(countAtDump - 2, countAtDump + 5)) say(`   ${line}`);
    const after = lines().slice(countAtDump);
    const first = Number(/count (\d+)/.exec(after[0]!)![1]);
    const continued = first === countAtDump + 1 && after.every((l) => l.includes(`pid ${pid}`) && l.endsWith('memory ok'));
    say(continued ? `== it counted on from ${countAtDump} with the same pid and intact memory.` : '== something is off: see the log above.');
    return continued ? 0 : 1;
  } finally {
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      waitFor('the demo program to be reaped', () => {
        reap(pid!);
        return !existsSync(`/proc/${pid}`);
      }, 5_000);
    }
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    if (keep) say(`== kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}
