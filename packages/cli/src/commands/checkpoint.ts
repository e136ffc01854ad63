// `criu-ts dump` and `criu-ts restore`, with criu's options, exit codes and Error log lines.
import { closeSync, existsSync, mkdirSync, writeSync } from 'node:fs';
import { resolve } from 'node:path';
// @criu-ts/core is imported when a command runs, not with this module: loading it (koffi, ptrace)
// takes ~25 ms, during which a dump's pages prefill is already being written (see runDump).
import { PagesPrefill } from '@criu-ts/core/prefill';
import { UsageError, type CommandIo } from './command-io.js';
import { parseCriuOptions, parseSize, optionsHelp, type ParsedCriuOptions } from './criu-options.js';
import { Log } from './log.js';
import { ProgressBar } from './progress.js';

const COMMON = ['images-dir', 'work-dir', 'log-file', 'verbosity', 'shell-job', 'timeout', 'no-default-config', 'manage-cgroups', 'help'];

const DUMP_HELP = `usage: criu-ts dump -t PID [-D DIR] [options]

Checkpoint the process PID into CRIU images in DIR. By default the process is killed once the
images are complete (as criu does); -R leaves it running, -s leaves it stopped.

options:
${optionsHelp(['tree', ...COMMON, 'leave-running', 'leave-stopped', 'ghost-limit', 'tcp-established', 'tcp-close', 'skip-in-flight', 'ext-unix-sk', 'file-locks', 'link-remap', 'track-mem', 'prev-images-dir'])}
`;

const RESTORE_HELP = `usage: criu-ts restore [-D DIR] [options]

Restore the process saved in DIR with its PID. Without -d, criu-ts waits for the restored
process and exits with its status; with -d it returns once the process runs.

options:
${optionsHelp([...COMMON, 'restore-detached', 'pidfile', 'status-fd', 'tcp-established', 'tcp-close', 'ext-unix-sk', 'file-locks', 'link-remap', 'join-ns'])}
`;

function value(parsed: ParsedCriuOptions, name: string): string | undefined {
  const v = parsed.values.get(name);
  return v === true ? undefined : v;
}

function common(parsed: ParsedCriuOptions, io: CommandIo): { imagesDir: string; log: Log; timeoutMs: number | undefined } {
  const imagesDir = resolve(value(parsed, 'images-dir') ?? '.');
  const workDir = resolve(value(parsed, 'work-dir') ?? imagesDir);
  // The log goes into the work directory, so it must exist before the dump makes the images
  // directory: create it (only its last component, 0700) as the dump would.
  if (!existsSync(workDir)) mkdirSync(workDir, { mode: 0o700 });
  const timeout = value(parsed, 'timeout');
  if (timeout !== undefined && !/^\d+$/.test(timeout)) throw new UsageError(`--timeout takes seconds, not ${JSON.stringify(timeout)}`, '');
  return { imagesDir, log: new Log(io, parsed.verbosity, value(parsed, 'log-file'), workDir), timeoutMs: timeout === undefined ? undefined : Number(timeout) * 1000 };
}

export async function runDump(argv: string[], io: CommandIo): Promise<number> {
  const parsed = parseCriuOptions('dump', argv, DUMP_HELP);
  if (parsed.values.has('help')) return io.print(DUMP_HELP), 0;
  if (parsed.positionals.length > 0) throw new UsageError(`dump: unexpected argument ${parsed.positionals[0]}`, DUMP_HELP);
  const tree = value(parsed, 'tree');
  if (tree === undefined || !/^\d+$/.test(tree)) throw new UsageError('dump: -t/--tree PID is required', DUMP_HELP);
  if (parsed.values.has('leave-running') && parsed.values.has('leave-stopped')) throw new UsageError('dump: -R and -s exclude each other', DUMP_HELP);
  const ghost = value(parsed, 'ghost-limit');
  const { imagesDir, log, timeoutMs } = common(parsed, io);
  // The pages files' zeros (dump/pages-prefill.ts) are written on the thread pool while the
  // checkpoint side loads, instead of after it. An images directory that does not exist yet
  // (another -W) is left to the dump, which makes it and then prefills by itself.
  const prefill = existsSync(imagesDir) ? PagesPrefill.start(imagesDir, Number(tree)) : undefined;
  const progress = new ProgressBar(io, 'dump');
  let core: typeof import('@criu-ts/core') | undefined;
  try {
    core = await import('@criu-ts/core');
    log.info(`Dumping process ${tree} into ${imagesDir}`);
    const result = await core.dump({ // which waits for the prefill first
      ...(prefill ? { prefill } : {}),
      onStage: (stage) => log.debug(`stage ${stage}`),
      onProgress: ({ pagesWritten, pagesTotal }) => progress.update(pagesWritten, pagesTotal, 4096),
      pid: Number(tree),
      imagesDir,
      leave: parsed.values.has('leave-running') ? 'running' : parsed.values.has('leave-stopped') ? 'stopped' : 'kill',
      shellJob: parsed.values.has('shell-job'),
      fileLocks: parsed.values.has('file-locks'),
      linkRemap: parsed.values.has('link-remap'),
      extUnixSk: parsed.values.has('ext-unix-sk'),
      tcpEstablished: parsed.values.has('tcp-established'),
      tcpClose: parsed.values.has('tcp-close'),
      skipInFlight: parsed.values.has('skip-in-flight'),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(ghost !== undefined ? { ghostLimit: parseSize(ghost, '--ghost-limit', DUMP_HELP) } : {}),
    });
    progress.finish();
    log.info(`Dumped ${result.pagesWritten} pages; freezing took ${(result.freezingTime / 1000).toFixed(1)} ms, then frozen for ${(result.frozenTime / 1000).toFixed(1)} ms`);
    log.info('Dumping finished successfully');
    if (io.isTty?.()) io.error(`criu-ts: dumped ${tree}: ${result.images.length} images, ${(result.pagesWritten * 4096 / 1048576).toFixed(1)} MiB of pages, frozen ${((result.freezingTime + result.frozenTime) / 1000).toFixed(1)} ms (freezing included)`);
    return 0;
  } catch (error) {
    progress.finish();
    log.error(core && error instanceof core.DumpError ? error.message : `dump failed: ${(error as Error).message}`);
    log.error('Dumping FAILED.');
    return 1;
  } finally {
    prefill?.closeAll(); // the dump closed what it did not take; this is for a failure before it
    log.close();
  }
}

export async function runRestore(argv: string[], io: CommandIo): Promise<number> {
  const parsed = parseCriuOptions('restore', argv, RESTORE_HELP);
  if (parsed.values.has('help')) return io.print(RESTORE_HELP), 0;
  if (parsed.positionals.length > 0) throw new UsageError(`restore: unexpected argument ${parsed.positionals[0]}`, RESTORE_HELP);
  const statusFd = value(parsed, 'status-fd');
  if (statusFd !== undefined && !/^\d+$/.test(statusFd)) throw new UsageError('restore: --status-fd takes a file descriptor number', RESTORE_HELP);
  const { imagesDir, log, timeoutMs } = common(parsed, io);
  const pidfile = value(parsed, 'pidfile');
  const netns = joinedNetworkNamespace(value(parsed, 'join-ns'));
  const progress = new ProgressBar(io, 'restore');
  let core: typeof import('@criu-ts/core') | undefined;
  try {
    core = await import('@criu-ts/core');
    log.info(`Restoring from ${imagesDir}`);
    const result = await core.restore({
      imagesDir,
      onProgress: ({ bytesRead, bytesTotal }) => progress.update(bytesRead, bytesTotal, 1),
      detached: parsed.values.has('restore-detached'),
      shellJob: parsed.values.has('shell-job'),
      tcpEstablished: parsed.values.has('tcp-established'),
      tcpClose: parsed.values.has('tcp-close'),
      ...(netns !== undefined ? { netns } : {}),
      ...(pidfile !== undefined ? { pidfile: resolve(value(parsed, 'work-dir') ?? imagesDir, pidfile) } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      onRunning: (pid) => {
        progress.finish();
        log.info(`Restored process ${pid} runs`);
        if (statusFd !== undefined) {
          // criu's --status-fd: one zero byte once the restored tree runs, then the fd is closed.
          writeSync(Number(statusFd), Buffer.from([0]));
          closeSync(Number(statusFd));
        }
      },
    });
    for (const warning of result.warnings) log.warn(warning);
    log.info('Restore finished successfully');
    if (result.detached || !result.exit) return 0;
    // Not detached: exit as the restored process did (128 + signal for a kill, as shells do).
    return result.exit.code ?? 128 + (result.exit.signal ?? 0);
  } catch (error) {
    progress.finish();
    log.error(core && error instanceof core.RestoreError ? error.message : `restore failed: ${(error as Error).message}`);
    log.error('Restoring FAILED.');
    return 1;
  } finally {
    log.close();
  }
}

/**
 * criu's --join-ns NS:{PID|FILE}[,OPTIONS], for the one namespace criu-ts restores into: the
 * network namespace (restore's `netns`). Other namespaces and extra options are refused by name.
 */
export function joinedNetworkNamespace(spec: string | undefined): string | undefined {
  if (spec === undefined) return undefined;
  const m = /^([a-z]+):([^,]+)(,.*)?$/.exec(spec);
  if (!m) throw new UsageError(`restore: --join-ns takes NS:PID or NS:FILE, not ${JSON.stringify(spec)}`, RESTORE_HELP);
  if (m[1] !== 'net') throw new UsageError(`restore: --join-ns ${m[1]}: is not supported yet: criu-ts joins network namespaces only (net:PATH or net:PID)`, RESTORE_HELP);
  if (m[3] !== undefined) throw new UsageError(`restore: --join-ns net: takes no extra options (${m[3].slice(1)})`, RESTORE_HELP);
  return /^\d+$/.test(m[2]!) ? `/proc/${m[2]}/ns/net` : resolve(m[2]!);
}
