/* What zstd's decoder needs of a C library, for wasm32 with no libc (build.sh): memory
   functions, and a bump allocator. free() keeps the memory: the client makes one
   decompression context, one dictionary object per dictionary, and its two buffers, which
   live as long as the page (src/zstd.js grows a buffer by allocating a larger one). */
#include <stddef.h>

extern unsigned char __heap_base;
static size_t top = 0;

void *memcpy(void *d, const void *s, size_t n) {
  unsigned char *a = d;
  const unsigned char *b = s;
  while (n--) *a++ = *b++;
  return d;
}

void *memmove(void *d, const void *s, size_t n) {
  unsigned char *a = d;
  const unsigned char *b = s;
  if (a < b) {
    while (n--) *a++ = *b++;
  } else {
    a += n;
    b += n;
    while (n--) *--a = *--b;
  }
  return d;
}

void *memset(void *d, int c, size_t n) {
  unsigned char *a = d;
  while (n--) *a++ = (unsigned char)c;
  return d;
}

int memcmp(const void *x, const void *y, size_t n) {
  const unsigned char *a = x, *b = y;
  for (; n; n--, a++, b++)
    if (*a != *b) return *a - *b;
  return 0;
}

size_t strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

void *malloc(size_t n) {
  if (!top) top = (size_t)&__heap_base;
  top = (top + 15) & ~(size_t)15;
  size_t end = top + n, have = __builtin_wasm_memory_size(0) * 65536;
  if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535) / 65536) == (size_t)-1)
    return 0;
  void *p = (void *)top;
  top = end;
  return p;
}

void *calloc(size_t k, size_t n) {
  void *p = malloc(k * n);
  if (p) memset(p, 0, k * n);
  return p;
}

void free(void *p) { (void)p; }

long clock(void) { return 0; } /* the dictionary builder's timer: compiled, never run */
