/* Freestanding stand-ins for the C library headers zstd.c includes (build.sh). */
#define assert(x) ((void)0)
