// criu-ts: the command line. Subcommands follow criu's and crit's names and options.
import { ImageFormatError } from '@criu-ts/images';
import { processIo, UsageError, type CommandIo } from './commands/command-io.js';
import { IMAGE_TOOL_COMMANDS, runImageTool } from './commands/image-tool.js';

const VERSION = '0.1.0';

const USAGE = `usage: criu-ts COMMAND [options]

Checkpoint/restore (as criu):
  dump      checkpoint a process into an images directory (-t PID -D DIR)
  restore   restore a process from an images directory (-D DIR)
  check     check that this machine has what criu-ts needs
  demo      checkpoint and restore a counting program, start to end
  cleanup   list or remove network locks left by dumps (--list, -D DIR, --all)

Image commands (as crit):
  decode    convert an image from binary to JSON
  encode    convert an image from JSON to binary
  show      show an image as pretty JSON
  info      show an image's kind and entry count
  x         explore an image directory (ps, fds, mems, rss)

Run 'criu-ts COMMAND --help' for a command's options.
`;

/** Runs one command line; returns the exit status. Errors are reported on `io`, never thrown. */
export async function run(argv: string[], io: CommandIo = processIo): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === '-h' || command === '--help') {
      io.print(USAGE);
      return command === undefined ? 1 : 0;
    }
    if (command === '--version' || command === '-V') {
      io.print(`Version: ${VERSION}`);
      return 0;
    }
    if (IMAGE_TOOL_COMMANDS.includes(command)) return runImageTool(command, rest, io);
    // Loaded on demand: these pull in ptrace and koffi, which the image commands never need and
    // whose loading would land on every `criu-ts decode`.
    if (command === 'dump') return await (await import('./commands/checkpoint.js')).runDump(rest, io);
    if (command === 'restore') return await (await import('./commands/checkpoint.js')).runRestore(rest, io);
    if (command === 'check') return (await import('./commands/check.js')).runCheck(rest, io);
    if (command === 'demo') return (await import('./commands/demo.js')).runDemo(rest, io);
    if (command === 'cleanup') return await (await import('./commands/cleanup.js')).runCleanup(rest, io);
    throw new UsageError(`unknown command '${command}'`, USAGE);
  } catch (error) {
    return report(error, io);
  }
}

function report(error: unknown, io: CommandIo): number {
  if (error instanceof UsageError) {
    if (error.usage) io.error(error.usage.trimEnd());
    io.error(`criu-ts: error: ${error.message}`);
    return 2;
  }
  // Domain errors (images, dump, restore) carry their evidence in the message; no stack needed.
  if (error instanceof ImageFormatError || (error instanceof Error && (error.name === 'DumpError' || error.name === 'RestoreError'))) {
    io.error(`Error: ${error.message}`);
    return 1;
  }
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR' || code === 'ENOTDIR') {
    io.error(`Error: ${(error as Error).message}`);
    return 1;
  }
  io.error(`Error: ${(error as Error).stack ?? String(error)}`);
  return 1;
}
