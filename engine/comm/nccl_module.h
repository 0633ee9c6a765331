/* C ABI of the NCCL module (libshoal_nccl.so), the only part of Shoal that links CUDA and NCCL.
 * The engine loads it at run time with dlopen (engine/comm/nccl_communicator.cpp), so the shoal
 * binary itself starts on machines without CUDA. Every function returns 0 on success; on failure
 * it returns non-zero and writes a complete message (CUDA/NCCL error text) into err[0..err_len).
 * Nothing here aborts. */
#ifndef SHOAL_ENGINE_COMM_NCCL_MODULE_H
#define SHOAL_ENGINE_COMM_NCCL_MODULE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHOAL_NCCL_ABI_VERSION 1
#define SHOAL_NCCL_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

typedef struct shoal_nccl_comm shoal_nccl_comm;

/* The module is built with hidden visibility; only these functions are exported. */
#define SHOAL_NCCL_API __attribute__((visibility("default")))

/* SHOAL_NCCL_ABI_VERSION of the module; the loader refuses another. */
SHOAL_NCCL_API int shoal_nccl_abi_version(void);
/* How many CUDA devices answer (fails with the CUDA error, e.g. no driver or no device). */
SHOAL_NCCL_API int shoal_nccl_device_count(int* count, char* err, size_t err_len);
/* A fresh NCCL unique id (rank 0 makes it; every rank passes the same bytes to init). */
SHOAL_NCCL_API int shoal_nccl_get_unique_id(unsigned char id[SHOAL_NCCL_ID_BYTES], char* err, size_t err_len);
/* Joins the communicator on CUDA device `device`; blocks until all `world` ranks have joined. */
SHOAL_NCCL_API int shoal_nccl_init(const unsigned char id[SHOAL_NCCL_ID_BYTES], int rank, int world, int device,
                    shoal_nccl_comm** out, char* err, size_t err_len);
/* In-place element-wise sum of host floats across the ranks (copied through a device buffer). */
SHOAL_NCCL_API int shoal_nccl_all_reduce_sum_host(shoal_nccl_comm* comm, float* data, size_t n, char* err, size_t err_len);
/* Frees the communicator, its stream and buffer; null is fine. */
SHOAL_NCCL_API void shoal_nccl_destroy(shoal_nccl_comm* comm);

#ifdef __cplusplus
}
#endif

#endif
