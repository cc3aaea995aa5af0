# hotrestart_warnings(TARGET): the project's warning set, applied per target so that
# third-party headers and consumers of the SDK are not forced onto it.
# (-Wnull-dereference is left out: with g++ 12 it fires inside libstdc++'s own headers.)
function(hotrestart_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wcast-align -Wunused -Wformat=2 -Wimplicit-fallthrough
    $<$<COMPILE_LANGUAGE:CXX>:-Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual>)
  if(HOTRESTART_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
