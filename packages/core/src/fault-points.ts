// Named fault points compiled into the normal code paths, for tests and for `criu-ts check
// --faults`. A fault fires when the caller passes `faultAt: POINT` or the environment has
// CRIU_TS_FAULT=dump:POINT; the stage then fails as a real error there would.
export const DUMP_FAULT_POINTS = ['after-freeze', 'after-parasite', 'in-pages', 'before-inventory', 'after-images'] as const;
export type DumpFaultPoint = (typeof DUMP_FAULT_POINTS)[number];
