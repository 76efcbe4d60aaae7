/* Freestanding stand-ins for the C library headers zstd.c includes (build.sh). */
typedef long clock_t;
#define CLOCKS_PER_SEC 1000000
clock_t clock(void);
