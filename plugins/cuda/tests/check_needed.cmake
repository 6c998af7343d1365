# cmake -DLIBRARY=<file.so> -DFORBIDDEN=<regex> -P check_needed.cmake
# Fails when the library's dynamic section has a NEEDED entry matching FORBIDDEN (readelf -d):
# how CTest proves that the CUDA runtime (and libnvinfer) are not run-time dependencies.
find_program(READELF readelf REQUIRED)
execute_process(COMMAND "${READELF}" -d "${LIBRARY}" OUTPUT_VARIABLE _dynamic RESULT_VARIABLE _result)
if(NOT _result EQUAL 0)
  message(FATAL_ERROR "readelf -d ${LIBRARY} failed")
endif()
string(REGEX MATCHALL "\\(NEEDED\\)[^\n]*" _needed "${_dynamic}")
foreach(_entry IN LISTS _needed)
  if(_entry MATCHES "${FORBIDDEN}")
    message(FATAL_ERROR "${LIBRARY} needs ${_entry}: it must not depend on ${FORBIDDEN} at run time")
  endif()
endforeach()
message(STATUS "${LIBRARY}: no NEEDED entry matches ${FORBIDDEN}")
