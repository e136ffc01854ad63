// criu's command-line options, spelled as criu spells them: long (`--images-dir DIR`,
// `--images-dir=DIR`), short (`-D DIR`, `-DDIR`), bundled flags (`-Rj`), and the verbosity forms
// `-v`, `-vv`, `-v4`, `--verbosity=4`. An option criu has but criu-ts does not support yet is an
// error naming it; an option criu does not have is an error too. Nothing is ignored silently.
import { UsageError } from './command-io.js';

export interface OptionSpec {
  readonly long: string;
  readonly short?: string;
  /** 'flag': no value; 'value': a required value; 'optional': `--opt=value` only (as getopt's optional_argument). */
  readonly kind: 'flag' | 'value' | 'optional';
  readonly help: string;
  /** Set when criu has the option but criu-ts cannot honour it yet: using it is an error saying so. */
  readonly unsupported?: string;
}

export const CRIU_OPTIONS: readonly OptionSpec[] = [
  { long: 'tree', short: 't', kind: 'value', help: 'PID of the task to dump' },
  { long: 'images-dir', short: 'D', kind: 'value', help: 'directory of the images (default: current directory)' },
  { long: 'work-dir', short: 'W', kind: 'value', help: 'directory for logs and the pidfile (default: the images directory)' },
  { long: 'log-file', short: 'o', kind: 'value', help: 'log file, relative to the work directory' },
  { long: 'verbosity', short: 'v', kind: 'optional', help: 'log level 0-4 (-v, -vv, -v4, --verbosity=4); default 2' },
  { long: 'leave-running', short: 'R', kind: 'flag', help: 'dump: leave the task running' },
  { long: 'leave-stopped', short: 's', kind: 'flag', help: 'dump: leave the task stopped' },
  { long: 'shell-job', short: 'j', kind: 'flag', help: 'the task belongs to a shell job: its session and group leaders are outside' },
  { long: 'restore-detached', short: 'd', kind: 'flag', help: 'restore: return once the task runs instead of waiting for it' },
  { long: 'pidfile', kind: 'value', help: 'restore: write the restored PID to this file' },
  { long: 'timeout', kind: 'value', help: 'seconds allowed for freezing and for each step (default 10)' },
  { long: 'no-default-config', kind: 'flag', help: 'do not read configuration files (criu-ts reads none)' },
  { long: 'status-fd', kind: 'value', help: 'restore: write a zero byte to this fd once the task runs, then close it' },
  { long: 'ghost-limit', kind: 'value', help: 'largest deleted-while-open file kept in the images (default 1M)' },
  { long: 'tcp-established', kind: 'flag', help: 'dump/restore established TCP connections (locked from the dump until the restore)' },
  { long: 'tcp-close', kind: 'flag', help: 'dump established TCP connections without their state; restore them closed' },
  { long: 'skip-in-flight', kind: 'flag', help: 'dump: leave behind connections not accepted yet by a listening socket' },
  { long: 'ext-unix-sk', kind: 'flag', help: 'allow datagram unix sockets connected to a named socket outside the tree (connected again by name)' },
  { long: 'file-locks', short: 'l', kind: 'flag', help: 'dump file locks (flock, POSIX, OFD) and leases' },
  { long: 'link-remap', kind: 'flag', help: 'dump: give files unlinked while open a hard link (link_remap.N) to be restored through, instead of copying them' },
  { long: 'manage-cgroups', kind: 'optional', help: 'cgroup handling (criu-ts: none only)' },
  { long: 'track-mem', kind: 'flag', help: 'track memory for incremental dumps', unsupported: 'incremental dumps are not implemented yet' },
  { long: 'prev-images-dir', kind: 'value', help: 'images of a previous dump, for incremental dumps', unsupported: 'incremental dumps are not implemented yet' },
  { long: 'join-ns', short: 'J', kind: 'value', help: 'restore: net:PATH or net:PID, the network namespace to restore in (a file such as /run/netns/NAME, or that of a process)' },
  { long: 'help', short: 'h', kind: 'flag', help: 'show this help' },
];

export interface ParsedCriuOptions {
  readonly values: Map<string, string | true>;
  /** -v occurrences and -vN/--verbosity=N folded into one level. */
  readonly verbosity: number;
  readonly positionals: string[];
}

const DEFAULT_VERBOSITY = 2;

export function parseCriuOptions(command: string, argv: readonly string[], usage: string): ParsedCriuOptions {
  const values = new Map<string, string | true>();
  const positionals: string[] = [];
  let verbosity = DEFAULT_VERBOSITY;
  let verbositySeen = false;
  const byLong = new Map(CRIU_OPTIONS.map((o) => [o.long, o]));
  const byShort = new Map(CRIU_OPTIONS.filter((o) => o.short).map((o) => [o.short!, o]));
  const bad = (message: string): never => {
    throw new UsageError(`${command}: ${message}`, usage);
  };
  const set = (spec: OptionSpec, value: string | true, spelled: string) => {
    if (spec.unsupported) bad(`option ${spelled} is not supported yet: ${spec.unsupported}`);
    if (spec.long === 'verbosity') {
      if (value === true) verbosity = verbositySeen ? verbosity + 1 : DEFAULT_VERBOSITY + 1;
      else {
        if (!/^\d+$/.test(value)) bad(`option ${spelled} takes a number, not ${JSON.stringify(value)}`);
        verbosity = Number(value);
      }
      verbositySeen = true;
      return;
    }
    values.set(spec.long, value);
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
      const spec = byLong.get(name);
      if (!spec) bad(`unknown option --${name}`);
      if (spec!.kind === 'flag') {
        if (eq >= 0) bad(`option --${name} takes no value`);
        set(spec!, true, `--${name}`);
      } else if (eq >= 0) set(spec!, arg.slice(eq + 1), `--${name}`);
      else if (spec!.kind === 'optional') set(spec!, true, `--${name}`);
      else {
        if (i + 1 >= argv.length) bad(`option --${name} needs a value`);
        set(spec!, argv[++i]!, `--${name}`);
      }
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      // Short options, possibly bundled: -Rj, -DDIR, -v4, -vvv.
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        const spec = byShort.get(letter);
        if (!spec) bad(`unknown option -${letter}`);
        if (spec!.kind === 'flag') {
          set(spec!, true, `-${letter}`);
          continue;
        }
        const rest = arg.slice(j + 1);
        if (spec!.long === 'verbosity') {
          if (rest === '' || /^v+$/.test(rest)) {
            for (let k = 0; k <= rest.length; k++) set(spec!, true, '-v');
          } else set(spec!, rest, '-v');
          break;
        }
        if (rest !== '') set(spec!, rest, `-${letter}`);
        else {
          if (i + 1 >= argv.length) bad(`option -${letter} needs a value`);
          set(spec!, argv[++i]!, `-${letter}`);
        }
        break;
      }
      continue;
    }
    positionals.push(arg);
  }
  const cgroups = values.get('manage-cgroups');
  if (cgroups !== undefined && cgroups !== 'none' && cgroups !== 'ignore') {
    bad(`option --manage-cgroups=${cgroups === true ? '' : cgroups} is not supported yet: criu-ts leaves cgroups alone (use --manage-cgroups=none)`);
  }
  return { values, verbosity, positionals };
}

export function optionsHelp(names: readonly string[]): string {
  return CRIU_OPTIONS.filter((o) => names.includes(o.long))
    .map((o) => {
      const spelled = `${o.short ? `-${o.short}, ` : '    '}--${o.long}${o.kind === 'value' ? ' VALUE' : o.kind === 'optional' ? '[=VALUE]' : ''}`;
      return `  ${spelled.padEnd(30)} ${o.help}${o.unsupported ? ' (not supported yet)' : ''}`;
    })
    .join('\n');
}

/** Sizes as criu takes them: plain bytes or with a K/M/G suffix. */
export function parseSize(text: string, option: string, usage: string): number {
  const m = /^(\d+)([KkMmGg]?)$/.exec(text);
  if (!m) throw new UsageError(`option ${option} takes a size such as 1048576 or 1M, not ${JSON.stringify(text)}`, usage);
  const scale = { '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * scale;
}
