// Domain errors of dump and restore: each names the stage it happened in and keeps the cause.

export type DumpStage =
  | 'check-options'
  | 'prepare-dir'
  | 'freeze'
  | 'network-lock'
  | 'collect'
  | 'infect'
  | 'memory'
  | 'files'
  | 'write-images'
  | 'finish';

export class DumpError extends Error {
  constructor(
    readonly stage: DumpStage,
    readonly pid: number,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(`dump of ${pid} failed at ${stage}: ${message}`, options);
    this.name = 'DumpError';
  }
}
