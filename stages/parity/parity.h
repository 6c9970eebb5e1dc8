/* parity.h: the entry points of qie-parity, one per model. Each reads a safetensors file of
 * inputs, runs the model (and, where asked, its backward) on --device, and writes a safetensors
 * file of outputs and gradients, all f32. Golden tests and outside checks use this interface:
 * keep it stable (the issues define each one's tensor names). */
#ifndef QIE_STAGES_PARITY_H
#define QIE_STAGES_PARITY_H

typedef struct {
    const char *model_dir; /* diffusers-layout model folder (or the component folder itself) */
    const char *in_path;   /* inputs .safetensors */
    const char *out_path;  /* outputs .safetensors */
    const char *device;    /* "cpu" | "cuda" | "cuda:N" */
} ParityArgs;

/* Each returns 0 or a QIE_E* / errno code with err filled. */
int parity_vae(char *err, const ParityArgs *a);         /* parity_vae.c */
int parity_transformer(char *err, const ParityArgs *a); /* parity_transformer.c */
int parity_text(char *err, const ParityArgs *a);        /* parity_text.c */

#endif
