#!/usr/bin/env bash
# The consumers suite: another project builds and runs consumer.cpp with uvexec
# each of the three ways docs/build.md shows:
#   a) installed, found with pkg-config, built with a plain compiler command line
#   b) installed, found with CMake's find_package(uvexec CONFIG)
#   c) uvexec as a meson subproject, found with dependency('uvexec')
#   d) a static libuvexec.a (a build of its own, library only), installed and
#      found both with pkg-config --static and with CMake's find_package
# a) and b) use this build directory installed under a temporary DESTDIR: the
# .pc and the CMake config find everything relative to where they are.
# Fails if any route fails, and says which.
#
# usage: check_consumers.sh BUILD_DIR SOURCE_DIR PREFIX LIBDIR
#        (CXX: the compiler, as meson's; the test in test/meson.build passes them)
set -uo pipefail

build_dir=$1 source_dir=$2 prefix=$3 libdir=$4
here=$(cd "$(dirname "$0")" && pwd)
export CXX=${CXX:-c++}
warnings=(-Wall -Wextra -Wpedantic -Werror)
work=$(mktemp -d "${TMPDIR:-/tmp}/uvexec-consumers.XXXXXX")
trap 'rm -rf "$work"' EXIT

root=$work/destdir$prefix
case $libdir in
  /*) lib=$work/destdir$libdir ;;
  *) lib=$root/$libdir ;;
esac

expected='thread pool: 7 squared is 49
process pool: ran in the worker process'

indent() { sed 's/^/    /'; }

# step ROUTE WHAT COMMAND...: runs COMMAND with its output in ROUTE's log;
# on failure prints the log and fails.
step() {
  local route=$1 what=$2
  shift 2
  echo "+ $*" >>"$work/$route.log"
  if ! "$@" >>"$work/$route.log" 2>&1; then
    echo "route $route: $what failed:"
    indent <"$work/$route.log"
    return 1
  fi
}

# run_consumer ROUTE PROGRAM: runs what ROUTE built and checks its output.
run_consumer() {
  local route=$1 program=$2 output
  if ! output=$(timeout 60 "$program" 2>&1); then
    echo "route $route: $program failed:"
    indent <<<"$output"
    return 1
  fi
  if [[ $output != "$expected" ]]; then
    echo "route $route: $program printed"
    indent <<<"$output"
    echo "  instead of"
    indent <<<"$expected"
    return 1
  fi
}

# Copies one consumer project (and consumer.cpp) out of the source tree, as a
# user's project would be.
project_copy() {
  mkdir -p "$work/$1"
  cp "$here/$1"/* "$here/consumer.cpp" "$work/$1/"
}

route_a() {  # pkg-config + a plain compiler command line
  local pcdir=$lib/pkgconfig
  # shellcheck disable=SC2016  # the literal ${pcfiledir}
  if ! grep -q '^prefix=${pcfiledir}' "$pcdir/uvexec.pc"; then
    echo "route a: $pcdir/uvexec.pc is not relocatable (reconfigure with -Dpkgconfig.relocatable=true)"
    return 1
  fi
  # On a machine without fmt's development files: only uvexec.pc and libuv.pc.
  local libuv_pcdir
  libuv_pcdir=$(pkg-config --variable=pcfiledir libuv) || { echo "route a: pkg-config finds no libuv.pc"; return 1; }
  mkdir -p "$work/no-fmt"
  ln -s "$libuv_pcdir/libuv.pc" "$work/no-fmt/libuv.pc"
  step a "pkg-config --cflags --libs uvexec without fmt.pc" \
    env PKG_CONFIG_LIBDIR="$pcdir:$work/no-fmt" pkg-config --cflags --libs uvexec || return 1
  local static_libs
  static_libs=$(PKG_CONFIG_LIBDIR="$pcdir:$work/no-fmt" pkg-config --static --libs uvexec)
  if [[ " $static_libs " != *" -lfmt "* ]]; then
    echo "route a: pkg-config --static --libs uvexec lacks -lfmt: $static_libs"
    return 1
  fi
  # The commands docs/build.md shows.
  export PKG_CONFIG_PATH=$pcdir
  # shellcheck disable=SC2046,SC2086  # pkg-config's output and $CXX (as meson's: maybe "ccache c++") are split
  step a "the build" $CXX -std=c++20 "${warnings[@]}" "$here/consumer.cpp" -o "$work/consumer-a" \
    $(pkg-config --cflags --libs uvexec) -Wl,-rpath,"$(pkg-config --variable=libdir uvexec)" || return 1
  run_consumer a "$work/consumer-a"
}

route_b() {  # CMake find_package(uvexec CONFIG)
  project_copy cmake
  step b "cmake configure" cmake -S "$work/cmake" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$root" \
    -DCMAKE_CXX_FLAGS="${warnings[*]}" || return 1
  step b "cmake build" cmake --build "$work/cmake-build" || return 1
  run_consumer b "$work/cmake-build/consumer"
}

route_c() {  # a meson project with uvexec in subprojects/
  project_copy meson
  mkdir -p "$work/meson/subprojects"
  ln -s "$source_dir" "$work/meson/subprojects/uvexec"
  step c "meson setup" meson setup "$work/meson-build" "$work/meson" -Dwerror=true \
    --wrap-mode=nodownload --force-fallback-for=uvexec || return 1
  step c "meson compile" meson compile -C "$work/meson-build" || return 1
  run_consumer c "$work/meson-build/consumer"
}

route_d() {  # a static library: pkg-config --static and CMake find_package
  local sroot=$work/static-destdir$prefix slib
  case $libdir in
    /*) slib=$work/static-destdir$libdir ;;
    *) slib=$sroot/$libdir ;;
  esac
  step d "meson setup (default_library=static)" meson setup "$work/static-build" "$source_dir" \
    -Ddefault_library=static -Dtests=disabled -Dexamples=disabled -Dbenchmarks=disabled \
    -Dpkgconfig.relocatable=true --buildtype=plain --prefix "$prefix" --libdir "$libdir" || return 1
  step d "meson compile" meson compile -C "$work/static-build" || return 1
  step d "meson install" meson install -C "$work/static-build" --destdir "$work/static-destdir" || return 1
  if [[ ! -f $slib/libuvexec.a ]] || compgen -G "$slib/libuvexec.so*" >/dev/null; then
    echo "route d: expected libuvexec.a alone in $slib:"
    ls "$slib" | indent
    return 1
  fi
  step d "the build (pkg-config --static)" env PKG_CONFIG_PATH="$slib/pkgconfig" sh -c \
    "$CXX -std=c++20 ${warnings[*]} '$here/consumer.cpp' -o '$work/consumer-d' \$(pkg-config --static --cflags --libs uvexec)" \
    || return 1
  if readelf -d "$work/consumer-d" | grep -q 'NEEDED.*libuvexec'; then
    echo "route d: consumer-d links libuvexec dynamically"
    return 1
  fi
  run_consumer d "$work/consumer-d" || return 1
  mkdir -p "$work/cmake-static"
  cp "$here/cmake"/* "$here/consumer.cpp" "$work/cmake-static/"
  step d "cmake configure (static)" cmake -S "$work/cmake-static" -B "$work/cmake-static-build" \
    -DCMAKE_PREFIX_PATH="$sroot" -DCMAKE_CXX_FLAGS="${warnings[*]}" || return 1
  step d "cmake build (static)" cmake --build "$work/cmake-static-build" || return 1
  run_consumer d "$work/cmake-static-build/consumer"
}

# Each route runs in a subshell: what one exports does not reach the next.
failed=()
if step install "meson install" meson install -C "$build_dir" --no-rebuild --destdir "$work/destdir"; then
  (route_a) || failed+=("a (pkg-config)")
  (route_b) || failed+=("b (CMake find_package)")
else
  failed+=("a (pkg-config)" "b (CMake find_package)")
fi
(route_c) || failed+=("c (meson subproject)")
(route_d) || failed+=("d (static library)")

if ((${#failed[@]})); then
  printf 'consumers: FAILED route %s\n' "${failed[@]}"
  exit 1
fi
echo "consumers: routes a (pkg-config), b (CMake find_package), c (meson subproject), d (static library) built and ran"
