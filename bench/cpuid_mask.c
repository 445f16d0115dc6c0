/* An x86 CPU that says it has less than it has: cpuid leaves masked for one process tree.
 *
 * LD_PRELOAD'ed by bench/masked_cpu.py. Where the kernel offers CPUID faulting (the
 * "cpuid_fault" flag: Intel CPUs and KVM guests), the constructor makes every cpuid
 * instruction of this thread (and of the threads it starts: the setting is inherited)
 * trap; the SIGSEGV handler runs the real cpuid with faulting lifted for that one
 * instruction, clears the feature bits CLIPSEARCH_CPUID_MASK names, and steps over it. So
 * onnxruntime's MLAS, torch (cpuinfo, oneDNN), numpy, FAISS and libjpeg-turbo pick the
 * kernels they would pick on the masked CPU, and run them at this core's real speed (qemu
 * emulates the same instructions, but slowly: its timings mean nothing).
 *
 * CLIPSEARCH_CPUID_MASK: "avx2" (an AVX2-only x86 such as AMD EPYC Rome/Milan: no
 * AVX-512, no VNNI of any width, no AMX, no GFNI/VAES/VPCLMULQDQ).
 * CLIPSEARCH_CPUID_MASK_COUNT=1 prints how many cpuid instructions were answered at exit.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif

#define BIT(n) (1u << (n))

/* Leaf 7 subleaf 0 */
static const uint32_t L7_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) |
                               BIT(30) | BIT(31); /* AVX512 F DQ IFMA PF ER CD BW VL */
static const uint32_t L7_ECX = BIT(1) | BIT(6) | BIT(8) | BIT(9) | BIT(10) | BIT(11) |
                               BIT(12) | BIT(14); /* VBMI VBMI2 GFNI VAES VPCLMULQDQ VNNI
                                                     BITALG VPOPCNTDQ */
static const uint32_t L7_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) |
                               BIT(25); /* 4VNNIW 4FMAPS VP2INTERSECT AMX-BF16 AVX512-FP16
                                           AMX-TILE AMX-INT8 */
/* Leaf 7 subleaf 1 */
static const uint32_t L71_EAX = BIT(4) | BIT(5) | BIT(21) | BIT(23); /* AVX-VNNI AVX512-BF16
                                                                        AMX-FP16 AVX-IFMA */
static const uint32_t L71_EDX = BIT(4) | BIT(5) | BIT(8) | BIT(10) | BIT(19);
/* AVX-VNNI-INT8 AVX-NE-CONVERT AMX-COMPLEX AVX-VNNI-INT16 AVX10 */

static volatile unsigned long answered;
static struct sigaction previous;

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    /* A cpuid fault is a #GP: SI_KERNEL. Only then is RIP's instruction worth reading. */
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, a, b, c, d);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        if (leaf == 7 && sub == 0) {
            b &= ~L7_EBX;
            c &= ~L7_ECX;
            d &= ~L7_EDX;
        } else if (leaf == 7 && sub == 1) {
            a &= ~L71_EAX;
            d &= ~L71_EDX;
        } else if (leaf == 0x24 || leaf == 0x1d || leaf == 0x1e) {
            a = b = c = d = 0; /* AVX10 and AMX tile leaves: absent */
        }
        r[REG_RAX] = a;
        r[REG_RBX] = b;
        r[REG_RCX] = c;
        r[REG_RDX] = d;
        r[REG_RIP] += 2;
        answered++;
        return;
    }
    /* Not ours: whatever was there before, else the default (the fault repeats and kills). */
    if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
        previous.sa_sigaction(sig, info, context);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);
    }
}

static void report(void) {
    fprintf(stderr, "cpuid_mask: %lu cpuid instructions answered in pid %d\n", answered,
            (int)getpid());
}

__attribute__((constructor)) static void start(void) {
    const char *mask = getenv("CLIPSEARCH_CPUID_MASK");
    if (!mask || strcmp(mask, "avx2") != 0) {
        fprintf(stderr, "cpuid_mask: CLIPSEARCH_CPUID_MASK must be avx2, got %s\n",
                mask ? mask : "nothing");
        _exit(97);
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        perror("cpuid_mask: arch_prctl(ARCH_SET_CPUID) (no cpuid_fault on this CPU?)");
        _exit(98);
    }
    const char *count = getenv("CLIPSEARCH_CPUID_MASK_COUNT");
    if (count && *count == '1') atexit(report);
}
