export * from './errors.js';
export * from './tcp-state.js';
export * from './repair.js';
export { buildSegment, sendCraftedSegment, LOCK_BYPASS_MARK, TH_FIN, TH_ACK, TH_RST, TH_SYN, TH_PSH, type SegmentSpec } from './raw-segment.js';
export * from './network-lock.js';
export * from './blob.js';
export * from './net-socket.js';
export * from './handoff.js';
export * from './image-form.js';
