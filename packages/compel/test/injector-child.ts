// Run as a separate process by the self-cure tests: infects the pid given as argv[2], prints
// "infected <base>", then keeps the parasite busy with requests until it is killed.
// With argv[3] = 'epipe', first makes the parasite's vmsplice meet a pipe whose reader is gone
// (as when the injector dies mid-dump: the kernel raises SIGPIPE in the task), and prints
// "epipe <error>" once that happened. With argv[3] = 'cycles', injects and cures over and over.
import { injectSync } from '@criu-ts/compel';
import { asRemoteAddress, close } from '@criu-ts/sys';

const pid = Number(process.argv[2]);
if (process.argv[3] === 'cycles') {
  // Whole injections, back to back, until killed: seize, remote syscalls, parasite load, a
  // call in every thread, commands, cure. The test kills this process at random moments.
  process.stdout.write('cycling\n');
  for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
    const v = injectSync(pid);
    v.syscallSync('getpid');
    const scratch = v.mapSync(4096);
    v.unmapSync(scratch);
    const p = v.infectSync();
    for (const tid of v.threads.keys()) p.threadMisc(tid);
    p.dumpSigactions();
    v.cureSync();
  }
  process.exit(0);
}
const victim = injectSync(pid);
const parasite = victim.infectSync();
process.stdout.write(`infected ${parasite.base.toString(16)} selfcure=${parasite.selfCureUnmaps}\n`);
if (process.argv[3] === 'epipe') {
  const stack = victim.saved.regs.rsp & ~4095n;
  parasite.readPages([{ addr: asRemoteAddress(stack), len: 4096 }]); // makes the page pipe
  close((parasite as unknown as { pipe: { r: Parameters<typeof close>[0] } }).pipe.r);
  try {
    parasite.readPages([{ addr: asRemoteAddress(stack), len: 4096 }]);
    process.stdout.write('epipe none\n');
  } catch (error) {
    process.stdout.write(`epipe ${(error as Error).message.replace(/\n/g, ' ')}\n`);
  }
}
const deadline = Date.now() + 30_000;
while (Date.now() < deadline) {
  parasite.dumpSigactions();
  parasite.ping();
}
victim.cureSync();
