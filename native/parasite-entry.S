/*
 * Entry points of the parasite blob, at fixed offsets from its start (the linker script puts
 * .head.text first). The injector sets RSP to the top of one of the blob's stacks (16-byte
 * aligned) and RIP to an entry.
 */
	.section .head.text, "ax"
	.globl parasite_entry_daemon
	/* offset 0: rdi = struct parasite_ctl *. The daemon never returns: the injector takes the
	 * thread back with PTRACE_INTERRUPT, or the daemon cures itself (parasite.c). */
parasite_entry_daemon:
	call	parasite_daemon
	ud2
	.balign 16
	/* offset 16: call any function, then wait to be taken back.
	 *   rdi = fn, rsi, rdx, rcx, r8, r9 = its first 5 arguments
	 *   r12 = struct parasite_ctl *, r13 = the thread's return chain (on its own stack, below
	 *   the red zone: see ReturnChain in injection.ts), r14 = "syscall; ret" in the task's own
	 *   code, r15 = the control socket (callee-saved: fn keeps them)
	 * The result goes to ctl->call_ret, then ctl->call_done = 1, which the injector polls; the
	 * thread meanwhile blocks in read(sock) run from the task's own "syscall; ret" with RSP on
	 * the chain, and the injector takes it back with PTRACE_INTERRUPT. If the injector dies
	 * instead, the read sees EOF and the ret walks the chain into rt_sigreturn: the thread is
	 * back as it was, and no code of the blob (which the daemon unmaps as it cures itself) is
	 * left to run. No int3: a trap with no tracer left would kill the task.
	 * r14 = 0 (the task has no such gadget): int3, for an injector that waits for the trap. */
	.globl parasite_entry_call
parasite_entry_call:
	mov	%rdi, %rax
	mov	%rsi, %rdi
	mov	%rdx, %rsi
	mov	%rcx, %rdx
	mov	%r8, %rcx
	mov	%r9, %r8
	call	*%rax
	test	%r14, %r14
	jz	1f
	mov	%rax, 104(%r12)		/* ctl->call_ret */
	mov	%r15, %rdi
	lea	120(%r12), %rsi		/* &ctl->call_byte */
	mov	$1, %edx
	xor	%eax, %eax		/* __NR_read */
	mov	%r13, %rsp
	movq	$1, 112(%r12)		/* ctl->call_done */
	jmp	*%r14
1:	int3
	.balign 16
	/* a lone int3, the return address pushed for calls into user blobs */
	.globl parasite_int3
parasite_int3:
	int3
	.balign 16

	.text
	/* parasite_jump_chain(chain_sp, blob_addr, blob_len, gadget): munmap the blob through the
	 * task's own "syscall; ret" code, whose ret walks the chain on the task's stack into
	 * rt_sigreturn (see parasite.c). Never returns. */
	.globl parasite_jump_chain
parasite_jump_chain:
	mov	%rdi, %rsp
	mov	%rsi, %rdi
	mov	%rdx, %rsi
	mov	$11, %eax	/* __NR_munmap */
	jmp	*%rcx

	/* parasite_sigreturn(frame): rt_sigreturn from a frame at `frame` (its pretcode slot). */
	.globl parasite_sigreturn
parasite_sigreturn:
	lea	8(%rdi), %rsp
	mov	$15, %eax	/* __NR_rt_sigreturn */
	syscall
	ud2
