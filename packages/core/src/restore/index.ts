// Restore of a process from CRIU 4.x images (see restore.ts for the stages).
export { restore, restoreSync, waitForExit, type RestoreOptions, type RestoreResult } from './restore.js';
export { RestoreError, type RestoreStage } from './errors.js';
export { readImageSet, checkPidFree, VMA, type ImageSet, type VmaImage, type FdImage, type RegFile, type PagesRun } from './image-set.js';
export { Stub, stubPath, type StubOptions } from './stub.js';
export { RestoreTask, findControlAreaHole, CONTROL_SIZE } from './remote-task.js';
export { dumpedRegs } from './task-state.js';
