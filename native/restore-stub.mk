# The restore stub (native/restore-stub.c): a static program without libc that stops itself
# and is driven by criu-ts restore. Included from native/Makefile; builds build/restore-stub.
STUB_CFLAGS := -O2 -static -nostdlib -ffreestanding -fno-builtin -fno-stack-protector -fno-pie -no-pie \
  -fno-asynchronous-unwind-tables -fcf-protection=none -mgeneral-regs-only -Wall -Wextra \
  -Wl,--build-id=none -Wl,-z,noexecstack

all: build/restore-stub

build/restore-stub: restore-stub.c raw-syscall.h restore-stub.mk | build
	$(CC) $(STUB_CFLAGS) -o $@ restore-stub.c

# cpu-xstate (native/cpu-xstate.c): prints the CPU's XSAVE layout for compel and restore.
all: build/cpu-xstate

build/cpu-xstate: cpu-xstate.c raw-syscall.h restore-stub.mk | build
	$(CC) $(STUB_CFLAGS) -o $@ cpu-xstate.c

# dump-guard (native/dump-guard.c): releases a killed dump's network state (core's network-guard.ts).
all: build/dump-guard

build/dump-guard: dump-guard.c raw-syscall.h restore-stub.mk | build
	$(CC) $(STUB_CFLAGS) -o $@ dump-guard.c
