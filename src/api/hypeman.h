/* SPDX-License-Identifier: MIT */
#pragma once

/* The edges of hypeman's API that ballastd answers on POST /resources/memory/reclaim (api.c,
 * docs/api.md, POST /resources/memory/reclaim): its duration syntax and its names for hypervisors. Pure. */

#include <stdbool.h>
#include <stdint.h>

#include "shared/time-util.h"

/* A Go duration (time.ParseDuration): an optional sign, then one or more decimal numbers, each
 * with an optional fraction and a unit (ns, us, µs, μs, ms, s, m, h), e.g. "1m30s", "1.5h",
 * "-2s"; "0" alone needs no unit. Returns 0 with *ret_usec (rounded up to whole microseconds,
 * so that any positive duration stays positive) and *ret_negative; -EINVAL when s is not one;
 * -ERANGE when it is beyond ±2^63 ns, as Go refuses it. */
int hypeman_parse_duration(const char *s, usec_t *ret_usec, bool *ret_negative);

/* hypeman's name for the hypervisor behind a ballast driver: "qemu" for qemu and libvirt (whose
 * VMs are QEMU's), "firecracker", "cloud-hypervisor"; NULL for anything else. Static strings. */
const char *hypeman_hypervisor(const char *driver);
