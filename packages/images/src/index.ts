// @criu-ts/images: CRIU's image format, byte-compatible, with crit-compatible JSON.
export { ImageFormatError } from './errors.js';
export type { ImageFormatEvidence, ImageFormatReason } from './errors.js';
export {
  IMAGE_KINDS, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, entryMessageName, kindForFileName, kindForName, kindsForMagic,
} from './image-kinds.js';
export type { EntryLayout, ImageKind, PayloadRule } from './image-kinds.js';
export { ImageReader } from './io/reader.js';
export type { ImageEntry, OpenOptions } from './io/reader.js';
export { ImageWriter } from './io/writer.js';
export type { CreateOptions } from './io/writer.js';
export type { EntryPayload } from './io/payload.js';
export { FileSource, MemorySource } from './io/byte-source.js';
export type { ByteSource } from './io/byte-source.js';
export { imageToCritJson, imageToCritJsonText, imageFromCritJson } from './json/image-json.js';
export type { DecodeOptions } from './json/image-json.js';
export { messageToCritJson, messageZod, messageSchema, findMissingRequired } from './json/message-json.js';
export type { DecodedMessage } from './json/message-json.js';
export { parseJsonExact, pyJsonStringify, pyString } from './json/python-json.js';
export type { PyJson } from './json/python-json.js';
export { PagesReader, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT } from './pages.js';
export type { PageRun } from './pages.js';
export { explore, EXPLORE_VIEWS } from './explore.js';
export type { ExploreView } from './explore.js';
export type { FieldSchema, MessageSchema, EnumSchema, MessageCodec } from './schema-types.js';
