// Run as a separate process by the self-cure tests: infects the pid given as argv[2], prints
// "infected <base>", then keeps the parasite busy with requests until it is killed.
// With argv[3] = 'epipe', first makes the parasite's vmsplice meet a pipe whose reader is gone
// (as when the injector dies mid-dump: the kernel raises SIGPIPE in the task), and prints
// "epipe <error>" once that happened. With argv[3] = 'cycles', injects and cures over and over.
// With argv[3] = 'undo-storm', leaves the worker on its return chain (after a remote syscall) and
// changes the chain's undo operations over and over, each change a write into the task's stack.
// With argv[3] = 'torn-write', the same, but a write that crosses a page boundary stops there and
// this process SIGKILLs itself: what a SIGKILL during the write leaves (the kernel stops pinning
// the task's pages once a fatal signal is pending); without such a write it kills itself at the end.
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
if (process.argv[3] === 'torn-write') {
  const v = injectSync(pid);
  v.syscallSync('getpid'); // the worker now waits at that syscall's exit, its RSP on its chain
  const write = v.writeMemorySync.bind(v);
  v.writeMemorySync = (addr, data) => {
    const room = Number(4096n - (BigInt(addr) & 4095n));
    if (data.length <= room) return write(addr, data);
    write(addr, data.subarray(0, room));
    process.kill(process.pid, 'SIGKILL');
  };
  process.stdout.write('tearing\n');
  for (let i = 0; i < 50; i++) {
    v.undoOnDeath('torn', 'close', 900_000 + (i % 5));
    if (i % 4 === 0) v.forgetUndo('torn');
  }
  process.kill(process.pid, 'SIGKILL');
}
if (process.argv[3] === 'undo-storm') {
  const v = injectSync(pid);
  v.syscallSync('getpid'); // the worker now waits at that syscall's exit, its RSP on its chain
  process.stdout.write('storming\n');
  // Descriptor numbers no task has: the operation, if run when we die, fails with EBADF.
  for (let i = 0, deadline = Date.now() + 30_000; Date.now() < deadline; i++) {
    v.undoOnDeath('storm', 'close', 900_000 + (i % 7));
    if (i % 3 === 0) v.forgetUndo('storm');
  }
  v.cureSync();
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
