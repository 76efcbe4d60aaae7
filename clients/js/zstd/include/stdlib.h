/* Freestanding stand-ins for the C library headers zstd.c includes (build.sh). */
#include <stddef.h>
void *malloc(size_t); void *calloc(size_t, size_t); void free(void *);
#define qsort(...) ((void)0)
