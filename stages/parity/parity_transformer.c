/* parity_transformer.c: qie-parity transformer. Until the transformer model lands this entry point reports that it is
 * not available in this build. */
#include "err.h"
#include "parity.h"

int parity_transformer(char *err, const ParityArgs *a) {
    (void)a;
    qie_seterr(err, "qie-parity transformer: the transformer model is not in this build yet");
    return QIE_EUNSUPPORTED;
}
