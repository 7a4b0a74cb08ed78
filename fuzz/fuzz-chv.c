/* SPDX-License-Identifier: MIT */
/* Fuzzes the Cloud Hypervisor driver on what its API socket answers: the same harness as the
 * Firecracker one (the two drivers share the HTTP/1.1 client and the operation set). */
#define FUZZ_CHV 1
#include "fuzz-fc.c"
