// @criu-ts/core: dump and restore orchestration, as library calls.
export { dump, dumpSync } from './dump/dump.js';
export type { DumpOptions, DumpResult } from './dump/dump.js';
// Also at '@criu-ts/core/prefill', which loads no native code (for callers that start it early).
export { PagesPrefill } from './dump/pages-prefill.js';
export { DumpError } from './errors.js';
export type { DumpStage } from './errors.js';
export { fpregsFromXsave, xsaveFromFpregs, xsaveOffsetsFromCpuid, INTEL_XSAVE_OFFSETS, type XsaveOffsets } from './arch/x86-fpu.js';
export { restore, restoreSync, RestoreError, type RestoreOptions, type RestoreResult, type RestoreStage } from './restore/index.js';
export { DUMP_FAULT_POINTS, RESTORE_FAULT_POINTS, type DumpFaultPoint, type RestoreFaultPoint } from './fault-points.js';
export { stubPath as restoreStubPath } from './restore/stub.js';
export { dumpRunId, listNetworkLocks, releaseConnectionsOf, releaseNetworkLocks, type ConnectionKey, type ListedLock } from './network-locks.js';
export { inNetworkNamespace } from './net-namespace.js';
export { probePacketRingPosition } from './packet-rings/kernel-state.js';
