/*
 * Entry points of the parasite blob, at fixed offsets from its start (the linker script puts
 * .head.text first). The injector sets RSP to the top of the blob's stack (16-byte aligned) and
 * RIP to an entry; each entry calls into C and then executes int3, whose SIGTRAP stop tells the
 * tracer the call is over (the return value is in RAX).
 */
	.section .head.text, "ax"
	.globl parasite_entry_daemon
	/* offset 0: rdi = struct parasite_ctl * */
parasite_entry_daemon:
	call	parasite_daemon
	int3
	.balign 16
	/* offset 16: call any function: rdi = fn, rsi..r9 = its first 5 arguments */
	.globl parasite_entry_call
parasite_entry_call:
	mov	%rdi, %rax
	mov	%rsi, %rdi
	mov	%rdx, %rsi
	mov	%rcx, %rdx
	mov	%r8, %rcx
	mov	%r9, %r8
	call	*%rax
	int3
	.balign 16
	/* offset 48: a lone int3, the return address pushed for calls into user blobs */
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
