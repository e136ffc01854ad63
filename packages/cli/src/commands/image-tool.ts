// crit's subcommands: decode, encode, show, info, x. Same options, same output, so scripts
// written for crit work with `criu-ts` in its place.
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import {
  EXPLORE_VIEWS, ImageFormatError, ImageReader, explore, imageFromCritJson, imageToCritJsonText, parseJsonExact, pyJsonStringify,
  type ExploreView,
} from '@criu-ts/images';
import { UsageError, type CommandIo } from './command-io.js';

const HELP: Record<string, string> = {
  decode: `usage: criu-ts decode [-h] [--pretty] [-i IN] [-o OUT]

Convert a CRIU image from binary to JSON (what crit decode prints).

options:
  -h, --help       show this help and exit
  --pretty         multi-line, with some numbers in field-specific format (hex, flags, devices, addresses)
  -i, --in IN      image to decode (standard input by default)
  -o, --out OUT    where to write the JSON (standard output by default)
`,
  encode: `usage: criu-ts encode [-h] [-i IN] [-o OUT]

Convert a CRIU image from JSON (as decode prints it) back to binary.

options:
  -h, --help       show this help and exit
  -i, --in IN      JSON to encode (standard input by default)
  -o, --out OUT    where to write the image (standard output by default)
`,
  show: `usage: criu-ts show [-h] [--nopl] IN

Show a CRIU image as pretty JSON.

positional arguments:
  IN               image file

options:
  -h, --help       show this help and exit
  --nopl           do not show entry payloads, only their size
`,
  info: `usage: criu-ts info [-h] IN

Show the kind of an image and how many entries it holds.

positional arguments:
  IN               image file
`,
  x: `usage: criu-ts x [-h] DIR {ps,fds,mems,rss}

Explore an image directory.

positional arguments:
  DIR              directory with the images of one dump
  {ps,fds,mems,rss}
                   ps: the process tree; fds: open files; mems: memory mappings;
                   rss: dumped pages against the mappings
`,
};

export const IMAGE_TOOL_COMMANDS = Object.keys(HELP);

function readInput(io: CommandIo, path: string | undefined): { bytes: Uint8Array; name: string } {
  if (path === undefined) return { bytes: io.readStdin(), name: '<stdin>' };
  return { bytes: readFileSync(path), name: path };
}

function openImage(bytes: Uint8Array, name: string): ImageReader {
  return ImageReader.fromBytes(bytes, name);
}

interface TextOut {
  write(text: string): void;
  close(): void;
}

const OUTPUT_CHUNK = 1 << 20;

/** Collects text and hands it on in ~1 MiB pieces: one write per piece, not per entry. */
function buffered(flush: (text: string) => void, done: () => void = () => {}): TextOut {
  let pending = '';
  return {
    write(text) {
      pending += text;
      if (pending.length >= OUTPUT_CHUNK) {
        flush(pending);
        pending = '';
      }
    },
    close() {
      if (pending) flush(pending);
      pending = '';
      done();
    },
  };
}

function bufferedFile(path: string): TextOut {
  const fd = openSync(path, 'w');
  return buffered(
    (text) => {
      const bytes = Buffer.from(text);
      for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done);
    },
    () => closeSync(fd),
  );
}

function bufferedStdout(io: CommandIo): TextOut {
  return buffered((text) => io.write(text));
}

export function runImageTool(command: string, argv: string[], io: CommandIo): number {
  const help = HELP[command]!;
  type Parsed = { values: Record<string, string | boolean | undefined>; positionals: string[] };
  const parse = (options: NonNullable<ParseArgsConfig['options']>, positionals: number): Parsed | undefined => {
    let parsed: Parsed;
    try {
      parsed = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: positionals > 0, strict: true }) as Parsed;
    } catch (error) {
      throw new UsageError(`${command}: ${(error as Error).message}`, help);
    }
    if (parsed.values.help) return undefined;
    if (parsed.positionals.length !== positionals) {
      throw new UsageError(`${command}: expected ${positionals} argument(s), got ${parsed.positionals.length}`, help);
    }
    return parsed;
  };

  switch (command) {
    case 'decode':
    case 'show': {
      const parsed =
        command === 'decode'
          ? parse({ pretty: { type: 'boolean' }, in: { type: 'string', short: 'i' }, out: { type: 'string', short: 'o' } }, 0)
          : parse({ nopl: { type: 'boolean' } }, 1);
      if (!parsed) return io.print(help), 0;
      const values = parsed.values as { pretty?: boolean; in?: string; out?: string; nopl?: boolean };
      const input = readInput(io, command === 'show' ? parsed.positionals[0] : values.in);
      const reader = openImage(input.bytes, input.name);
      const pretty = command === 'show' || values.pretty === true;
      const out = values.out !== undefined ? bufferedFile(values.out) : bufferedStdout(io);
      try {
        for (const piece of imageToCritJsonText(reader, { pretty, noPayload: values.nopl === true })) out.write(piece);
        // crit ends the JSON with a newline on standard output only.
        if (values.out === undefined) out.write('\n');
      } finally {
        out.close();
      }
      return 0;
    }
    case 'encode': {
      const parsed = parse({ in: { type: 'string', short: 'i' }, out: { type: 'string', short: 'o' } }, 0);
      if (!parsed) return io.print(help), 0;
      const values = parsed.values as { in?: string; out?: string };
      const input = readInput(io, values.in);
      let json: unknown;
      try {
        json = parseJsonExact(Buffer.from(input.bytes).toString('utf8'));
      } catch (error) {
        throw new ImageFormatError({ file: input.name, reason: 'bad-json', detail: `cannot read JSON (encode expects what decode prints): ${(error as Error).message}` });
      }
      const bytes = imageFromCritJson(json, input.name, values.out);
      if (values.out !== undefined) writeFileSync(values.out, bytes, { mode: 0o600 });
      else io.writeBytes(bytes);
      return 0;
    }
    case 'info': {
      const parsed = parse({}, 1);
      if (!parsed) return io.print(help), 0;
      const input = readInput(io, parsed.positionals[0]);
      const reader = openImage(input.bytes, input.name);
      io.write(pyJsonStringify({ magic: reader.kind.name, count: reader.countEntries() }, 4) + '\n');
      return 0;
    }
    case 'x': {
      const parsed = parse({}, 2);
      if (!parsed) return io.print(help), 0;
      const [dir, view] = parsed.positionals as [string, string];
      if (!(EXPLORE_VIEWS as readonly string[]).includes(view)) {
        throw new UsageError(`x: invalid choice: '${view}' (choose from ${EXPLORE_VIEWS.map((v) => `'${v}'`).join(', ')})`, help);
      }
      for (const line of explore(dir, view as ExploreView)) io.write(line + '\n');
      return 0;
    }
    default:
      throw new UsageError(`unknown command ${command}`, '');
  }
}
