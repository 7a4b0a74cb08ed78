#!/bin/sh
# The libvirt driver is a module loaded on first use (src/hv/libvirt.h):
#  - ballastd does not link libvirt (so a daemon without libvirt VMs never maps it);
#  - the module loads and works, driven by libvirt-probe against libvirt's in-process test driver
#    (test:///default, which needs no libvirtd);
#  - a missing module is a clear error naming where it was looked for.
# Usage: libvirt-module.sh BALLASTD PROBE
set -u
ballastd=$1 probe=$2
fail=0
if ldd "$ballastd" | grep -q 'libvirt'; then
    echo "FAIL: ballastd links libvirt:"; ldd "$ballastd" | grep libvirt; fail=1
else
    echo "ok: ballastd does not link libvirt ($(ldd "$ballastd" | wc -l) shared objects)"
fi
out=$("$probe" --uri test:///default --domain test -c "actual; caps" 2>&1)
echo "$out"
if echo "$out" | grep -q '"cmd":"actual","error":0,.*"actual":2147483648' &&
   echo "$out" | grep -q '"version":"TEST '; then
    echo "ok: the module answers through libvirt's test driver"
else
    echo "FAIL: the libvirt module did not answer as libvirt's test driver does"; fail=1
fi
# Outside the build tree, with no installed module and an empty module dir: a clear error.
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
cp "$probe" "$tmp/probe"
err=$(BALLAST_MODULE_DIR="$tmp" "$tmp/probe" --uri test:///default --domain test -c actual 2>&1)
echo "$err"
case $err in
*"ballast-libvirt.so is not installed (looked in $tmp, "*) echo "ok: a missing module is named" ;;
*"cannot load"*|*"is not the libvirt driver"*) echo "ok (an installed module of another build was refused)" ;;
*) echo "FAIL: no clear error for a missing module"; fail=1 ;;
esac
exit $fail
