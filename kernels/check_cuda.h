// check_cuda.h: fatal checks for CUDA, cuBLAS and NCCL calls (llm.c's cudaCheck): after such a
// failure the device state is unknown, so the process reports file:line and the library's
// string and exits. Included only by .cu files and CUDA-only C files.
#ifndef QIE_KERNELS_CHECK_CUDA_H
#define QIE_KERNELS_CHECK_CUDA_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CUDA_CHECK(call)                                                                       \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "[CUDA ERROR] %s:%d: %s: %s\n", __FILE__, __LINE__, #call,          \
                    cudaGetErrorString(e_));                                                   \
            exit(EXIT_FAILURE);                                                                \
        }                                                                                      \
    } while (0)

#if defined(CUBLAS_VERSION) || defined(CUBLAS_VER_MAJOR)
#define CUBLAS_CHECK(call)                                                                     \
    do {                                                                                       \
        cublasStatus_t s_ = (call);                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                     \
            fprintf(stderr, "[cuBLAS ERROR] %s:%d: %s: %s\n", __FILE__, __LINE__, #call,        \
                    cublasGetStatusString(s_));                                                \
            exit(EXIT_FAILURE);                                                                \
        }                                                                                      \
    } while (0)
#endif

#endif
