/* Freestanding stand-ins for the C library headers zstd.c includes (build.sh). */
#define fprintf(...) ((void)0)
#define stderr 0
#define fflush(x) ((void)0)
