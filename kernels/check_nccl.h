// check_nccl.h: the fatal check for NCCL calls (llm.c's ncclCheck), next to check_cuda.h's
// CUDA_CHECK: after a failed collective the communicator and the device state are unknown, so the
// process reports file:line, the call and NCCL's string (plus its last error text) and exits.
// Included only by QIE_CUDA files (common/coll_nccl.c).
#ifndef QIE_KERNELS_CHECK_NCCL_H
#define QIE_KERNELS_CHECK_NCCL_H

#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

#define NCCL_CHECK(call)                                                                        \
    do {                                                                                        \
        ncclResult_t r_ = (call);                                                               \
        if (r_ != ncclSuccess) {                                                                \
            fprintf(stderr, "[NCCL ERROR] %s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call,      \
                    ncclGetErrorString(r_), ncclGetLastError(NULL));                            \
            exit(EXIT_FAILURE);                                                                 \
        }                                                                                       \
    } while (0)

#endif
