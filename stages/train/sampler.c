/* sampler.c: the data order (trainer_behaviour.md §3.6; decisions.md "data order"): per epoch a
 * torch-identical randperm from mt19937(seed + epoch), bucketed batches, round-robin sharding,
 * tail drop. Pure functions of (items, seed, epoch, rank, world): a checkpoint stores only
 * (epoch, batches consumed) and rebuilds the rest. */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "train.h"

void mt_seed(Mt19937 *g, uint32_t seed) {
    g->mt[0] = seed;
    for (int j = 1; j < 624; j++) g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + (uint32_t)j;
    g->i = 624;
}

uint32_t mt_next(Mt19937 *g) {
    if (g->i >= 624) {
        for (int k = 0; k < 624; k++) {
            uint32_t y = (g->mt[k] & 0x80000000u) | (g->mt[(k + 1) % 624] & 0x7fffffffu);
            g->mt[k] = g->mt[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        g->i = 0;
    }
    uint32_t y = g->mt[g->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

void smp_randperm(uint32_t *perm, uint32_t n, uint64_t seed) {
    Mt19937 g;
    mt_seed(&g, (uint32_t)seed); /* at::mt19937 keeps the low 32 bits of the seed */
    for (uint32_t i = 0; i < n; i++) perm[i] = i;
    for (uint32_t i = 0; i + 1 < n; i++) {
        uint32_t z = mt_next(&g) % (n - i);
        uint32_t t = perm[i];
        perm[i] = perm[i + z];
        perm[i + z] = t;
    }
}

void smp_epoch_free(SmpEpoch *ep) {
    if (!ep) return;
    free(ep->off);
    free(ep->idx);
    memset(ep, 0, sizeof *ep);
}

int smp_epoch_build(char *err, SmpEpoch *ep, const SmpItem *items, uint32_t n, int batch, uint64_t seed,
                    int64_t epoch, int rank, int world) {
    smp_epoch_free(ep);
    ep->epoch = epoch;
    if (batch < 1 || world < 1 || rank < 0 || rank >= world) {
        qie_seterr(err, "sampler: bad batch %d / rank %d of %d", batch, rank, world);
        return QIE_EINVAL;
    }
    uint32_t nkeys = 0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].key + 1 > nkeys) nkeys = items[i].key + 1;
    uint32_t *perm = malloc(sizeof *perm * (n ? n : 1));
    uint32_t *fill = calloc(nkeys ? nkeys : 1, sizeof *fill);          /* items waiting per key */
    uint32_t *wait = malloc(sizeof *wait * ((size_t)(nkeys ? nkeys : 1) * batch));
    uint32_t *all = malloc(sizeof *all * (n ? n : 1));                  /* emitted batches, in order */
    ep->off = malloc(sizeof *ep->off * (n / batch / world + 2));
    ep->idx = malloc(sizeof *ep->idx * (n ? n : 1));
    if (!perm || !fill || !wait || !all || !ep->off || !ep->idx) {
        free(perm); free(fill); free(wait); free(all);
        smp_epoch_free(ep);
        qie_seterr(err, "sampler: out of memory for %u items", n);
        return QIE_ENOMEM;
    }
    smp_randperm(perm, n, seed + (uint64_t)epoch);
    size_t nb_all = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = items[perm[i]].key;
        wait[(size_t)k * batch + fill[k]++] = perm[i];
        if (fill[k] == (uint32_t)batch) {
            memcpy(all + nb_all * batch, wait + (size_t)k * batch, sizeof *all * batch);
            nb_all++;
            fill[k] = 0;
        }
    }
    /* round-robin deal; a trailing incomplete round is dropped (accelerate drop_last) */
    size_t rounds = nb_all / (size_t)world;
    ep->nbatches = rounds;
    ep->off[0] = 0;
    for (size_t j = 0; j < rounds; j++) {
        memcpy(ep->idx + j * batch, all + (j * world + rank) * batch, sizeof *all * batch);
        ep->off[j + 1] = (j + 1) * (size_t)batch;
    }
    free(perm); free(fill); free(wait); free(all);
    return 0;
}
