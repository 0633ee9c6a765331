// The NCCL module: built as libshoal_nccl.so only when CMake finds the CUDA toolkit and NCCL, and
// loaded by engine/comm/nccl_communicator.cpp with dlopen. Host data goes through a persistent device
// buffer (grown as needed); device-resident tensors can later skip the copies.

#include "engine/comm/nccl_module.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstring>
#include <new>
#include <string>

static_assert(SHOAL_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "NCCL unique id size changed");

struct shoal_nccl_comm {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  float* buf = nullptr;
  size_t cap = 0;  // floats in buf
  int device = 0;
  int rank = 0;
};

namespace {

int fail(char* err, size_t err_len, const std::string& msg) {
  if (err && err_len > 0) std::snprintf(err, err_len, "%s", msg.c_str());
  return 1;
}

int cuda_fail(char* err, size_t err_len, const char* what, cudaError_t e) {
  return fail(err, err_len, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

int nccl_fail(char* err, size_t err_len, const char* what, ncclResult_t r, ncclComm_t comm = nullptr) {
  std::string msg = std::string(what) + ": " + ncclGetErrorString(r);
  if (comm) {
    const char* last = ncclGetLastError(comm);
    if (last && *last) msg += std::string(" (") + last + ")";
  }
  return fail(err, err_len, msg);
}

#define SHOAL_CUDA(what, call)                                  \
  do {                                                          \
    cudaError_t e_ = (call);                                    \
    if (e_ != cudaSuccess) return cuda_fail(err, err_len, what, e_); \
  } while (0)

}  // namespace

extern "C" {

int shoal_nccl_abi_version(void) { return SHOAL_NCCL_ABI_VERSION; }

int shoal_nccl_device_count(int* count, char* err, size_t err_len) {
  *count = 0;
  SHOAL_CUDA("cudaGetDeviceCount", cudaGetDeviceCount(count));
  if (*count <= 0) return fail(err, err_len, "no CUDA device answers");
  return 0;
}

int shoal_nccl_get_unique_id(unsigned char id[SHOAL_NCCL_ID_BYTES], char* err, size_t err_len) {
  ncclUniqueId uid;
  ncclResult_t r = ncclGetUniqueId(&uid);
  if (r != ncclSuccess) return nccl_fail(err, err_len, "ncclGetUniqueId", r);
  std::memcpy(id, uid.internal, SHOAL_NCCL_ID_BYTES);
  return 0;
}

int shoal_nccl_init(const unsigned char id[SHOAL_NCCL_ID_BYTES], int rank, int world, int device,
                    shoal_nccl_comm** out, char* err, size_t err_len) {
  *out = nullptr;
  if (world < 1 || rank < 0 || rank >= world) return fail(err, err_len, "NCCL init: rank out of range");
  SHOAL_CUDA("cudaSetDevice", cudaSetDevice(device));
  auto* c = new (std::nothrow) shoal_nccl_comm;
  if (!c) return fail(err, err_len, "NCCL init: out of memory");
  c->device = device;
  c->rank = rank;
  cudaError_t e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    delete c;
    return cuda_fail(err, err_len, "cudaStreamCreate", e);
  }
  ncclUniqueId uid;
  std::memcpy(uid.internal, id, SHOAL_NCCL_ID_BYTES);
  ncclResult_t r = ncclCommInitRank(&c->comm, world, uid, rank);
  if (r != ncclSuccess) {
    cudaStreamDestroy(c->stream);
    delete c;
    return nccl_fail(err, err_len, "ncclCommInitRank", r);
  }
  *out = c;
  return 0;
}

int shoal_nccl_all_reduce_sum_host(shoal_nccl_comm* c, float* data, size_t n, char* err, size_t err_len) {
  if (!c) return fail(err, err_len, "NCCL all-reduce on a null communicator");
  if (n == 0) return 0;
  SHOAL_CUDA("cudaSetDevice", cudaSetDevice(c->device));
  if (n > c->cap) {
    if (c->buf) {
      SHOAL_CUDA("cudaFree", cudaFree(c->buf));
      c->buf = nullptr;
      c->cap = 0;
    }
    SHOAL_CUDA("cudaMalloc", cudaMalloc(reinterpret_cast<void**>(&c->buf), n * sizeof(float)));
    c->cap = n;
  }
  const size_t bytes = n * sizeof(float);
  SHOAL_CUDA("cudaMemcpyAsync host->device", cudaMemcpyAsync(c->buf, data, bytes, cudaMemcpyHostToDevice, c->stream));
  ncclResult_t r = ncclAllReduce(c->buf, c->buf, n, ncclFloat, ncclSum, c->comm, c->stream);
  if (r != ncclSuccess) return nccl_fail(err, err_len, "ncclAllReduce", r, c->comm);
  SHOAL_CUDA("cudaMemcpyAsync device->host", cudaMemcpyAsync(data, c->buf, bytes, cudaMemcpyDeviceToHost, c->stream));
  SHOAL_CUDA("cudaStreamSynchronize", cudaStreamSynchronize(c->stream));
  ncclResult_t async_err = ncclSuccess;
  r = ncclCommGetAsyncError(c->comm, &async_err);
  if (r != ncclSuccess) return nccl_fail(err, err_len, "ncclCommGetAsyncError", r, c->comm);
  if (async_err != ncclSuccess) return nccl_fail(err, err_len, "NCCL all-reduce", async_err, c->comm);
  return 0;
}

void shoal_nccl_destroy(shoal_nccl_comm* c) {
  if (!c) return;
  cudaSetDevice(c->device);
  if (c->comm) ncclCommDestroy(c->comm);
  if (c->buf) cudaFree(c->buf);
  if (c->stream) cudaStreamDestroy(c->stream);
  delete c;
}

}  // extern "C"
