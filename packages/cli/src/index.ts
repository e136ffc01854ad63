// @criu-ts/cli: the criu-ts command, also callable in-process.
export { run } from './main.js';
export type { CommandIo } from './commands/command-io.js';
export { UsageError } from './commands/command-io.js';
