/*
 * probe.S — the firecracer probe guest: a tiny x86-64 "kernel" that Firecracker boots as
 * kernel_image_path.  GNU as, AT&T syntax.  Built by firecracer.vmm.probe.build at first use.
 *
 * Why it looks like this: on PVM hosts a guest must never take an interrupt or an exception
 * (PVM cannot deliver them to a non-PVM guest and kills the VM instead).  So: no IDT, no
 * interrupts, no privileged instructions except port I/O; the serial port is polled.
 *
 * Entry state (Firecracker's Linux 64-bit boot protocol, src/vmm/src/arch/x86_64/regs.rs):
 * long mode, paging on, CR3 = PML4 at 0x9000 -> PDPT at 0xa000 -> PD at 0xb000 holding 512
 * 2 MiB pages, i.e. guest-physical [0, 1 GiB) identity-mapped; RFLAGS.IF = 0.
 *
 * Behaviour:
 *   1. print "PROBE BOOT\n"
 *   2. identity-map every further GiB the fill set or trace needs (own PD tables in .bss,
 *      PDPT entries 1..NPD written into Firecracker's PDPT at 0xa000)
 *   3. fill every page of the fill ranges: each *sampled* 8-byte word = its guest-physical
 *      address ^ SEED (the other words stay zero)
 *   4. print the ready line (READY_MSG, generated with the parameters)
 *   5. loop: wait for one byte on the serial port (poll LSR 0x3fd bit 0, read 0x3f8)
 *        'q'  -> i8042 reset (out 0xfe to port 0x64): Firecracker exits cleanly
 *        'a'  -> verify every filled page, print "PROBE RESULT round=R kind=verify ..."
 *        else -> walk the trace, print "PROBE RESULT round=R kind=trace pages=P errors=E cycles=C"
 *
 * Trace entries are 64-bit words: guest-physical page address | flags in the low 12 bits.
 *   bit 0 (EXPECT_FILLED): the page holds the pattern (else it must be all zero)
 *   bit 1 (WRITE_FIRST):   first access is a store of the expected word 0 (a write fault),
 *                          contents stay unchanged so later rounds verify the same way
 * errors = number of sampled 8-byte words that did not hold the expected value.
 *
 * Sampled words: on PVM every guest instruction is emulated (0.5-1.5 us each, measured), so writing
 * all 512 words of a page costs ~2 ms.  The probe therefore writes and checks NSAMPLE words per
 * page at the byte offsets listed in samples.bin (e.g. 0 and 4088: first and last word, which
 * catches a zero page, a wrong page and a truncated copy).  NSAMPLE = 512 gives the full pattern.
 * cycles = rdtsc after the walk minus rdtsc before it.
 *
 * The parameters come from params.inc (generated): SEED, NFILL (number of fill ranges),
 * NTRACE, NPD (extra GiB to map), NSAMPLE, and the files samples.bin (NSAMPLE u64 byte offsets),
 * fill.bin (NFILL pairs of u64: first page
 * address, page count), trace.bin (NTRACE u64 entries) and ready.txt (the ready line).
 */

    .include "params.inc"

    .set COM1,     0x3f8
    .set COM1_LSR, 0x3fd
    .set PDPT,     0xa000          /* Firecracker's boot PDPT (PML4_START 0x9000 -> 0xa000) */
    .set PAGE,     4096

    .code64
    .text
    .globl _start
_start:
    lea     stack_top(%rip), %rsp
    lea     boot_msg(%rip), %rsi
    mov     $boot_len, %ecx
    call    puts

    call    map_high
    call    fill_all

    lea     ready_msg(%rip), %rsi
    mov     $ready_len, %ecx
    call    puts

    xor     %r15d, %r15d            /* r15 = round counter */
main_loop:
    call    getc
    cmp     $'q', %al
    je      reset
    inc     %r15
    cmp     $'a', %al
    je      1f
    call    run_trace
    lea     kind_trace(%rip), %rsi
    mov     $kind_trace_len, %ecx
    jmp     2f
1:  call    verify_all
    lea     kind_verify(%rip), %rsi
    mov     $kind_verify_len, %ecx
2:  call    report
    jmp     main_loop

reset:                              /* i8042 CPU reset: Firecracker stops the VM and exits */
    mov     $0xfe, %al
    out     %al, $0x64
3:  pause
    jmp     3b

/* map_high: for g in 1..NPD, point PDPT[g] at our PD g-1 whose 512 entries map 2 MiB pages of
 * [g GiB, g+1 GiB).  The new PDPT entries were not present, so no TLB flush is needed. */
map_high:
    mov     $1, %r8                 /* r8 = g */
4:  cmp     $NPD, %r8
    ja      6f
    lea     pd_tables(%rip), %rdi
    mov     %r8, %rax
    dec     %rax
    shl     $12, %rax
    add     %rax, %rdi              /* rdi = PD for GiB g */
    mov     %r8, %rax
    shl     $30, %rax
    or      $0x83, %rax             /* present | writable | 2 MiB page */
    xor     %ecx, %ecx
5:  mov     %rax, (%rdi,%rcx,8)
    add     $0x200000, %rax
    inc     %ecx
    cmp     $512, %ecx
    jb      5b
    mov     %rdi, %rax
    or      $0x3, %rax              /* present | writable */
    mov     %rax, PDPT(,%r8,8)
    inc     %r8
    jmp     4b
6:  ret

/* fill_all: write the pattern into the sampled words of every page of every fill range. */
fill_all:
    movabs  $SEED, %r10
    lea     fill_ranges(%rip), %rsi
    mov     $NFILL, %r8
7:  test    %r8, %r8
    jz      9f
    mov     (%rsi), %rdi            /* first page address */
    mov     8(%rsi), %r9            /* page count */
8:  call    store_pattern
    add     $PAGE, %rdi
    dec     %r9
    jnz     8b
    add     $16, %rsi
    dec     %r8
    jmp     7b
9:  ret

/* store_pattern: page at rdi gets addr ^ r10 in each sampled word (clobbers rax, rcx, rdx). */
store_pattern:
    xor     %ecx, %ecx
29: mov     samples(,%rcx,8), %rax
    add     %rdi, %rax
    mov     %rax, %rdx
    xor     %r10, %rdx
    mov     %rdx, (%rax)
    inc     %ecx
    cmp     $NSAMPLE, %ecx
    jb      29b
    ret

/* run_trace: walk the trace; r13 = errors, r12 = cycles, r14 = pages touched. */
run_trace:
    movabs  $SEED, %r10
    xor     %r13d, %r13d
    rdtsc
    shl     $32, %rdx
    or      %rax, %rdx
    mov     %rdx, %r12
    lea     trace(%rip), %rsi
    mov     $NTRACE, %r14
    mov     %r14, %r11
10: test    %r11, %r11
    jz      14f
    mov     (%rsi), %rbx
    mov     %rbx, %rdi
    and     $-PAGE, %rdi            /* rdi = page address, bl = flags */
    test    $2, %bl
    jz      12f
    mov     samples(%rip), %rax     /* write first: store the expected value of sample 0 */
    add     %rdi, %rax
    xor     %edx, %edx
    test    $1, %bl
    jz      11f
    mov     %rax, %rdx
    xor     %r10, %rdx
11: mov     %rdx, (%rax)
12: test    $1, %bl
    jz      13f
    call    check_pattern
    jmp     15f
13: call    check_zero
15: add     $8, %rsi
    dec     %r11
    jmp     10b
14: rdtsc
    shl     $32, %rdx
    or      %rax, %rdx
    sub     %r12, %rdx
    mov     %rdx, %r12
    ret

/* verify_all: check every filled page; same registers as run_trace. */
verify_all:
    movabs  $SEED, %r10
    xor     %r13d, %r13d
    xor     %r14d, %r14d
    rdtsc
    shl     $32, %rdx
    or      %rax, %rdx
    mov     %rdx, %r12
    lea     fill_ranges(%rip), %rsi
    mov     $NFILL, %r8
16: test    %r8, %r8
    jz      18f
    mov     (%rsi), %rdi
    mov     8(%rsi), %r9
    add     %r9, %r14
17: test    %r9, %r9
    jz      19f
    call    check_pattern
    add     $PAGE, %rdi
    dec     %r9
    jmp     17b
19: add     $16, %rsi
    dec     %r8
    jmp     16b
18: rdtsc
    shl     $32, %rdx
    or      %rax, %rdx
    sub     %r12, %rdx
    mov     %rdx, %r12
    ret

/* check_pattern: each sampled word of the page at rdi must hold addr ^ r10; adds mismatches
 * to r13 (clobbers rax, rcx, rdx). */
check_pattern:
    xor     %ecx, %ecx
20: mov     samples(,%rcx,8), %rax
    add     %rdi, %rax
    mov     %rax, %rdx
    xor     %r10, %rdx
    cmp     (%rax), %rdx
    je      21f
    inc     %r13
21: inc     %ecx
    cmp     $NSAMPLE, %ecx
    jb      20b
    ret

/* check_zero: each sampled word of the page at rdi must be zero; adds mismatches to r13. */
check_zero:
    xor     %ecx, %ecx
22: mov     samples(,%rcx,8), %rax
    cmpq    $0, (%rdi,%rax)
    je      23f
    inc     %r13
23: inc     %ecx
    cmp     $NSAMPLE, %ecx
    jb      22b
    ret

/* report: print "PROBE RESULT round=<r15> kind=<rsi,ecx> pages=<r14> errors=<r13> cycles=<r12>\n" */
report:
    push    %rsi
    push    %rcx
    lea     m_round(%rip), %rsi
    mov     $m_round_len, %ecx
    call    puts
    mov     %r15, %rax
    call    putu
    pop     %rcx
    pop     %rsi
    call    puts
    lea     m_pages(%rip), %rsi
    mov     $m_pages_len, %ecx
    call    puts
    mov     %r14, %rax
    call    putu
    lea     m_errors(%rip), %rsi
    mov     $m_errors_len, %ecx
    call    puts
    mov     %r13, %rax
    call    putu
    lea     m_cycles(%rip), %rsi
    mov     $m_cycles_len, %ecx
    call    puts
    mov     %r12, %rax
    call    putu
    mov     $'\n', %al
    call    putc
    ret

/* putu: print rax in decimal (clobbers rax, rcx, rdx, rdi, r9). */
putu:
    lea     numbuf_end(%rip), %rdi
    mov     $10, %r9
24: xor     %edx, %edx
    div     %r9
    add     $'0', %dl
    dec     %rdi
    mov     %dl, (%rdi)
    test    %rax, %rax
    jnz     24b
    mov     %rdi, %rsi
    lea     numbuf_end(%rip), %rcx
    sub     %rdi, %rcx
    /* fall through */

/* puts: print ecx bytes from rsi.  The UART accepts every byte at once (Firecracker's 16550
 * never reports a full transmitter), so THRE is not polled: each poll would be a VM exit. */
puts:
    test    %ecx, %ecx
    jz      26f
25: mov     (%rsi), %al
    call    putc
    inc     %rsi
    dec     %ecx
    jnz     25b
26: ret

putc:
    mov     $COM1, %dx
    out     %al, %dx
    ret

/* getc: busy-poll the line status register until a byte is ready, return it in al. */
getc:
    mov     $COM1_LSR, %dx
27: in      %dx, %al
    test    $1, %al
    jnz     28f
    pause
    jmp     27b
28: mov     $COM1, %dx
    in      %dx, %al
    ret

    .section .rodata
boot_msg:       .ascii "PROBE BOOT\n"
    .set boot_len, . - boot_msg
ready_msg:      .incbin "ready.txt"
    .set ready_len, . - ready_msg
m_round:        .ascii "PROBE RESULT round="
    .set m_round_len, . - m_round
kind_trace:     .ascii " kind=trace"
    .set kind_trace_len, . - kind_trace
kind_verify:    .ascii " kind=verify"
    .set kind_verify_len, . - kind_verify
m_pages:        .ascii " pages="
    .set m_pages_len, . - m_pages
m_errors:       .ascii " errors="
    .set m_errors_len, . - m_errors
m_cycles:       .ascii " cycles="
    .set m_cycles_len, . - m_cycles
    .balign 8
samples:        .incbin "samples.bin"
fill_ranges:    .incbin "fill.bin"
trace:          .incbin "trace.bin"

    .bss
    .balign 4096
pd_tables:      .skip 4096 * NPD
stack:          .skip 4096
stack_top:
numbuf:         .skip 32
numbuf_end:
