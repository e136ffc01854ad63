// Running part of criu-ts in another network namespace.
//
// Everything criu-ts does that depends on a network namespace happens on the thread that runs
// dump and restore (Node's main thread; both are synchronous): the sockets restore makes and
// hands to the task, the NETLINK_SOCK_DIAG queries of the dump, the nft/iptables runs of the
// network lock, and the restore stub, which is forked from that thread. For a network namespace
// setns(2) moves only the calling thread and is allowed in a multi-threaded process, so moving
// that one thread for the length of a dump or restore puts all of these in the right namespace,
// with no child process and no change to the code that does them:
//   - dump runs in the network namespace of the dumped task (its /proc/PID/ns/net), so that the
//     sockets it queries and the connections it locks are the task's, wherever the task lives;
//   - restore runs in the namespace it is given (`netns`, e.g. /run/netns/NAME): the restored
//     tree lives there (the stub is forked in it and clone3 keeps it), and its sockets and
//     locks are made there. This is how a service moves to another "host" that has the same
//     addresses. criu-ts restores no namespaces from the images (ids-*.img), so the namespace is
//     the caller's choice, as criu's --join-ns net:PATH.
// The thread is put back in its own namespace afterwards, also when the work fails.
import { closeSync, fstatSync, openSync } from 'node:fs';
import { CLONE_NEWNET, setns, type Fd } from '@criu-ts/sys';

/** Runs `work` with the calling thread in the network namespace of file `nsPath`; a no-op when it is already there. */
export function inNetworkNamespace<T>(nsPath: string, work: () => T): T {
  const home = openSync('/proc/thread-self/ns/net', 'r');
  let target: number | undefined;
  try {
    try {
      target = openSync(nsPath, 'r');
    } catch (error) {
      throw new Error(`cannot open the network namespace ${nsPath}: ${(error as Error).message}`, { cause: error });
    }
    const here = fstatSync(home);
    const there = fstatSync(target);
    if (here.dev === there.dev && here.ino === there.ino) return work();
    try {
      setns(target as Fd, CLONE_NEWNET);
    } catch (error) {
      throw new Error(`cannot enter the network namespace ${nsPath}: ${(error as Error).message}`, { cause: error });
    }
    try {
      return work();
    } finally {
      // Failing here would leave criu-ts's main thread in a foreign namespace: nothing sane can follow.
      setns(home as Fd, CLONE_NEWNET);
    }
  } finally {
    if (target !== undefined) closeSync(target);
    closeSync(home);
  }
}
