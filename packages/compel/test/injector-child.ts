// Run as a separate process by the self-cure test: infects the pid given as argv[2], prints
// "infected <base>", then keeps the parasite busy with requests until it is killed.
import { injectSync } from '@criu-ts/compel';

const pid = Number(process.argv[2]);
const victim = injectSync(pid);
const parasite = victim.infectSync();
process.stdout.write(`infected ${parasite.base.toString(16)} selfcure=${parasite.selfCureUnmaps}\n`);
const deadline = Date.now() + 30_000;
while (Date.now() < deadline) {
  parasite.dumpSigactions();
  parasite.ping();
}
victim.cureSync();
