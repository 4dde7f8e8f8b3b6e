#!/usr/bin/env bash
# Builds the uniffi library and its binding generator, generates the Kotlin
# bindings from the built library, and runs the JUnit tests (Maven, Kotlin,
# JNA from Maven Central) against it: the example VM, the vCenter
# simulator, qemu-img. Prints
# "N passed, N failed in Ts". Swift sources come from the same generator
# (`--language swift`); they are generated and checked for the API's entry
# point, not compiled: no Swift toolchain on this kind of machine.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
cargo build -p hypersdk-uniffi --features bindgen >&2
lib="$root/target/debug/libhypersdk_uniffi.so"
gen="$root/bindings/uniffi/kotlin/target/generated-sources/uniffi"
rm -rf "$gen"
"$root/target/debug/uniffi-bindgen" generate --library "$lib" --language kotlin --no-format --out-dir "$gen" >&2
# Swift: generated from the same library (not compiled: no Swift toolchain here).
swift="$root/bindings/uniffi/kotlin/target/generated-swift"
rm -rf "$swift"
"$root/target/debug/uniffi-bindgen" generate --library "$lib" --language swift --no-format --out-dir "$swift" >&2
grep -Eq "public func connectProvider\(kindOrUrl: String, settingsJson: String\) *throws +-> Provider" "$swift/hypersdk_uniffi.swift"
start=$(date +%s)
rm -rf kotlin/target/surefire-reports
set +e
(cd kotlin && mvn -B -q -Dstyle.color=never -Dhypersdk.lib.dir="$root/target/debug" test) >&2
status=$?
echo >&2 # Maven's quiet mode ends without a newline
set -e
# Surefire's reports: tests="N" failures="N" errors="N".
reports="kotlin/target/surefire-reports"
tests=$(cat "$reports"/TEST-*.xml 2>/dev/null | grep -o '<testsuite [^>]*' | sed -n 's/.* tests="\([0-9]*\)".*/\1/p' | awk '{s+=$1} END {print s+0}')
failed=$(cat "$reports"/TEST-*.xml 2>/dev/null | grep -o '<testsuite [^>]*' | sed -n 's/.* failures="\([0-9]*\)".* errors="\([0-9]*\)".*/\1 \2/p;s/.* errors="\([0-9]*\)".* failures="\([0-9]*\)".*/\1 \2/p' | awk '{s+=$1+$2} END {print s+0}')
[ "$status" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
echo "$((tests - failed)) passed, $failed failed in $(( $(date +%s) - start ))s"
exit "$status"
