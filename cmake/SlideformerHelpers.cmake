# Flags shared by every slideformer target.
function(slideformer_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)
endfunction()

# CPU kernel sources get at::vec compiled for AVX2 (mirrors how ATen builds its AVX2 kernels:
# the CPU_CAPABILITY namespace keeps these instantiations apart from torch's own).
function(slideformer_cpu_kernel_flags)
  if(SLIDEFORMER_CPU_AVX2 AND CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    set_source_files_properties(${ARGN} PROPERTIES
      COMPILE_OPTIONS "-mavx2;-mfma;-mf16c"
      COMPILE_DEFINITIONS "CPU_CAPABILITY=AVX2;CPU_CAPABILITY_AVX2")
  endif()
endfunction()
