# Flags shared by every slideformer target.
function(slideformer_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
endfunction()

# Vector ISA of the CPU kernels (at::vec). "auto" picks the best that the build machine has, as
# ./run builds where it runs; set avx2 (or default) to build a library for other machines.
set(SLIDEFORMER_CPU_ISA "auto" CACHE STRING "ISA of the CPU kernels: auto, avx512, avx2, default")
set_property(CACHE SLIDEFORMER_CPU_ISA PROPERTY STRINGS auto avx512 avx2 default)

function(slideformer_resolve_cpu_isa out)
  set(isa ${SLIDEFORMER_CPU_ISA})
  if(isa STREQUAL "auto")
    set(isa default)
    if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" AND EXISTS /proc/cpuinfo)
      file(READ /proc/cpuinfo cpuinfo)
      if(cpuinfo MATCHES "avx512f" AND cpuinfo MATCHES "avx512bw" AND cpuinfo MATCHES "avx512vl"
         AND cpuinfo MATCHES "avx512dq")
        set(isa avx512)
      elseif(cpuinfo MATCHES "avx2" AND cpuinfo MATCHES " fma")
        set(isa avx2)
      endif()
    endif()
  endif()
  set(${out} ${isa} PARENT_SCOPE)
endfunction()

# Compile the CPU kernel sources for that ISA, the way ATen builds its own per-ISA kernels: the
# CPU_CAPABILITY namespace keeps our at::vec instantiations apart from torch's.
function(slideformer_cpu_kernel_flags isa)
  if(isa STREQUAL "avx512")
    set_source_files_properties(${ARGN} PROPERTIES
      COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx2;-mfma;-mf16c;-Wno-maybe-uninitialized"
      COMPILE_DEFINITIONS "CPU_CAPABILITY=AVX512;CPU_CAPABILITY_AVX512")
  elseif(isa STREQUAL "avx2")
    set_source_files_properties(${ARGN} PROPERTIES
      COMPILE_OPTIONS "-mavx2;-mfma;-mf16c"
      COMPILE_DEFINITIONS "CPU_CAPABILITY=AVX2;CPU_CAPABILITY_AVX2")
  elseif(NOT isa STREQUAL "default")
    message(FATAL_ERROR "SLIDEFORMER_CPU_ISA must be auto, avx512, avx2 or default, got ${isa}")
  endif()
endfunction()
