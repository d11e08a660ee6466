/*
 * Anonymous memory for IOMMU_IOAS_MAP in the kernel lab: the kernel needs a user virtual
 * address, which JS cannot name for its own buffers.
 *
 * Invariants:
 * - munmap only unmaps a region this file mapped, with its exact address and length: JS can
 *   never unmap memory it does not own (V8's heap, libuv's, ...). The registry is per process
 *   and touched only from the JS thread that called.
 */
#include "exports.h"
#include "values.h"

#include <stdlib.h>
#include <sys/mman.h>

struct region {
  struct region *next;
  uintptr_t address;
  size_t length;
};

static struct region *regions = NULL;

#define MAX_SAFE 9007199254740991.0

napi_value js_mmap_anon(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  double length;
  if (!get_args(env, info, 1, argv) || !arg_integer(env, argv[0], "length", 1, MAX_SAFE, &length)) return NULL;
  struct region *region = malloc(sizeof *region);
  if (region == NULL) return make_number(env, -ENOMEM);
  void *p = mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    free(region);
    return make_number(env, -e);
  }
  napi_value result, address;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)p, &address) != napi_ok ||
      napi_set_named_property(env, result, "address", address) != napi_ok) {
    munmap(p, (size_t)length);
    free(region);
    return napi_failure(env, "mmapAnon result");
  }
  region->address = (uintptr_t)p;
  region->length = (size_t)length;
  region->next = regions;
  regions = region;
  return result;
}

napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t address;
  double length;
  if (!get_args(env, info, 2, argv) || !arg_bigint_u64(env, argv[0], "address", &address) ||
      !arg_integer(env, argv[1], "length", 1, MAX_SAFE, &length))
    return NULL;
  for (struct region **link = &regions; *link != NULL; link = &(*link)->next) {
    struct region *region = *link;
    if (region->address != (uintptr_t)address || region->length != (size_t)length) continue;
    int r = munmap((void *)region->address, region->length);
    long result = SYS_RESULT(r);
    if (r == 0) {
      *link = region->next;
      free(region);
    }
    return make_number(env, (double)result);
  }
  return make_number(env, -EINVAL); /* not a region mmapAnon handed out */
}
