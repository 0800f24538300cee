# Sourced by the launchers: preload tcmalloc where the machine has it.
#
# XLA:CPU allocates each step's scratch memory (gigabytes for a UNet step)
# afresh from a worker thread; glibc's malloc serves that with a new mmap
# that the kernel faults in page by page, every step. tcmalloc keeps the
# memory mapped: a CPU train step gets 10-20% faster
# (benchmarks/README.md). Debian/Ubuntu: apt install libtcmalloc-minimal4.
# DIFFUSION_JAX_TCMALLOC=0 turns this off; a set LD_PRELOAD is left alone.
preload_tcmalloc() {
  [ "${DIFFUSION_JAX_TCMALLOC:-1}" != 0 ] && [ -z "${LD_PRELOAD:-}" ] || return 0
  local lib
  for lib in /usr/lib/{x86_64,aarch64}-linux-gnu/libtcmalloc_minimal.so.4 \
             /usr/lib64/libtcmalloc_minimal.so.4 /usr/local/lib/libtcmalloc_minimal.so.4; do
    if [ -f "$lib" ]; then
      export LD_PRELOAD="$lib"
      echo "launch: preloading tcmalloc ($lib; DIFFUSION_JAX_TCMALLOC=0 turns this off)" >&2
      return 0
    fi
  done
}
