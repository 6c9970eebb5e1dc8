/* parity_vae.c: qie-parity vae. Until the vae model lands this entry point reports that it is
 * not available in this build. */
#include "err.h"
#include "parity.h"

int parity_vae(char *err, const ParityArgs *a) {
    (void)a;
    qie_seterr(err, "qie-parity vae: the vae model is not in this build yet");
    return QIE_EUNSUPPORTED;
}
