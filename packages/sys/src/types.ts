// Branded primitive types: a pid is not a file descriptor, and an address in another process is
// not a number of ours. The brands cost nothing at run time and stop mix-ups at compile time.

declare const pidBrand: unique symbol;
declare const fdBrand: unique symbol;
declare const remoteAddressBrand: unique symbol;

/** A process or thread id (a TID is a Pid too: the kernel uses one number space). */
export type Pid = number & { readonly [pidBrand]: true };
/** A file descriptor number, valid in the process named by its context. */
export type Fd = number & { readonly [fdBrand]: true };
/** An address in another process's address space. bigint: user addresses reach 2^47 and beyond 2^53 with LA57. */
export type RemoteAddress = bigint & { readonly [remoteAddressBrand]: true };

export function asPid(value: number): Pid {
  if (!Number.isInteger(value) || value <= 0) throw new RangeError(`not a pid: ${value}`);
  return value as Pid;
}

export function asFd(value: number): Fd {
  if (!Number.isInteger(value) || value < 0) throw new RangeError(`not a file descriptor: ${value}`);
  return value as Fd;
}

export function asRemoteAddress(value: bigint | number): RemoteAddress {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new RangeError(`not an address: ${value}`);
  return v as RemoteAddress;
}
